"""Classification metrics from probabilities: the numbers every epoch, trial and model reports.

ExpW is very imbalanced (neutral 38%, fear 1.2%), so macro-F1 and per-class recall stand beside
accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.labels import CLASS_NAMES


def cross_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean sparse categorical cross-entropy, clipped like Keras' so one zero cannot make it inf."""
    eps = 1e-7
    picked = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0 - eps)
    return float(-np.mean(np.log(picked)))


def epoch_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str = "val_") -> dict[str, float]:
    """Loss, accuracy and macro-F1 of one split, named the Keras way (`val_accuracy`, ...)."""
    predicted = probs.argmax(axis=1)
    return {
        f"{prefix}loss": cross_entropy(labels, probs),
        f"{prefix}accuracy": float(np.mean(predicted == labels)),
        f"{prefix}macro_f1": macro_f1(labels, predicted, probs.shape[1]),
    }


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Unweighted mean of the per-class F1 = 2tp / (2tp + fp + fn), 0 for a class neither in
    the labels nor predicted (scikit-learn's zero_division=0); numpy, because scikit-learn's
    checks cost ~20 ms a call, more than a head's epoch on small data."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    tp = np.bincount(labels[labels == predicted], minlength=classes)[:classes]
    true = np.bincount(labels, minlength=classes)[:classes]
    pred = np.bincount(predicted, minlength=classes)[:classes]
    denominator = (true + pred).astype(np.float64)
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros(classes), where=denominator > 0)
    return float(f1.mean())


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on one split.

    Attributes:
        accuracy: share of faces whose argmax is the label.
        macro_f1: unweighted mean of the per-class F1 scores.
        loss: mean cross-entropy.
        per_class: class name -> {precision, recall, f1, support}.
        confusion: rows = true class, columns = predicted class, in `class_names` order.
        class_names: label index -> expression.
    """

    accuracy: float
    macro_f1: float
    loss: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    class_names: tuple[str, ...] = CLASS_NAMES

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "class_names": list(self.class_names),
        }


def evaluation_from_probs(
    labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...] = CLASS_NAMES
) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (as
    scikit-learn computes them with zero_division=0; numpy, so that a trial's result does not
    import scikit-learn and SciPy, about a second)."""
    classes = len(class_names)
    predicted = probs.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, classes)
    tp = np.diag(confusion).astype(np.float64)
    support, guessed = confusion.sum(axis=1), confusion.sum(axis=0)
    precision = _ratio(tp, guessed)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    base = epoch_metrics(labels, probs, prefix="")
    return Evaluation(
        accuracy=base["accuracy"],
        macro_f1=base["macro_f1"],
        loss=base["loss"],
        per_class=per_class,
        confusion=confusion.tolist(),
        class_names=tuple(class_names),
    )


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    return np.bincount(labels * classes + predicted, minlength=classes * classes)[
        : classes * classes].reshape(classes, classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(len(den)), where=den > 0)
