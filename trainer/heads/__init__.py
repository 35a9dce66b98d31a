"""Training the trained part: the head definition (`spec`), the compiled engine for k heads on
cached features, group training along the epochs axis, the Keras `fit` path, what both start from
and produce, checkpoints and epoch records. Imports run one way: `trainer.train` -> here."""
