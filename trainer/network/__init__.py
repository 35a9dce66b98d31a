"""VGG16 and its head as Keras models: building the network (`model`), the feature cache of the
frozen base (`features`), and the exported full model (`export`).
"""
