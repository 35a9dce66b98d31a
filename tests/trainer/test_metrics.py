"""trainer.metrics computes what scikit-learn computes (it used to call it; numpy now keeps
scikit-learn and SciPy out of a trial's imports)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from trainer.metrics import evaluation_from_probs, macro_f1


@pytest.mark.parametrize("case", range(60))
def test_per_class_scores_and_confusion_equal_scikit_learns(case):
    rng = np.random.default_rng(case)
    classes = 7
    n = int(rng.integers(1, 80))
    labels = rng.integers(0, int(rng.integers(1, classes + 1)), n)  # some classes absent
    probs = rng.random((n, classes)) ** int(rng.integers(1, 6))  # some classes never guessed
    predicted = probs.argmax(axis=1)
    got = evaluation_from_probs(labels, probs)
    want = precision_recall_fscore_support(labels, predicted, labels=list(range(classes)),
                                           zero_division=0)
    for i, name in enumerate(got.class_names):
        row = got.per_class[name]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [want[0][i], want[1][i], want[2][i]], abs=1e-12)
        assert row["support"] == want[3][i]
    assert got.confusion == confusion_matrix(labels, predicted,
                                             labels=list(range(classes))).tolist()
    assert got.macro_f1 == pytest.approx(
        f1_score(labels, predicted, labels=list(range(classes)), average="macro",
                 zero_division=0), abs=1e-12)
    assert macro_f1(labels, predicted, classes) == got.macro_f1
