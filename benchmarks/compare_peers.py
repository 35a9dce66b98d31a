"""fer-search against keras-tuner, a naive Optuna objective and hand-written cached-feature Keras
fits: one grid, one dataset, one run.

    python benchmarks/compare_peers.py            # full size, ~20 min on 2 cores; writes
                                                  # benchmarks/results/peers.{json,md}
    python benchmarks/compare_peers.py --smoke    # tiny, < 2 min, for CI; results go under
                                                  # benchmarks/work/smoke/

All three search the same grid (learning_rate x batch_size x epochs x head_width) for the same
model on the same data and split:

- VGG16 without its top, ``weights: none``: a fixed random base, initialised from seed 0 in all
  three (this machine cannot download the ImageNet weights). The accuracies are therefore far below
  ImageNet-feature accuracies; what matters here is that they are equal across the three.
- head: global average pooling -> Dense(head_width, relu) -> Dropout(0.3) -> Dense(7, softmax),
  seeded initialisers; Adam; sparse categorical cross-entropy; the base frozen.
- input: uint8 RGB faces from `trainer.load_dataset` (synthetic ExpW made by
  `trainer.generate_synthetic_expw`), VGG16's caffe preprocessing (BGR, mean removed).

The three contenders:

1. fer-search: ``fer-search run <generated spec>`` as a user runs it, in a subprocess, with MLflow
   logging to its own fresh SQLite store, a fresh Optuna store and a fresh crop + feature cache, so
   its time includes process start-up, TensorFlow import, database creation, cropping the faces and
   the one-time VGG16 feature extraction. Timed from process start to process exit.
2. keras-tuner ``GridSearch``: `HyperModel.build(hp)` builds the full VGG16 + head (``hp.Choice``
   for learning_rate and head_width), `HyperModel.fit` picks batch_size and epochs
   (``hp.Choice``) and fits on the images every trial, as its users do (its default checkpointing
   included). Timed around ``tuner.search`` only: its start-up, imports and data loading are left
   out, which favours it.
3. naive Optuna: ``GridSampler`` and an objective that builds the full model and fits on images
   every trial (Optuna's Keras example), in-memory storage, no tracking. Timed around
   ``study.optimize`` only.
4. cached-keras: what a skilled engineer writes by hand: the frozen base's pooled features
   computed once (``predict`` on train and val), then one plain Keras ``fit`` of the head per
   grid point on those features (``validation_data`` = the val features). Timed around the
   feature extraction and the fits (imports and data loading left out).

Each contender runs in its own subprocess (isolated memory, each pays its own TensorFlow start), all
with ``TF_ENABLE_ONEDNN_OPTS=1`` and TensorFlow's default thread pools. The "best val accuracy" of
each is the best over trials of the validation accuracy after the trial's LAST epoch (what
fer-search reports with early stopping off); keras-tuner's own objective (best epoch of each trial)
is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (a sibling module; benchmarks/ is not a package)

CONTENDERS = ("fer-search", "keras-tuner", "optuna-naive", "cached-keras")
NUM_CLASSES = 7
BASE_SEED = 0  # trainer.network.model.RANDOM_BASE_SEED: every trial of all three uses this base
HEAD_SEED = 0  # TrainConfig.seed: head initialisers, dropout, shuffling
DROPOUT = 0.3
DATA_SEED = 0


@dataclass(frozen=True)
class Grid:
    """The searched values; every contender runs every combination once."""

    learning_rate: tuple[float, ...]
    batch_size: tuple[int, ...]
    epochs: tuple[int, ...]
    head_width: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in asdict(self).values())

    def shape(self) -> str:
        return "x".join(str(len(v)) for v in asdict(self).values())


@dataclass
class Setup:
    """What all three contenders are given."""

    label: str
    faces: int
    image_size: int
    grid: Grid
    data_root: Path
    run_dir: Path
    split_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def peer_cache(self) -> Path:
        return self.run_dir / "peer-cache"


FULL = {
    "faces": 700,
    "image_size": 48,
    "grid": Grid((1e-3, 3e-3), (32, 64), (2, 4), (64, 256)),
}
SMOKE = {
    "faces": 70,
    "image_size": 32,
    "grid": Grid((1e-3, 1e-2), (32,), (1, 2), (64,)),
}


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.peer:
        return _peer_main(args.peer, Path(args.job))
    preset = SMOKE if args.smoke else FULL
    grid = Grid(
        tuple(args.learning_rates or preset["grid"].learning_rate),
        tuple(args.batch_sizes or preset["grid"].batch_size),
        tuple(args.epochs or preset["grid"].epochs),
        tuple(args.head_widths or preset["grid"].head_width),
    )
    label = "smoke" if args.smoke else "full"
    out_dir = Path(args.out) if args.out else (
        benchlib.WORK_DIR / "smoke" / "results" if args.smoke else benchlib.RESULTS_DIR
    )
    setup = Setup(
        label=label,
        faces=args.faces or preset["faces"],
        image_size=args.image_size or preset["image_size"],
        grid=grid,
        data_root=benchlib.WORK_DIR / "data" / f"synthetic-{args.faces or preset['faces']}-0",
        run_dir=Path(args.work).resolve() if args.work else benchlib.WORK_DIR / label,
    )
    started = time.perf_counter()
    prov = benchlib.provenance()
    prov["env"] = benchlib.speed_env(_subprocess_env())  # what the three contenders ran with
    _prepare(setup)
    results: dict[str, dict[str, Any]] = {}
    for name in args.only or CONTENDERS:
        print(f"[compare_peers] {name}: running ({setup.grid.size} trials)...", flush=True)
        results[name] = OURS_RUNNER(setup) if name == "fer-search" else _run_peer(name, setup)
        r = results[name]
        print(f"[compare_peers] {name}: {'ok' if r['ok'] else 'FAILED'} in "
              f"{r['wall_seconds']:.1f} s, best val_accuracy {r.get('best_val_accuracy')}",
              flush=True)
    prov["load_average_at_end"] = benchlib.load_average()
    report = _report(setup, prov, results, time.perf_counter() - started)
    paths = benchlib.write_results(out_dir, args.name, report, _markdown(report))
    print(_markdown(report))
    print(f"[compare_peers] wrote {', '.join(str(p) for p in paths)}")
    failed = [name for name, r in results.items() if not r["ok"]]
    if failed:
        print(f"[compare_peers] FAILED: {', '.join(failed)} (logs under {setup.run_dir})",
              file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for CI (< 2 min); results go under benchmarks/work/smoke/")
    p.add_argument("--faces", type=int, help="faces in the synthetic dataset (all splits)")
    p.add_argument("--image-size", type=int, help="input side in pixels (>= 32)")
    p.add_argument("--out", help="folder for peers.json / peers.md (default: benchmarks/results, "
                   "or benchmarks/work/smoke/results with --smoke)")
    p.add_argument("--name", default="peers", help="stem of the result files (default peers)")
    p.add_argument("--work", help="folder for stores, caches and logs (emptied first; default "
                   "benchmarks/work/full or benchmarks/work/smoke)")
    p.add_argument("--learning-rates", type=float, nargs="+")
    p.add_argument("--batch-sizes", type=int, nargs="+")
    p.add_argument("--epochs", type=int, nargs="+")
    p.add_argument("--head-widths", type=int, nargs="+")
    p.add_argument("--only", nargs="+", choices=CONTENDERS, help="run only these (debugging)")
    p.add_argument("--peer", choices=CONTENDERS[1:], help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p


def _prepare(setup: Setup) -> None:
    """The dataset (generated once, reused across runs: not timed), a fresh work folder, and the
    crop cache the peers load from (built here so that no peer pays for it)."""
    from trainer.config import DataConfig
    from trainer.data.loading import load_dataset
    from trainer.data.synthetic import generate_synthetic_expw

    generate_synthetic_expw(setup.data_root, setup.faces, DATA_SEED)
    if setup.run_dir.exists():
        shutil.rmtree(setup.run_dir)
    setup.run_dir.mkdir(parents=True)
    data = load_dataset(DataConfig(setup.data_root, cache_dir=setup.peer_cache), setup.image_size)
    setup.split_sizes = {s.name: len(s) for s in (data.train, data.val, data.test)}


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"  # the trainer's default; the peers get it too
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    for name in ("MLFLOW_TRACKING_URI", "FER_SEARCH_STORAGE"):  # the benchmark's stores only
        env.pop(name, None)
    return env


def _timed_subprocess(cmd: list[str], cwd: Path, log: Path) -> tuple[int, float, float, float]:
    """Runs `cmd`; returns (exit code, wall seconds, start epoch time, peak RSS MiB)."""
    start_epoch = time.time()
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_subprocess_env(), stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, start_epoch, usage.ru_maxrss / 1024


# ------------------------------------------------------------------------------- fer-search


def _spec_text(setup: Setup, cache_dir: Path) -> str:
    g = setup.grid

    def values(v: tuple) -> str:
        return "[" + ", ".join(repr(x) for x in v) + "]"

    return f"""# Written by benchmarks/compare_peers.py: the grid the peers search too.
name: benchmark
sampler: grid
seed: 0
metric: val_accuracy
space:
  learning_rate: {values(g.learning_rate)}
  batch_size: {values(g.batch_size)}
  epochs: {values(g.epochs)}
  head_width: {values(g.head_width)}
train:
  image_size: {setup.image_size}
  weights: none
  trainable_blocks: 0
  pooling: avg
  dropout: {DROPOUT}
  class_weight: none
  augment: false
  early_stopping_patience: 0
  seed: {HEAD_SEED}
data:
  root: {setup.data_root}
  cache_dir: {cache_dir}
"""


def run_fer_search(setup: Setup) -> dict[str, Any]:
    """`fer-search run` on a fresh store, tracking store and cache; timed as a whole command."""
    work = setup.run_dir / "fer-search"
    work.mkdir()
    spec = work / "benchmark.yaml"
    spec.write_text(_spec_text(setup, work / "cache"))
    storage = f"sqlite:///{work / 'optuna.db'}"
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    exe = Path(sys.executable).with_name("fer-search")
    cmd = [str(exe) if exe.exists() else "fer-search", "run", str(spec),
           "--storage", storage, "--tracking-uri", tracking]
    code, wall, start_epoch, rss = _timed_subprocess(cmd, work, work / "run.log")
    result: dict[str, Any] = {
        "ok": code == 0, "exit_code": code, "wall_seconds": wall, "peak_rss_mib": rss,
        "timed": "the whole `fer-search run` command: process start to exit",
        "command": " ".join(cmd), "log": str(work / "run.log"),
    }
    if code != 0:
        return result
    try:
        result.update(_analyse_study(storage, tracking, start_epoch, start_epoch + wall))
    except Exception as error:  # a broken analysis must not hide the timing
        result["ok"] = False
        result["analysis_error"] = f"{type(error).__name__}: {error}"
    if result.get("trials") != setup.grid.size:
        result["ok"] = False
        result.setdefault("analysis_error", f"{result.get('trials')} trials complete, "
                                            f"expected {setup.grid.size}")
    return result


OURS_RUNNER = run_fer_search


def _analyse_study(storage: str, tracking: str, t_start: float, t_end: float) -> dict[str, Any]:
    """Per-trial wall time (claim -> MLflow run closed) against the time inside the trainer."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import optuna
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="benchmark", storage=storage)
    client = MlflowClient(tracking_uri=tracking)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    rows = []
    own_clock = True  # every run logged `train_seconds` (the trainer's own clock)
    for t in done:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        # The trial's bookkeeping (duration_s, epochs_trained, ...) is in its tags.
        m = {**{k: float(v) for k, v in run.data.tags.items() if _is_number(v)},
             **run.data.metrics}
        claimed = t.datetime_start.timestamp()  # naive local time, as Optuna wrote it
        closed = run.info.end_time / 1000
        wall = closed - claimed
        # `train_seconds` (trainer.train's own clock) if the runner logs it; else `duration_s`,
        # which also covers creating the MLflow run: then the overhead below is a lower bound.
        own_clock = own_clock and "train_seconds" in m
        inside = m.get("train_seconds", m.get("duration_s", math.nan))
        rows.append({
            "number": t.number, "params": t.params, "val_accuracy": t.value,
            "wall_s": wall, "trainer_s": inside, "overhead_s": wall - inside,
            "feature_seconds": m.get("feature_seconds", 0.0),
            "epochs_run": int(m.get("epochs_run", 0)),
            "epochs_trained": int(m["epochs_trained"]) if "epochs_trained" in m else None,
            "claimed": claimed, "closed": closed,
        })
    rows.sort(key=lambda r: r["claimed"])
    walls = [r["wall_s"] for r in rows]
    shares = [r["overhead_s"] / r["wall_s"] for r in rows if r["wall_s"] > 0]
    overheads = [r["overhead_s"] for r in rows]
    first, last = rows[0]["claimed"], rows[-1]["closed"]
    best = max(rows, key=lambda r: r["val_accuracy"])
    trained = [r["epochs_trained"] for r in rows]
    return {
        "trials": len(rows),
        "best_val_accuracy": best["val_accuracy"],
        "best_params": best["params"],
        "epochs_run": sum(r["epochs_run"] for r in rows),
        "epochs_trained": None if None in trained else sum(trained),
        # Members of a group report their group's one extraction: the largest is the one.
        "feature_seconds": max(r["feature_seconds"] for r in rows),
        "trainer_time_metric": "train_seconds" if own_clock else "duration_s",
        "overhead": {
            "share_median": statistics.median(shares),
            "share_p95": _percentile(shares, 95),
            "seconds_median": statistics.median(overheads),
            "seconds_p95": _percentile(overheads, 95),
            "share_of_all_trial_time": sum(overheads) / sum(walls),
        },
        "phases_s": {
            "startup": first - t_start,  # process start -> first trial claimed
            # Trials of a group run together: the time covered by trials, not their sum.
            "trials": _covered([(r["claimed"], r["closed"]) for r in rows]),
            "between_trials": (last - first) - _covered([(r["claimed"], r["closed"])
                                                         for r in rows]),
            "tail": t_end - last,  # last trial closed -> process exit (leaderboard, exit)
        },
        "per_trial": rows,
    }


def _covered(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of (start, end) intervals."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ------------------------------------------------------------------------------------ peers


def _run_peer(name: str, setup: Setup) -> dict[str, Any]:
    work = setup.run_dir / name
    work.mkdir()
    job = work / "job.json"
    out = work / "result.json"
    job.write_text(json.dumps({
        "data_root": str(setup.data_root), "cache_dir": str(setup.peer_cache),
        "image_size": setup.image_size, "grid": asdict(setup.grid), "work": str(work),
        "result": str(out),
    }))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", name, "--job", str(job)]
    code, wall, _, rss = _timed_subprocess(cmd, work, work / "run.log")
    result: dict[str, Any] = {"ok": False, "exit_code": code, "process_seconds": wall,
                              "peak_rss_mib": rss, "log": str(work / "run.log")}
    if out.is_file():
        result.update(json.loads(out.read_text()))
        result["ok"] = code == 0 and result.get("trials") == setup.grid.size
    result.setdefault("wall_seconds", wall)
    return result


def _peer_main(name: str, job_path: Path) -> int:
    """In the peer's own process: load the data (untimed), search (timed), write the result."""
    job = json.loads(job_path.read_text())
    import numpy as np

    import trainer  # sets TF_ENABLE_ONEDNN_OPTS=1 (already in the environment) before TF loads
    from trainer.config import DataConfig

    config = DataConfig(Path(job["data_root"]), cache_dir=Path(job["cache_dir"]))
    data = trainer.load_dataset(config, job["image_size"])
    import keras

    # The users' way: VGG16's own preprocessing applied to float arrays before fitting.
    prep = keras.applications.vgg16.preprocess_input
    x_train = prep(np.asarray(data.train.images, dtype="float32"))
    x_val = prep(np.asarray(data.val.images, dtype="float32"))
    y_train = np.asarray(data.train.labels)
    y_val = np.asarray(data.val.labels)
    grid = {k: list(v) for k, v in job["grid"].items()}
    search = {"keras-tuner": _keras_tuner_search, "optuna-naive": _optuna_search,
              "cached-keras": _cached_keras_search}[name]
    start = time.perf_counter()
    result = search(grid, job["image_size"], (x_train, y_train), (x_val, y_val), Path(job["work"]))
    result["wall_seconds"] = time.perf_counter() - start
    timed = {"keras-tuner": "tuner.search", "optuna-naive": "study.optimize",
             "cached-keras": "feature extraction + one fit per grid point"}[name]
    result["timed"] = f"{timed} only (process start, TensorFlow import and data loading excluded)"
    result["same_base_as_fer_search"] = _same_base_as_trainer(job["image_size"], result)
    Path(job["result"]).write_text(json.dumps(result, indent=2, default=str))
    return 0


def build_model(image_size: int, learning_rate: float, head_width: int):
    """The full model a peer trains every trial: frozen random VGG16 + the head, compiled."""
    import keras

    keras.utils.set_random_seed(BASE_SEED)  # the same random base as fer-search's
    base = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3))
    x = base(inputs, training=False)
    x = keras.layers.Dense(head_width, activation="relu",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=HEAD_SEED))(x)
    x = keras.layers.Dropout(DROPOUT, seed=HEAD_SEED)(x)
    outputs = keras.layers.Dense(
        NUM_CLASSES, activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=HEAD_SEED + 1),
    )(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    return model


def _base_checksum(model) -> float:
    import numpy as np

    base = next(layer for layer in model.layers if layer.name.startswith("vgg16"))
    return float(sum(np.abs(np.asarray(w, dtype="float64")).sum() for w in base.get_weights()))


def _same_base_as_trainer(image_size: int, result: dict[str, Any]) -> bool:
    """Whether the peer's random VGG16 is fer-search's (untimed; builds the trainer's network)."""
    import numpy as np

    from trainer.config import TrainConfig
    from trainer.network.model import build_network

    network = build_network(TrainConfig(image_size=image_size, weights="none"))
    ours = sum(np.abs(np.asarray(w, dtype="float64")).sum() for w in network.frozen.get_weights())
    return bool(np.isclose(ours, result["base_checksum"], rtol=1e-9))


def _keras_tuner_search(grid, image_size, train, val, work: Path) -> dict[str, Any]:
    import keras
    import keras_tuner as kt

    trials: list[dict[str, Any]] = []
    checksum: list[float] = []

    class VGGHead(kt.HyperModel):
        def build(self, hp):
            model = build_model(image_size, hp.Choice("learning_rate", grid["learning_rate"]),
                                hp.Choice("head_width", grid["head_width"]))
            if not checksum:
                checksum.append(_base_checksum(model))
            return model

        def fit(self, hp, model, *args, **kwargs):
            batch_size = hp.Choice("batch_size", grid["batch_size"])
            epochs = hp.Choice("epochs", grid["epochs"])
            keras.utils.set_random_seed(HEAD_SEED)  # same shuffling as fer-search's trainer
            start = time.perf_counter()
            history = model.fit(*args, batch_size=batch_size, epochs=epochs, **kwargs)
            trials.append({
                "params": dict(hp.values), "val_accuracy": history.history["val_accuracy"][-1],
                "fit_s": time.perf_counter() - start, "epochs_run": len(history.epoch),
            })
            return history

    tuner = kt.GridSearch(VGGHead(), objective="val_accuracy", seed=0, overwrite=True,
                          directory=str(work / "tuner"), project_name="benchmark")
    tuner.search(train[0], train[1], validation_data=val, verbose=0)
    kt_best = tuner.oracle.get_best_trials(1)[0]
    # kt_objective_best: the best epoch of the best trial, keras-tuner's way.
    return _summary(trials, checksum[0], kt_objective_best=kt_best.score)


def _summary(trials: list[dict[str, Any]], checksum: float, **extra: Any) -> dict[str, Any]:
    """What every peer reports: its trials, the best one, epochs and fit time, its base."""
    best = max(trials, key=lambda t: t["val_accuracy"])
    return {
        "trials": len(trials),
        "distinct_points": len({json.dumps(t["params"], sort_keys=True) for t in trials}),
        "best_val_accuracy": best["val_accuracy"],
        "best_params": best["params"],
        **extra,
        "epochs_run": sum(t["epochs_run"] for t in trials),
        "fit_seconds": sum(t["fit_s"] for t in trials),
        "base_checksum": checksum,
        "per_trial": trials,
    }


def _optuna_search(grid, image_size, train, val, work: Path) -> dict[str, Any]:
    import keras
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials: list[dict[str, Any]] = []
    checksum: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()  # as Optuna's Keras example does
        model = build_model(
            image_size,
            trial.suggest_categorical("learning_rate", grid["learning_rate"]),
            trial.suggest_categorical("head_width", grid["head_width"]),
        )
        if not checksum:
            checksum.append(_base_checksum(model))
        batch_size = trial.suggest_categorical("batch_size", grid["batch_size"])
        epochs = trial.suggest_categorical("epochs", grid["epochs"])
        keras.utils.set_random_seed(HEAD_SEED)
        start = time.perf_counter()
        history = model.fit(train[0], train[1], validation_data=val, batch_size=batch_size,
                            epochs=epochs, verbose=0)
        score = history.history["val_accuracy"][-1]
        trials.append({"params": dict(trial.params), "val_accuracy": score,
                       "fit_s": time.perf_counter() - start, "epochs_run": len(history.epoch)})
        return score

    size = math.prod(len(v) for v in grid.values())
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(objective, n_trials=size)
    return _summary(trials, checksum[0])


def _cached_keras_search(grid, image_size, train, val, work: Path) -> dict[str, Any]:
    """Features once, then one Keras fit of a fresh head per grid point on them."""
    import itertools

    import keras

    full = build_model(image_size, 1e-3, grid["head_width"][0])
    checksum = _base_checksum(full)
    base = next(layer for layer in full.layers if layer.name.startswith("vgg16"))
    f_train = base.predict(train[0], batch_size=64, verbose=0)
    f_val = base.predict(val[0], batch_size=64, verbose=0)
    trials: list[dict[str, Any]] = []
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values, strict=True))
        keras.backend.clear_session()
        inputs = keras.Input(f_train.shape[1:])
        x = keras.layers.Dense(
            params["head_width"], activation="relu",
            kernel_initializer=keras.initializers.GlorotUniform(seed=HEAD_SEED))(inputs)
        x = keras.layers.Dropout(DROPOUT, seed=HEAD_SEED)(x)
        outputs = keras.layers.Dense(
            NUM_CLASSES, activation="softmax",
            kernel_initializer=keras.initializers.GlorotUniform(seed=HEAD_SEED + 1))(x)
        head = keras.Model(inputs, outputs)
        head.compile(optimizer=keras.optimizers.Adam(learning_rate=params["learning_rate"]),
                     loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        keras.utils.set_random_seed(HEAD_SEED)
        start = time.perf_counter()
        history = head.fit(f_train, train[1], validation_data=(f_val, val[1]),
                           batch_size=params["batch_size"], epochs=params["epochs"], verbose=0)
        trials.append({"params": params, "val_accuracy": history.history["val_accuracy"][-1],
                       "fit_s": time.perf_counter() - start, "epochs_run": len(history.epoch)})
    return _summary(trials, checksum)


# ---------------------------------------------------------------------------------- report


def _report(setup: Setup, prov: dict[str, Any], results: dict[str, dict[str, Any]],
            total: float) -> dict[str, Any]:
    ours = results.get("fer-search", {})
    comparisons = {}
    for name, r in results.items():
        if name == "fer-search" or not ours.get("ok") or not r.get("ok"):
            continue
        comparisons[name] = {
            **_agreement(ours, r),
            "wall_ratio_peer_over_ours": r["wall_seconds"] / ours["wall_seconds"],
            "process_ratio_peer_over_ours": r["process_seconds"] / ours["wall_seconds"],
            "val_accuracy_points_ours_minus_peer":
                100 * (ours["best_val_accuracy"] - r["best_val_accuracy"]),
        }
    kt = comparisons.get("keras-tuner", {})
    ck = comparisons.get("cached-keras", {})
    goals = {}
    if kt and setup.label == "full":  # the goals are about the full-size run
        goals = {
            "wall_ratio_vs_keras_tuner_at_least_40": kt["wall_ratio_peer_over_ours"] >= 40,
            "val_accuracy_within_2_points_of_keras_tuner":
                abs(kt["val_accuracy_points_ours_minus_peer"]) <= 2,
        }
    if ck and setup.label == "full":
        goals["wall_ratio_vs_cached_keras_at_least_3"] = ck["wall_ratio_peer_over_ours"] >= 3
    for r in results.values():
        if r.get("ok") and r.get("wall_seconds"):
            r["trials_per_hour"] = r["trials"] * 3600 / r["wall_seconds"]
    return {
        "benchmark": "compare_peers",
        **prov,
        "setup": {
            "label": setup.label, "faces": setup.faces, "image_size": setup.image_size,
            "split_sizes": setup.split_sizes, "grid": asdict(setup.grid),
            "grid_shape": setup.grid.shape(), "grid_size": setup.grid.size,
            "model": f"VGG16 (weights: none, a fixed random base from seed {BASE_SEED}, frozen) + "
                     f"avg pooling -> Dense(head_width, relu) -> Dropout({DROPOUT}) -> "
                     "Dense(7, softmax); Adam; sparse categorical cross-entropy",
            "weights_note": "no download is possible here, so VGG16 is randomly initialised "
                            "(the same fixed base in all three); accuracies are those of random "
                            "features, not ImageNet ones",
            "data": f"synthetic ExpW ({setup.faces} faces, seed {DATA_SEED}) made by "
                    "trainer.generate_synthetic_expw; one split (70/10/20, grouped) for all",
        },
        "results": results,
        "comparisons": comparisons,
        "goals": goals,
        "benchmark_seconds": total,
    }


def _agreement(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Grid point by grid point: does the peer's final val accuracy equal ours? (Same base, same
    seeded head and shuffling: they should, up to float rounding of the features.)"""

    def key(params: dict[str, Any]) -> str:
        return json.dumps({k: params[k] for k in sorted(params)})

    theirs = {key(t["params"]): t["val_accuracy"] for t in peer.get("per_trial", [])}
    diffs = [abs(t["val_accuracy"] - theirs[key(t["params"])])
             for t in ours.get("per_trial", []) if key(t["params"]) in theirs]
    return {
        "points_compared": len(diffs),
        "points_with_equal_val_accuracy": sum(d < 1e-6 for d in diffs),
        "max_point_val_accuracy_diff_points": 100 * max(diffs) if diffs else None,
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.0"
    return str(value)


def _markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    res, cmp_ = report["results"], report["comparisons"]
    rows = []
    for name, r in res.items():
        c = cmp_.get(name, {})
        rows.append([
            name,
            "ok" if r.get("ok") else "FAILED",
            _fmt(r.get("wall_seconds")),
            _fmt(r.get("process_seconds", r.get("wall_seconds"))),
            _fmt(r.get("trials_per_hour"), 0),
            _fmt(r.get("best_val_accuracy"), 4),
            _fmt(r.get("epochs_trained") if r.get("epochs_trained") is not None
                 else r.get("epochs_run")),
            "1.0" if name == "fer-search" else _fmt(c.get("wall_ratio_peer_over_ours")),
            "0.0" if name == "fer-search" else _fmt(c.get("val_accuracy_points_ours_minus_peer")),
            "-" if name == "fer-search" else
            f"{c.get('points_with_equal_val_accuracy', '-')}/{c.get('points_compared', '-')}",
        ])
    main_table = benchlib.table(
        ["contender", "status", "wall s (timed)", "process s", "trials/hour",
         "best val_accuracy", "epochs trained", "wall ratio peer/ours", "acc. points ours-peer",
         "grid points with equal val_accuracy"],
        rows,
    )
    ours = res.get("fer-search", {})
    extra = ""
    if ours.get("overhead"):
        o, ph = ours["overhead"], ours["phases_s"]
        extra = (
            "\nfer-search, inside its run (from Optuna trial times and the MLflow runs):\n\n"
            + benchlib.table(
                ["what", "value"],
                [
                    ["per-trial orchestration overhead, median share of trial wall time",
                     f"{100 * o['share_median']:.1f}% ({o['seconds_median']:.2f} s)"],
                    ["per-trial orchestration overhead, p95 share of trial wall time",
                     f"{100 * o['share_p95']:.1f}% ({o['seconds_p95']:.2f} s)"],
                    ["overhead, share of all trial time",
                     f"{100 * o['share_of_all_trial_time']:.1f}%"],
                    ["head-training epochs reported (sum of epochs_run)", ours["epochs_run"]],
                    ["head-training epochs computed (sum of epochs_trained)",
                     _fmt(ours.get("epochs_trained"))],
                    ["one-time feature extraction (s)", _fmt(ours["feature_seconds"])],
                    ["start-up: process start -> first trial claimed (s)", _fmt(ph["startup"])],
                    ["trials: time covered by trials (s)", _fmt(ph["trials"])],
                    ["between trials (s)", _fmt(ph["between_trials"])],
                    ["tail: last trial closed -> exit (s)", _fmt(ph["tail"])],
                    ["peak RSS (MiB)", _fmt(ours.get("peak_rss_mib"), 0)],
                ],
            )
            + f"\n\nTrial wall time = Optuna claim -> MLflow run closed; time inside the trainer = "
            f"the `{ours.get('trainer_time_metric')}` metric"
            + (" (it also covers creating the trial's MLflow run, so the overhead is a lower "
               "bound)" if ours.get("trainer_time_metric") == "duration_s" else "")
            + ".\n"
        )
    kt = res.get("keras-tuner", {})
    if ours.get("phases_s") and kt.get("ok"):
        budget = kt["wall_seconds"] / 40
        fixed = ours["phases_s"]["startup"] + ours["feature_seconds"]
        extra += (
            f"\nFor 40x less wall time than keras-tuner, this whole run would have to take "
            f"{budget:.1f} s; its start-up ({ours['phases_s']['startup']:.1f} s: imports, the "
            f"stores, the data) and the one-time feature extraction "
            f"({ours['feature_seconds']:.1f} s) took {fixed:.1f} s of it.\n"
        )
    goals = report.get("goals") or {}
    goal_lines = "".join(f"- {k}: {'met' if v else 'NOT met'}\n" for k, v in goals.items())
    if not goals:
        goal_lines = "- not evaluated: the goals are about the full-size run\n"
    return (
        f"# fer-search vs keras-tuner vs naive Optuna vs cached-keras ({s['label']} size)\n\n"
        f"Grid {s['grid_shape']} = {s['grid_size']} trials over learning_rate "
        f"{s['grid']['learning_rate']}, "
        f"batch_size {s['grid']['batch_size']}, epochs {s['grid']['epochs']}, head_width "
        f"{s['grid']['head_width']}; {s['data']}; splits {s['split_sizes']}; "
        f"{s['image_size']} px.\n\nModel: {s['model']}. Note: {s['weights_note']}.\n\n"
        + main_table
        + "\n\n\"wall s (timed)\": fer-search is timed as the whole `fer-search run` command "
        "(process start-up, TensorFlow import, MLflow/Optuna database creation, cropping, the "
        "one-time feature extraction, all trials with MLflow logging, exit); the peers only "
        "around `tuner.search` / `study.optimize` (their start-up and data loading are left out, "
        "in their favour). \"process s\" is each whole subprocess. Best val_accuracy: the best "
        "trial's accuracy after its last epoch"
        + (f" (keras-tuner's own best-epoch objective: "
           f"{_fmt(res['keras-tuner'].get('kt_objective_best'), 4)})"
           if res.get("keras-tuner", {}).get("ok") else "")
        + ".\n"
        + extra
        + ("\nGoals (issues 4 and 11):\n\n" + goal_lines if goal_lines else "")
        + "\n" + benchlib.provenance_markdown(report)
        + f"- benchmark total: {report['benchmark_seconds']:.0f} s\n"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
