"""A train / val / test split stratified by class and grouped by source image.

ExpW has several faces per photo, often the same person or scene; letting one photo's faces fall
into two splits leaks test information into training. So whole photos (groups) are assigned to
splits, while each split still gets about its share of every class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from trainer.data.dataset import SPLIT_NAMES
from trainer.errors import ConfigError


def grouped_stratified_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Splits faces into train / val / test so that no group spans two splits.

    Groups are shuffled with ``seed``, then placed largest first (big groups are the hardest to
    fit late), each into the split whose share of the group's classes is furthest below target:
    for split ``s`` the score is ``sum_k count_k * (fraction_s - placed_sk / total_k)``. Every
    class therefore fills each split in proportion to its fraction, rare classes included, and
    the result depends only on the (label, group) pairs and the seed, not on the input order.

    Args:
        labels: class index of each face (non-negative integers).
        groups: the group (source image name) of each face.
        fractions: target shares of (train, val, test); non-negative, summing to 1, train > 0.
            A zero fraction gives an empty split.
        seed: seeds the shuffle of the groups.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted int64 indices into ``labels``.

    Raises:
        ConfigError: ``fractions`` is not three shares summing to 1 with train > 0.
        ValueError: ``labels`` and ``groups`` differ in length or labels are not class indices.
    """
    shares = _check_fractions(fractions)
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.ndim != 1 or groups.shape != labels.shape:
        raise ValueError(
            f"labels and groups must be 1-D and of equal length, got shapes {labels.shape} "
            f"and {groups.shape}"
        )
    if labels.size == 0:
        return {name: np.zeros(0, dtype=np.int64) for name in SPLIT_NAMES}
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"labels must be non-negative integers, got dtype {labels.dtype}")

    _, group_of = np.unique(groups, return_inverse=True)
    counts = np.zeros((int(group_of.max()) + 1, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (group_of, labels), 1)
    split_of_group = _assign_groups(counts, shares, np.random.default_rng(seed))
    split_of_face = split_of_group[group_of]
    return {
        name: np.flatnonzero(split_of_face == s).astype(np.int64)
        for s, name in enumerate(SPLIT_NAMES)
    }


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = tuple(fractions)
    ok = (
        len(values) == len(SPLIT_NAMES)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        and all(math.isfinite(v) and v >= 0 for v in values)
        and math.isclose(sum(values), 1.0, abs_tol=1e-6)
        and values[0] > 0
    )
    if not ok:
        raise ConfigError(
            "split", "three fractions [train, val, test] >= 0 summing to 1, train > 0", fractions
        )
    return np.asarray(values, dtype=np.float64)


def _assign_groups(
    counts: np.ndarray, shares: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Greedy placement of groups (rows of per-class ``counts``) into splits; see the caller."""
    n_groups = counts.shape[0]
    sizes = counts.sum(axis=1)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    # 1 / class total, so every class counts in shares of itself, not in raw faces.
    inv_totals = 1.0 / np.maximum(counts.sum(axis=0), 1)
    open_splits = np.flatnonzero(shares > 0)
    placed_share = np.zeros((len(shares), counts.shape[1]))
    assignment = np.empty(n_groups, dtype=np.int64)
    for g in order:
        classes = np.flatnonzero(counts[g])
        c = counts[g, classes]
        deficit = shares[open_splits, None] - placed_share[np.ix_(open_splits, classes)]
        # argmax takes the first of equal scores: open splits are in train, val, test order.
        best = open_splits[int(np.argmax(deficit @ c))]
        assignment[g] = best
        placed_share[best, classes] += c * inv_totals[classes]
    return assignment
