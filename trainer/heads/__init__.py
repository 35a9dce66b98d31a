"""Training heads on cached features: the head definition, the compiled engine for k heads, group
training along the epochs axis, the Keras `fit` path, checkpoints and epoch records.
"""
