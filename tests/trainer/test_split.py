"""The grouped, stratified train / val / test split."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.split import grouped_stratified_split
from trainer.errors import ConfigError

# ExpW-like imbalance: neutral and happy dominate, fear is rare.
CLASS_P = np.array([0.06, 0.04, 0.03, 0.30, 0.12, 0.10, 0.35])


def faces(n: int = 360, n_images: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` faces over ``n_images`` photos (1 to several faces each), ExpW-like classes."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASS_P), size=n, p=CLASS_P)
    groups = np.array([f"photo_{g}.jpg" for g in rng.integers(0, n_images, size=n)])
    return labels, groups


def test_no_group_in_two_splits_and_every_face_once() -> None:
    labels, groups = faces()
    split = grouped_stratified_split(labels, groups, seed=1)
    all_idx = np.concatenate(list(split.values()))
    assert sorted(all_idx.tolist()) == list(range(labels.size))
    photo_sets = {name: set(groups[idx]) for name, idx in split.items()}
    assert not photo_sets["train"] & photo_sets["val"]
    assert not photo_sets["train"] & photo_sets["test"]
    assert not photo_sets["val"] & photo_sets["test"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fractions_close_to_target_overall_and_per_class(seed: int) -> None:
    labels, groups = faces(seed=seed)
    split = grouped_stratified_split(labels, groups, (0.7, 0.1, 0.2), seed=seed)
    sizes = {name: idx.size / labels.size for name, idx in split.items()}
    assert sizes["train"] == pytest.approx(0.7, abs=0.04)
    assert sizes["val"] == pytest.approx(0.1, abs=0.03)
    assert sizes["test"] == pytest.approx(0.2, abs=0.03)
    totals = np.bincount(labels, minlength=7)
    for name, target in (("train", 0.7), ("test", 0.2)):
        share = np.bincount(labels[split[name]], minlength=7) / totals
        # Groups hold up to a few faces, so a class of ~20 faces lands within a few faces.
        assert np.all(np.abs(share - target) < 0.15), (name, share)


def test_every_class_reaches_every_split_when_possible() -> None:
    labels, groups = faces(n=400, n_images=300)
    split = grouped_stratified_split(labels, groups, seed=0)
    for idx in split.values():
        assert set(labels[idx].tolist()) == set(range(7))


def test_deterministic_for_a_seed_and_varies_with_it() -> None:
    labels, groups = faces()
    a = grouped_stratified_split(labels, groups, seed=5)
    b = grouped_stratified_split(labels, groups, seed=5)
    c = grouped_stratified_split(labels, groups, seed=6)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_does_not_depend_on_row_order() -> None:
    labels, groups = faces()
    perm = np.random.default_rng(9).permutation(labels.size)
    a = grouped_stratified_split(labels, groups, seed=3)
    b = grouped_stratified_split(labels[perm], groups[perm], seed=3)
    for name in a:
        assert set(groups[a[name]]) == set(groups[perm][b[name]])


def test_sorted_int64_indices() -> None:
    labels, groups = faces()
    for idx in grouped_stratified_split(labels, groups).values():
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)


@pytest.mark.parametrize("fractions", [(0.8, 0.0, 0.2), (0.9, 0.1, 0.0), (1.0, 0.0, 0.0)])
def test_zero_fraction_gives_an_empty_split(fractions: tuple[float, float, float]) -> None:
    labels, groups = faces()
    split = grouped_stratified_split(labels, groups, fractions, seed=0)
    for name, fraction in zip(("train", "val", "test"), fractions, strict=True):
        if fraction == 0:
            assert split[name].size == 0
        else:
            assert split[name].size / labels.size == pytest.approx(fraction, abs=0.04)


def test_integer_groups_and_empty_input() -> None:
    split = grouped_stratified_split([0, 1, 0, 1], [1, 1, 2, 2], (0.5, 0.0, 0.5))
    assert sorted(len(v) for v in split.values()) == [0, 2, 2]
    empty = grouped_stratified_split(np.zeros(0, dtype=int), np.zeros(0, dtype=str))
    assert all(v.size == 0 for v in empty.values())


@pytest.mark.parametrize(
    "fractions", [(0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (0.7, 0.3), (1.2, -0.1, -0.1)]
)
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    labels, groups = faces(n=20)
    with pytest.raises(ConfigError, match=r"^split: expected three fractions"):
        grouped_stratified_split(labels, groups, fractions)


def test_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        grouped_stratified_split([0, 1, 2], ["a", "b"])
    with pytest.raises(ValueError, match="non-negative integers"):
        grouped_stratified_split([0, -1], ["a", "b"])
