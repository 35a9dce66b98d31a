"""`evaluate(model, split)`: a full model's scores on one split of raw faces."""

from __future__ import annotations

import keras

from trainer.data.dataset import Split
from trainer.metrics import Evaluation, evaluation_from_probs
from trainer.network.model import class_names_of, predict_proba


def evaluate(model: keras.Model, split: Split, batch_size: int = 64) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of `model`
    (raw RGB pixels in) on `split`."""
    probs = predict_proba(model, split.images, batch_size=batch_size)
    return evaluation_from_probs(split.labels, probs, class_names_of(model))
