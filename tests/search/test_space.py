"""Search-space parameters translate to grids and to suggest calls (and their distributions)."""

from __future__ import annotations

import itertools

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.spec.params import (
    Categorical,
    FloatRange,
    IntRange,
    grid_of,
    grid_size,
    suggest,
    suggest_all,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

GRID = (
    Categorical("learning_rate", (1e-4, 1e-3, 1e-2)),
    Categorical("batch_size", (32, 64)),
    Categorical("augment", (True, False)),
)
RANGES = (
    FloatRange("learning_rate", 1e-5, 1e-2, log=True),
    FloatRange("dropout", 0.0, 0.6, step=0.2),
    IntRange("epochs", 5, 20),
    IntRange("head_width", 64, 1024, log=True),
    IntRange("batch_size", 16, 128, step=16),
    Categorical("pooling", ("avg", "flatten")),
)


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        (Categorical("batch_size", (16, 32)), CategoricalDistribution([16, 32])),
        (
            FloatRange("learning_rate", 1e-5, 1e-2, log=True),
            FloatDistribution(1e-5, 1e-2, log=True),
        ),
        (FloatRange("dropout", 0.0, 0.6, step=0.1), FloatDistribution(0.0, 0.6, step=0.1)),
        (IntRange("epochs", 5, 20, step=5), IntDistribution(5, 20, step=5)),
        (IntRange("head_width", 64, 1024, log=True), IntDistribution(64, 1024, log=True)),
    ],
)
def test_suggest_samples_from_the_matching_distribution(param, expected) -> None:
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    suggest(trial, param)
    assert trial.distributions == {param.name: expected}


def test_grid_of_keeps_order_and_types() -> None:
    grid = grid_of(GRID)
    assert grid == {
        "learning_rate": [1e-4, 1e-3, 1e-2],
        "batch_size": [32, 64],
        "augment": [True, False],
    }
    assert list(grid) == ["learning_rate", "batch_size", "augment"]
    assert all(type(value) is int for value in grid["batch_size"])
    assert grid_size(GRID) == 12


def test_grid_of_a_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="epochs"):
        grid_of((*GRID, IntRange("epochs", 1, 3)))
    with pytest.raises(ValueError, match="dropout"):
        grid_size((FloatRange("dropout", 0.0, 0.5),))


def test_suggest_with_a_real_trial() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        values = {param.name: suggest(trial, param) for param in RANGES}
        assert 1e-5 <= values["learning_rate"] <= 1e-2
        assert any(values["dropout"] == pytest.approx(v) for v in (0.0, 0.2, 0.4, 0.6))
        assert type(values["epochs"]) is int and 5 <= values["epochs"] <= 20
        assert type(values["head_width"]) is int and 64 <= values["head_width"] <= 1024
        assert values["batch_size"] % 16 == 0 and 16 <= values["batch_size"] <= 128
        assert values["pooling"] in ("avg", "flatten")
        assert list(trial.distributions) == [param.name for param in RANGES]
        study.tell(trial, 0.0)


def test_suggest_all_covers_the_grid_with_grid_sampler() -> None:
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid_of(GRID), seed=0))
    seen = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(tuple(suggest_all(trial, GRID).values()))
        return 0.0

    # optimize, not ask/tell: GridSampler stops the study after the last point, which only
    # works inside an optimize loop. Ask for more than the grid to see that it stops.
    study.optimize(objective, n_trials=grid_size(GRID) + 5)
    assert sorted(seen, key=repr) == sorted(
        itertools.product(*(param.choices for param in GRID)), key=repr
    )
    assert all(type(batch_size) is int for _, batch_size, _ in seen)


def test_suggest_rejects_other_objects() -> None:
    trial = optuna.create_study().ask()
    with pytest.raises(TypeError):
        suggest(trial, {"name": "epochs"})  # type: ignore[arg-type]
