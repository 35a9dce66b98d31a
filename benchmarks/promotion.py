"""`fer-search promote` on the quickstart: this commit against an older one, in one run.

    flock /tmp/work/bench.lock .venv/bin/python benchmarks/promotion.py [--old COMMIT] [--rounds N]

The quickstart study (`studies/quickstart.yaml` as it is: 1,400 synthetic faces at 48 px, the
24-point grid, a random frozen VGG16) runs once with this commit, in a work folder. Then its
best trial is promoted, each time as a whole command (process start to exit) into a model name
of its own (so nothing is answered from an earlier registration), in turns, `--rounds` times:

- `old`: the old commit's `promote` (exported with `git archive`, run from the same virtual
  environment): the full model scores every val and test face on raw pixels;
- `new, test features not cached`: this commit, the test split's features removed from the
  cache first: val is scored on the study's cached features, test's are extracted once, and the
  exported model runs on a sample of 32 test faces;
- `new, test features cached`: this commit again, as every later promotion on the same data.

Then, in a subprocess, the sample check's numbers at float32 and mixed_bfloat16 (the best
trial's config, trained again on the quickstart's data): the largest probability difference
between the exported model and the cached path on the 32 faces, and, as the scale a bf16
difference can reach, between a head's probabilities on bf16 and on float32 features.

Writes results/promotion.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DEFAULT_OLD = "de2fbd0"  # restructure before promotion scored on cached features
QUICKSTART = benchlib.REPO / "studies" / "quickstart.yaml"

_GAPS = r"""
import json, sys
from pathlib import Path
import numpy as np
from trainer import TrainConfig, train
from trainer.data.loading import load_dataset
from trainer.config import DataConfig
from trainer.evaluate import check_export, split_features, export_tolerance
from trainer.heads.engine import head_proba
from trainer.heads.result import build_trained
from trainer.heads.head_config import HeadConfig
from trainer.network.features import cached_features
values, root, cache = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
probs = {}
for precision in ("float32", "mixed_bfloat16"):
    config = TrainConfig.from_dict({**values, "precision": precision})
    data = load_dataset(DataConfig(root=Path(root), cache_dir=Path(cache)),
                        image_size=config.image_size)
    result = train(config, data, resume=False)
    network = build_trained(config, result.top_weights, data.class_names)
    split_features(config, data, "test", network)
    check = check_export(network.full, config, result.top_weights, data, "test")
    out[precision] = {"faces": check.faces, "max_gap": check.max_gap,
                      "tolerance": export_tolerance(config), "ok": check.ok}
    probs[precision] = (config, result.top_weights, data)
# The same head (float32's) on bf16 and float32 features: all of bf16's rounding at once.
config, weights, data = probs["float32"]
bf16 = cached_features(data, "test", config.replace(precision="mixed_bfloat16"))
f32 = cached_features(data, "test", config)
spec = HeadConfig.from_config(config)
out["bf16_vs_float32_features"] = float(np.abs(head_proba(spec, weights, bf16)
                                               - head_proba(spec, weights, f32)).max())
print("GAPS " + json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    prov = benchlib.provenance()
    old_src = benchlib.export_source(args.old, work / f"src-{args.old}")
    shutil.copy(QUICKSTART, work / "quickstart.yaml")
    start = time.perf_counter()
    _cli(benchlib.REPO, work, "run", "quickstart.yaml")
    study_s = time.perf_counter() - start
    print(f"study: {study_s:.1f} s", flush=True)
    cases = {"old": old_src, "new, test features not cached": benchlib.REPO,
             "new, test features cached": benchlib.REPO}
    times: dict[str, list[float]] = {name: [] for name in cases}
    models: dict[str, list[str]] = {name: [] for name in cases}
    for i in range(1, args.rounds + 1):
        for n, (name, src) in enumerate(cases.items()):
            if name == "new, test features not cached":
                for path in (work / ".cache" / "features").glob("test-*.npy"):
                    path.unlink()
            model = f"bench-{n}-{i}"
            start = time.perf_counter()
            _cli(src, work, "promote", "quickstart", "--model-name", model)
            times[name].append(time.perf_counter() - start)
            models[name].append(model)
            print(f"round {i}, {name}: {times[name][-1]:.1f} s", flush=True)
    scores = _scores(work, models)
    gaps = _gaps(work, Path(args.gaps)) if args.gaps else None
    prov["load_average_at_end"] = benchlib.load_average()
    old_s = statistics.median(times["old"])
    report = {"provenance": prov, "old_commit": args.old, "study_s": study_s,
              "promote_s": times, "test_scores": scores, "sample_check": gaps,
              "new_over_old": {name: statistics.median(t) / old_s for name, t in times.items()}}
    rows = [[name, " / ".join(f"{t:.1f}" for t in ts), f"{statistics.median(ts):.1f}",
             f"{statistics.median(ts) / old_s:.2f}", _score_text(scores[name])]
            for name, ts in times.items()]
    markdown = (
        "# `fer-search promote`: scoring on cached features against the full model\n\n"
        f"The quickstart study as it is (`studies/quickstart.yaml`: 1,400 synthetic faces, "
        f"48 px, 24-point grid, `weights: none`), run once ({study_s:.0f} s); its best trial "
        f"promoted as a whole command (process start to exit: TensorFlow's start, rebuilding "
        f"VGG16, scoring, logging the model to MLflow and registering it), each promotion into "
        f"a model name of its own, in turns, {args.rounds} rounds. `old`: commit {args.old}, "
        "every val and test face through the full model. `new`: val on the study's cached "
        "features, test on features extracted once (removed before the `not cached` case), "
        "the exported model on 32 test faces.\n\n"
        + benchlib.table(["promote", "wall s, each round", "median s", "/ old",
                          "test accuracy, macro-F1, loss"], rows)
        + "\n\n"
        + (_gaps_text(gaps) if gaps else "")
        + benchlib.provenance_markdown(prov)
    )
    for path in benchlib.write_results(args.out, args.name, report, markdown):
        print(f"wrote {path}")
    return 0


def _cli(src: Path, cwd: Path, *argv: str) -> None:
    subprocess.run([sys.executable, "-m", "search.cli", *argv], cwd=cwd,
                   env=benchlib.source_env(src), check=True, stdout=subprocess.DEVNULL)


def _scores(work: Path, models: dict[str, list[str]]) -> dict[str, list[list[float]]]:
    """Each promotion's registered test scores (the old and new codes must agree)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    found = {}
    for name, names in models.items():
        found[name] = []
        for model in names:
            tags = client.get_model_version(model, "1").tags
            found[name].append([float(tags[k]) for k in ("test_accuracy", "test_macro_f1",
                                                          "test_loss")])
    return found


def _score_text(rows: list[list[float]]) -> str:
    return "; ".join(f"{a:.4f}, {f:.4f}, {loss:.6f}" for a, f, loss in rows)


def _gaps(work: Path, gap_work: Path) -> dict:
    """The sample check at float32 and bf16, the best trial's config on the quickstart data."""
    import optuna

    study = optuna.load_study(study_name="quickstart",
                              storage=f"sqlite:///{work / 'studies' / 'optuna.db'}")
    from_spec = {"image_size": 48, "weights": "none", "dropout": 0.3}
    values = {**from_spec, **study.best_trial.params}
    root = next((work / "data").glob("synthetic-*"))
    done = subprocess.run(
        [sys.executable, "-c", _GAPS, json.dumps(values), str(root), str(gap_work.resolve())],
        env=benchlib.source_env(benchlib.REPO), check=True, capture_output=True, text=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("GAPS "))
    return {"config": values, **json.loads(line.removeprefix("GAPS "))}


def _gaps_text(gaps: dict) -> str:
    rows = [[p, g["faces"], f"{g['max_gap']:.3g}", f"{g['tolerance']:g}", g["ok"]]
            for p, g in gaps.items() if isinstance(g, dict) and "max_gap" in g]
    return (
        "The sample check, the best trial's config trained again at each precision "
        f"({gaps['config']}): the largest difference of one probability between the exported "
        "model and the cached path on the 32 test faces.\n\n"
        + benchlib.table(["precision", "faces", "largest difference", "allowed", "ok"], rows)
        + "\n\nFor scale: the float32-trained head's probabilities on bf16 features against "
        f"float32 features (all of bf16's rounding at once) differ by up to "
        f"{gaps['bf16_vs_float32_features']:.3g}.\n\n"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="the commit to compare against")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "promotion")
    p.add_argument("--gaps", default=str(benchlib.WORK_DIR / "promotion-gaps"),
                   help="cache folder of the sample-check measurement ('' skips it)")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--name", default="promotion")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
