"""Promoting a repeats trial (``repeats: N``): which seed's weights are registered, and the test
scores of them all.

A repeats trial is one configuration trained with N seeds (search.trial.repeats); its value is
their mean. Promotion registers one model, so it takes one seed's weights: the representative
seed, whose validation value is closest to the mean (search.tracking.spread), rather than the
luckiest seed, whose lead over the mean is mostly noise a user would not get again. The
version's own scores (val_*, test_*, the champion comparison) are that seed's; every seed is
also scored on test, and the mean and spread go to the trial's run as test metrics and onto the
version as tags, with a paragraph saying which seed was registered and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import trainer
from search.registry.refs import RegistryError
from search.tracking.runs import Tracker, seed_weights_artifact
from search.tracking.spread import Spread, recorded
from search.urls import mask_url

_TEST = (("accuracy", "accuracy"), ("macro_f1", "macro_f1"), ("loss", "loss"))


@dataclass(frozen=True)
class Chosen:
    """A repeats trial's seeds and the one promotion registers."""

    spread: Spread
    seed: int

    @property
    def value(self) -> float:
        """The representative seed's validation value: what its rebuilt model must score."""
        return self.spread.value_of(self.seed)


@dataclass(frozen=True)
class Scored:
    """Every seed's test scores, as version tags and a paragraph of its description."""

    tags: dict[str, object]
    text: str


def chosen(trial) -> Chosen | None:
    """The seed to register from `trial`, or None for a trial of one seed."""
    spread = recorded(trial)
    if spread is None or spread.n < 2:
        return None
    return Chosen(spread, spread.representative)


def score_seeds(tracker: Tracker, run_id: str, choice: Chosen, config, test: trainer.Evaluation,
                network, dataset, metric: str, tracking_uri: str) -> Scored:
    """Scores the other seeds' weights on the test split (`test`: the representative's score,
    `network` its network), logs the mean, std, min, max and each seed's score to the trial's
    run as `test_<name>_mean`, ... `test_<name>_seed<s>`, and returns the tags and text for the
    version."""
    scores: dict[int, trainer.Evaluation] = {choice.seed: test}
    for seed in choice.spread.seeds:
        if seed == choice.seed:
            continue
        seed_config = config.replace(seed=seed)
        seed_weights = _seed_weights(tracker, run_id, seed, tracking_uri)
        # A head on cached features is scored on them (the network only extracts any features
        # not cached yet); a fine-tuned network is the seed's own, rebuilt.
        built = network
        if not trainer.scores_on_features(config):
            built = trainer.build_trained(seed_config, seed_weights, dataset.class_names)
        scores[seed] = trainer.evaluate_trained(built, seed_config, seed_weights, dataset, "test")
    metrics: dict[str, float] = {}
    spreads: dict[str, Spread] = {}
    for name, field in _TEST:
        spread = Spread(choice.spread.seeds,
                        tuple(float(getattr(scores[s], field)) for s in choice.spread.seeds))
        spreads[name] = spread
        metrics.update({f"test_{name}_mean": spread.mean, f"test_{name}_std": spread.std,
                        f"test_{name}_min": spread.low, f"test_{name}_max": spread.high,
                        **{f"test_{name}_seed{s}": v for s, v in zip(spread.seeds, spread.values,
                                                                     strict=True)}})
    tracker.log(run_id, metrics=metrics)
    tags = {"repeats": choice.spread.n, "repeat_seeds": ",".join(map(str, choice.spread.seeds)),
            "representative_seed": choice.seed,
            **{k: v for k, v in metrics.items() if not k.split("_")[-1].startswith("seed")}}
    return Scored(tags, _text(choice, metric, spreads, scores))


def _text(choice: Chosen, metric: str, spreads: dict[str, Spread],
          scores: dict[int, trainer.Evaluation]) -> str:
    val = choice.spread
    best_seed, best_value = max(zip(val.seeds, val.values, strict=True), key=lambda sv: sv[1])
    lucky = ("here also the best seed" if best_seed == choice.seed
             else f"the best seed was {best_seed}, {best_value:.4f}")
    rows = [f"| {s}{' (registered)' if s == choice.seed else ''} | {v:.4f} | "
            f"{scores[s].accuracy:.4f} | {scores[s].macro_f1:.4f} |"
            for s, v in zip(val.seeds, val.values, strict=True)]
    test = spreads["accuracy"]
    return "\n".join([
        "",
        "",
        f"**Repeats**: this configuration was trained with {val.n} seeds "
        f"({', '.join(map(str, val.seeds))}); the trial's {metric} is their mean, "
        f"{val.text()} (min {val.low:.4f}, max {val.high:.4f}).",
        "",
        f"**Registered seed: {choice.seed}**, the representative seed: its {metric} "
        f"({choice.value:.4f}) is the closest to the mean, so this version is a typical "
        f"training of the configuration rather than its luckiest seed ({lucky}). The scores "
        f"above are seed {choice.seed}'s; over all seeds the test accuracy is {test.text()} "
        f"(min {test.low:.4f}, max {test.high:.4f}).",
        "",
        f"| seed | {metric} | test accuracy | test macro-F1 |",
        "|---|---|---|---|",
        *rows,
    ])


def _seed_weights(tracker: Tracker, run_id: str, seed: int, tracking_uri: str) -> list:
    try:
        return tracker.load_top_weights(run_id, seed_weights_artifact(seed))
    except Exception as exc:  # run deleted, artifacts moved, another tracking URI
        raise RegistryError(
            f"cannot read the trained weights of seed {seed} (MLflow run {run_id}) from "
            f"{mask_url(tracking_uri)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None
