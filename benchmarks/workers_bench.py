"""Trials per hour with 1, 2 and 4 `fer-search worker` processes on one PostgreSQL study.

The distributed topology of docker-compose.yml, run natively on this machine in one run: a
throwaway PostgreSQL cluster (initdb + pg_ctl on 127.0.0.1), a real `mlflow server` backed by it,
and N workers (each with cores // N TensorFlow threads, as `run --workers N` gives them) running
the same grid as a fresh study. The crop and feature caches are built once beforehand, so every
configuration measures trials, not the one-off feature extraction; the epoch records (trainings
shared along the epochs axis) are cleared before each, so every trial trains.

Two rates per configuration:
- steady: trials / (last trial's end - first trial's start), from Optuna's timestamps;
- end to end: trials / wall time from starting the workers to the last one exiting (each worker
  pays its own start-up: TensorFlow, MLflow, the dataset).

    .venv/bin/python benchmarks/workers_bench.py            # writes results/workers.{md,json}
    .venv/bin/python benchmarks/workers_bench.py --quick    # a smoke run, results not written
    .venv/bin/python benchmarks/workers_bench.py --epochs 40 --name workers-epochs-40
                                                            # longer trials: a longer busy span
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import benchlib, pgcluster  # noqa: E402

WORKERS = (1, 2, 4)


def spec(name: str, quick: bool, epochs: int = 10) -> dict[str, Any]:
    """The quickstart's shape: 1,400 synthetic faces at 48 px, a frozen random VGG16, a 16-point
    grid of `epochs`-epoch trials (epochs fixed, so no trial is answered from another's
    epochs)."""
    return {
        "name": name,
        "sampler": "grid",
        "seed": 0,
        "metric": "val_accuracy",
        "pruner": "none",
        "space": {
            "learning_rate": [1.0e-3, 3.0e-3] if quick else [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2],
            "batch_size": [32] if quick else [32, 64],
            "epochs": [2 if quick else epochs],
            "head_width": [64] if quick else [64, 256],
        },
        "train": {"image_size": 48, "weights": "none", "dropout": 0.3, "seed": 0},
        "data": {"synthetic": {"faces": 280 if quick else 1400, "seed": 0}, "cache_dir": ".cache"},
    }


def write_spec(folder: Path, name: str, quick: bool, epochs: int = 10) -> Path:
    path = folder / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec(name, quick, epochs), sort_keys=False))
    return path


def worker_env(cluster: pgcluster.PgCluster, server: pgcluster.MlflowServer) -> dict[str, str]:
    return {**os.environ, "FER_SEARCH_STORAGE": cluster.url(),
            "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1"}


def run_workers(folder: Path, spec_path: Path, workers: int, env: dict[str, str],
                extra: tuple[str, ...] = ()) -> float:
    """Runs `workers` worker processes to the end; returns the wall seconds."""
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    start = time.perf_counter()
    processes = []
    for i in range(workers):
        log = open(folder / f"{spec_path.stem}-worker-{i + 1}.log", "wb")  # noqa: SIM115
        processes.append((subprocess.Popen(
            [sys.executable, "-m", "search.cli", "worker", str(spec_path), "--threads",
             str(threads), *extra], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL), log))
    for process, log in processes:
        code = process.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"a worker failed (exit {code}); see {log.name}")
    return time.perf_counter() - start


def measure(cluster, spec_path: Path) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from search.storage.sessions import storage_session

    with storage_session(cluster.url(), read_only=True) as storage:
        study = optuna.load_study(study_name=spec_path.stem, storage=storage)
        trials = study.get_trials(states=(TrialState.COMPLETE,))
    starts = [t.datetime_start for t in trials]
    ends = [t.datetime_complete for t in trials]
    span = (max(ends) - min(starts)).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    return {"trials": len(trials), "span_s": round(span, 1),
            "mean_trial_s": round(sum(durations) / len(durations), 2),
            "steady_trials_per_hour": round(len(trials) / span * 3600, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid; no results written")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every trial")
    parser.add_argument("--name", default="workers", help="stem of the result files")
    args = parser.parse_args()
    prov = benchlib.provenance()
    folder = benchlib.WORK_DIR / ("workers-quick" if args.quick else "workers")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = []
    with pgcluster.topology(folder) as (cluster, server):
        env = worker_env(cluster, server)
        # Caches (synthetic faces, crops, features) built once, outside the measurements.
        warm = write_spec(folder, "warm-up", args.quick)
        run_workers(folder, warm, 1, env, ("--n-trials", "1"))
        for workers in WORKERS:
            # Trials that differ only in epochs share trainings through the cache's epoch
            # records; a record left by an earlier configuration would answer this one's trials
            # without training. Crops and features stay.
            shutil.rmtree(folder / ".cache" / "epochs", ignore_errors=True)
            spec_path = write_spec(folder, f"grid-{workers}w", args.quick, args.epochs)
            wall = run_workers(folder, spec_path, workers, env)
            row = {"workers": workers,
                   "threads_per_worker": max(1, len(os.sched_getaffinity(0)) // workers),
                   **measure(cluster, spec_path), "wall_s": round(wall, 1)}
            row["end_to_end_trials_per_hour"] = round(row["trials"] / wall * 3600, 1)
            rows.append(row)
            print(row, flush=True)
    prov["load_average_at_end"] = benchlib.load_average()
    if args.quick:
        return
    base = rows[0]["steady_trials_per_hour"]
    markdown = "\n\n".join([
        "# Trials per hour with 1, 2 and 4 workers on PostgreSQL",
        "One study per configuration, the same 16-point grid (1,400 synthetic faces at 48 px, "
        f"frozen random VGG16, {args.epochs} epochs, features cached beforehand), "
        "`fer-search worker` "
        "processes sharing a throwaway PostgreSQL cluster and an `mlflow server` on this "
        "machine; each worker gets cores // N TensorFlow threads.",
        benchlib.table(
            ["workers", "threads each", "trials", "mean trial (s)", "steady trials/h",
             "vs 1 worker", "wall (s)", "end-to-end trials/h"],
            [[r["workers"], r["threads_per_worker"], r["trials"], r["mean_trial_s"],
              r["steady_trials_per_hour"], f"{r['steady_trials_per_hour'] / base:.2f}x",
              r["wall_s"], r["end_to_end_trials_per_hour"]] for r in rows]),
        "Steady: trials / (last end - first start) from Optuna's timestamps. End to end: "
        "trials / wall time from starting the workers to the last exit (start-up included). "
        "A worker trains a grid group's heads together on the head engine, which keeps both "
        "cores of this machine busy, so extra workers add little. The machine may be shared: "
        "read the rates with the load averages below.",
        benchlib.provenance_markdown(prov),
    ])
    paths = benchlib.write_results(benchlib.RESULTS_DIR, args.name,
                                   {"provenance": prov, "rows": rows}, markdown)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
