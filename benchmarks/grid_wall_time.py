"""The quickstart-shaped grid at real size, this commit against an older one, in one run.

    .venv/bin/python benchmarks/grid_wall_time.py [--old COMMIT] [--faces N] [--image-size S]

Both contenders run `fer-search run` on the same 24-point grid (3 learning rates x 2 batch sizes
x 2 epoch counts x 2 head widths, the quickstart's space), on the same synthetic ExpW folder
(generated once), each with a fresh Optuna store, MLflow store and crop + feature cache, timed
as whole commands (process start to exit, feature extraction included). The old commit's source
is exported with `git archive` and run from the same virtual environment (PYTHONPATH), so only
the code differs. Then a warm start: a new study on this commit's warm project (data, crops and
features cached, MLflow store existing) with `--n-trials 1`, timed from process start to the
first trial's start as Optuna recorded it.

Writes results/grid_wall_time.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

DEFAULT_OLD = "d871a87"  # the last commit before group training and the head engine
SPACE = {
    "learning_rate": [3.0e-4, 1.0e-3, 3.0e-3],
    "batch_size": [32, 64],
    "epochs": [10, 30],
    "head_width": [64, 256],
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    prov = benchlib.provenance()
    data_root = work / "data" / f"synthetic-{args.faces}-0"
    _generate(data_root, args.faces)
    old_src = _export(args.old, work / f"src-{args.old}")
    contenders = {f"old ({args.old})": old_src, "this commit": benchlib.REPO}
    results: dict[str, dict] = {}
    for name, src in contenders.items():
        folder = work / ("old" if src is old_src else "new")
        results[name] = _run(src, folder, data_root, args, "grid")
        print(f"{name}: {results[name]['wall_s']:.1f} s", flush=True)
    warm = _warm_start(benchlib.REPO, work / "new", data_root, args)
    print(f"warm start to first trial: {warm['to_first_trial_s']:.2f} s", flush=True)
    prov["load_average_at_end"] = benchlib.load_average()
    old_s = results[f"old ({args.old})"]["wall_s"]
    new_s = results["this commit"]["wall_s"]
    report = {
        "provenance": prov,
        "setup": {"faces": args.faces, "image_size": args.image_size, "space": SPACE,
                  "weights": "none", "old_commit": args.old},
        "results": results,
        "new_over_old": new_s / old_s,
        "warm_start": warm,
    }
    rows = [[name, f"{r['wall_s']:.1f}", r["complete"], f"{r['best']:.4f}"]
            for name, r in results.items()]
    markdown = (
        "# The quickstart grid at real size: this commit vs the old one\n\n"
        f"24-point grid (the quickstart's space), {args.faces} synthetic faces "
        f"(70% train), {args.image_size} px, frozen VGG16 (`weights: none`), each contender "
        "with fresh stores and caches, timed as the whole `fer-search run` command.\n\n"
        + benchlib.table(["code", "wall s", "complete trials", "best val_accuracy"], rows)
        + f"\n\nnew / old wall time: **{new_s / old_s:.3f}** ({old_s / new_s:.2f}x faster)\n\n"
        f"Warm start (data, crops, features and MLflow store present; a new study, "
        f"`--n-trials 1`): process start to the first trial's start "
        f"**{warm['to_first_trial_s']:.2f} s**.\n\n"
        + benchlib.provenance_markdown(prov)
    )
    for path in benchlib.write_results(args.out, args.name, report, markdown):
        print(f"wrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="the commit to compare against")
    p.add_argument("--faces", type=int, default=5800, help="faces in all (70%% train)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "grid-wall-time")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--name", default="grid_wall_time")
    return p


def _generate(root: Path, faces: int) -> None:
    if (root / "label.lst").exists():
        return
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from trainer.synthetic import generate_synthetic_expw as g; "
         "g(sys.argv[1], int(sys.argv[2]), 0)", str(root), str(faces)],
        check=True, env=_env(benchlib.REPO),
    )


def _export(commit: str, dest: Path) -> Path:
    if not (dest / "search").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "search", "trainer"],
                                 cwd=benchlib.REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _spec(folder: Path, data_root: Path, image_size: int, name: str) -> Path:
    space = "\n".join(f"  {k}: {v}" for k, v in SPACE.items())
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nsampler: grid\nseed: 0\nspace:\n{space}\n"
        f"train:\n  image_size: {image_size}\n  weights: none\n  trainable_blocks: 0\n"
        f"  dropout: 0.3\n  seed: 0\n"
        f"data:\n  root: {data_root}\n  cache_dir: {folder / '.cache'}\n"
        f"storage: sqlite:///{folder / 'optuna.db'}\n"
        f"tracking_uri: sqlite:///{folder / 'mlflow.db'}\n"
    )
    return spec


def _run(src: Path, folder: Path, data_root: Path, args, name: str,
         extra: tuple[str, ...] = ()) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    spec = _spec(folder, data_root, args.image_size, name)
    log = folder / f"{name}.log"
    started = time.time()
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(spec), *extra],
                              cwd=folder, env=_env(src), stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{src}: fer-search run exited {proc.returncode}; see {log}")
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    first_start = min(t.datetime_start for t in study.trials if t.datetime_start)
    return {
        "wall_s": wall,
        "complete": len(complete),
        "best": max(t.value for t in complete),
        "to_first_trial_s": first_start.astimezone(dt.UTC).timestamp() - started,
        "log": str(log),
    }


def _warm_start(src: Path, folder: Path, data_root: Path, args) -> dict:
    """A new study on a warm project: what a user waits for before the first trial starts."""
    return _run(src, folder, data_root, args, "warm", ("--n-trials", "1"))


if __name__ == "__main__":
    raise SystemExit(main())
