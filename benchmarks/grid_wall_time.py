"""The quickstart-shaped grid at real size, this commit against an older one, in one run.

    .venv/bin/python benchmarks/grid_wall_time.py [--old COMMIT] [--faces N] [--image-size S]

Both contenders run `fer-search run` on the same 24-point grid (3 learning rates x 2 batch sizes
x 2 epoch counts x 2 head widths, the quickstart's space), on the same synthetic ExpW folder
(generated once), each with a fresh Optuna store, MLflow store and crop + feature cache, timed
as whole commands (process start to exit, feature extraction included). The old commit's source
is exported with `git archive` and run from the same virtual environment (PYTHONPATH), so only
the code differs. Then warm starts, for each contender on its own warm project (data, crops and
features cached, MLflow store existing): a new study with `--n-trials 1`, timed from process
start to the first trial's start and to its end, as Optuna recorded them, in two cases:

- `trains`: a training seed the grid never used, so the first trial trains its head (on cached
  features);
- `answered`: the grid's own settings, so a trial can be answered from its epoch record (the
  old code has no records and trains).

`--precision mixed_bfloat16` adds a third grid: this commit with that `precision` (the feature
extraction's conv layers in bfloat16; float32 stays the default).

`--warm-only` skips the grids and measures warm starts on the projects an earlier run left.

The floor (benchmarks/floor.py), in the same run: VGG16's FLOPs over every face at the study's
image size, plus each distinct head's training (the grid's points equal but for `epochs` are one
head, trained to the largest count: forward and backward over the train split each epoch, and
the validation split scored), all counted from the Keras models' Conv2D and Dense shapes, at the
float32 numpy matmul rate measured before, between and after the grids (the best counts: the
machine is shared, and the floor is what it can do). Each grid's wall time is reported as a
multiple of that floor. The issue's goal: this commit's float32 grid at most 1.25x its floor.

Writes results/grid_wall_time.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import floor  # noqa: E402  (a sibling module, like benchlib)

DEFAULT_OLD = "d871a87"  # the last commit before group training and the head engine
GOAL_OVER_FLOOR = 1.25
MATMUL_REPEATS = 5
SPACE = {
    "learning_rate": [3.0e-4, 1.0e-3, 3.0e-3],
    "batch_size": [32, 64],
    "epochs": [10, 30],
    "head_width": [64, 256],
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work, prov, data_root = benchlib.prepare(args.work, args.faces)
    old_src = benchlib.export_source(args.old, work / f"src-{args.old}")
    contenders = {f"old ({args.old})": old_src, "this commit": benchlib.REPO}
    results: dict[str, dict] = {}
    folders = {name: work / ("old" if src is old_src else "new")
               for name, src in contenders.items()}
    matmul: list[float] = []
    if not args.warm_only:
        for folder in (*folders.values(), work / str(args.precision)):
            shutil.rmtree(folder, ignore_errors=True)  # fresh stores and caches
        for name, src in contenders.items():
            matmul += floor.matmul_seconds(repeats=MATMUL_REPEATS)
            results[name] = _run(src, folders[name], data_root, args, "grid")
            print(f"{name}: {results[name]['wall_s']:.1f} s", flush=True)
        matmul += floor.matmul_seconds(repeats=MATMUL_REPEATS)
        if args.precision:
            name = f"this commit, precision: {args.precision}"
            results[name] = _run(benchlib.REPO, work / args.precision, data_root, args, "grid",
                                 precision=args.precision)
            print(f"{name}: {results[name]['wall_s']:.1f} s", flush=True)
    warm = {}
    for case, seed in (("trains", 1), ("answered", 0)):
        for name, src in contenders.items():
            r = _run(src, folders[name], data_root, args, f"warm-{case}-{time.time_ns()}",
                     ("--n-trials", "1"), seed=seed)
            warm[f"{name}, {case}"] = r
            print(f"warm start, {name}, {case}: first trial starts at "
                  f"{r['to_first_trial_s']:.2f} s, ends at {r['to_first_trial_end_s']:.2f} s",
                  flush=True)
    prov["load_average_at_end"] = benchlib.load_average()
    if args.warm_only:
        print(_warm_table(warm))
        return 0
    matmul += floor.matmul_seconds(repeats=MATMUL_REPEATS)
    old_s = results[f"old ({args.old})"]["wall_s"]
    new_s = results["this commit"]["wall_s"]
    splits = _split_sizes(folders["this commit"], "grid") or {
        "train": round(args.faces * 0.7), "val": round(args.faces * 0.1)}
    the_floor = _floor(args.faces, args.image_size, splits, floor.matmul_rate(matmul))
    for r in results.values():
        r["over_floor"] = r["wall_s"] / the_floor["floor_s"]
    new_over_floor = new_s / the_floor["floor_s"]
    report = {
        "provenance": prov,
        "setup": {"faces": args.faces, "image_size": args.image_size, "space": SPACE,
                  "weights": "none", "old_commit": args.old},
        "results": results,
        "new_over_old": new_s / old_s,
        "floor": the_floor,
        "new_over_floor": new_over_floor,
        "goal_over_floor": GOAL_OVER_FLOOR,
        "goal_met": new_over_floor <= GOAL_OVER_FLOOR,
        "warm_start": warm,
    }
    rows = [[name, f"{r['wall_s']:.1f}", f"{r['wall_s'] / old_s:.3f}",
             f"{r['over_floor']:.2f}", _seconds(r["feature_s"]),
             _seconds(r["wall_s"] - r["feature_s"] if r["feature_s"] is not None else None),
             r["complete"], f"{r['best']:.4f}"] for name, r in results.items()]
    markdown = (
        "# The quickstart grid at real size: this commit vs the old one\n\n"
        f"24-point grid (the quickstart's space), {args.faces} synthetic faces "
        f"(70% train), {args.image_size} px, frozen VGG16 (`weights: none`), each contender "
        "with fresh stores and caches, timed as the whole `fer-search run` command.\n\n"
        + benchlib.table(["code", "wall s", "/ old", "/ floor", "feature extraction s",
                          "the rest s", "complete trials", "best val_accuracy"], rows)
        + f"\n\nnew / old wall time: **{new_s / old_s:.3f}** ({old_s / new_s:.2f}x faster)\n\n"
        + _floor_markdown(the_floor, results["this commit"], new_over_floor) + "\n\n"
        "Feature extraction: VGG16's one-time pass over every face, as the trials logged it "
        "(`feature_seconds`); both codes pay it, in float32 at this machine's matmul rate. "
        "The rest: start-up, head training, logging and the report.\n\n"
        "Warm starts (data, crops, features and MLflow store present; a new study, "
        "`--n-trials 1`; seconds from process start, as Optuna recorded the trial):\n\n"
        + _warm_table(warm) + "\n\n"
        + benchlib.provenance_markdown(prov)
    )
    for path in benchlib.write_results(args.out, args.name, report, markdown):
        print(f"wrote {path}")
    return 0


def _floor(faces: int, image_size: int, splits: dict[str, int], rate: dict) -> dict:
    """The grid's floor: FLOPs of VGG16 over every face and of each distinct head's training,
    at the best measured matmul rate. The layer shapes come from the trainer's own models, in a
    process of their own (this one stays free of TensorFlow)."""
    widths = SPACE["head_width"]
    shapes = network_shapes_apart(image_size, widths)
    per_face = floor.forward_flops(shapes["base"])
    others = [values for key, values in SPACE.items() if key not in ("epochs", "head_width")]
    per_width = len(list(itertools.product(*others)))  # heads of one width: lr x batch size
    epochs = max(SPACE["epochs"])
    head_flops = {w: epochs * floor.head_epoch_flops(shapes["heads"][str(w)], splits["train"],
                                                     splits["val"]) for w in widths}
    features = faces * per_face
    heads = per_width * sum(head_flops.values())
    flops_per_s = rate["gflops_best"] * 1e9
    return {
        "vgg16_flop_per_face": per_face,
        "feature_flop": features,
        "heads": per_width * len(widths),
        "head_epochs": epochs,
        "split_sizes": splits,
        "head_flop_by_width": head_flops,
        "head_flop": heads,
        "total_flop": features + heads,
        "matmul": {"n": floor.MATMUL_N, **rate},
        "feature_floor_s": features / flops_per_s,
        "head_floor_s": heads / flops_per_s,
        "floor_s": (features + heads) / flops_per_s,
        "shapes": shapes,
    }


def network_shapes_apart(image_size: int, widths: list[int]) -> dict:
    """`floor.network_shapes` computed in a process of its own, so that the calling benchmark
    stays free of TensorFlow; the JSON keys of the heads are the widths as text."""
    code = ("import json, sys; from benchmarks.floor import network_shapes; "
            "print(json.dumps(network_shapes(int(sys.argv[1]), json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(image_size), json.dumps(widths)],
                         check=True, capture_output=True, text=True,
                         env=benchlib.source_env(benchlib.REPO), cwd=benchlib.REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def _floor_markdown(f: dict, new: dict, over: float) -> str:
    met = "met" if over <= GOAL_OVER_FLOOR else "**not met**"
    rest = new["wall_s"] - new["feature_s"] if new["feature_s"] is not None else None
    rows = [
        ["VGG16 over every face", f"{f['vgg16_flop_per_face'] / 1e9:.3f} GFLOP/face x "
         f"{f['feature_flop'] / f['vgg16_flop_per_face']:.0f} faces",
         f"{f['feature_flop'] / 1e12:.2f}", f"{f['feature_floor_s']:.1f}",
         _seconds(new["feature_s"]),
         f"{new['feature_s'] / f['feature_floor_s']:.2f}" if new["feature_s"] else "-"],
        ["heads", f"{f['heads']} heads x {f['head_epochs']} epochs over "
         f"{f['split_sizes']['train']} train + {f['split_sizes']['val']} val faces",
         f"{f['head_flop'] / 1e12:.3f}", f"{f['head_floor_s']:.1f}",
         _seconds(rest) + " (the rest)", "-"],
        ["the grid", "", f"{f['total_flop'] / 1e12:.2f}", f"{f['floor_s']:.1f}",
         f"{new['wall_s']:.1f}", f"**{over:.2f}**"],
    ]
    return (
        "## This commit against the machine's floor\n\n"
        f"numpy float32 matmul ({f['matmul']['n']}^3, FLOPs = 2*n^3), measured before, between "
        f"and after the grids: best {f['matmul']['gflops_best']:.0f} GFLOP/s, median "
        f"{f['matmul']['gflops_median']:.0f} GFLOP/s ({f['matmul']['runs']} runs); the floor "
        "uses the best. FLOPs from the trainer's Keras models' Conv2D and Dense shapes "
        "(`benchmarks/floor.py`); a head's training step counts forward, weight gradients and "
        "the input gradient of its second layer; the validation split is scored every epoch.\n\n"
        + benchlib.table(["work", "what", "TFLOP", "floor s", "this commit s", "/ floor"], rows)
        + f"\n\nThis commit's grid: **{over:.2f}x** its floor; goal <= {GOAL_OVER_FLOOR}x: "
        f"{met}. The mixed_bfloat16 row's `/ floor` is against the same float32 floor."
    )


def _split_sizes(folder: Path, name: str) -> dict[str, int] | None:
    """Train and val faces as the study's runs logged them (the dataset input's profile)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    for run in client.search_runs([experiment.experiment_id], max_results=50):
        for found in run.inputs.dataset_inputs:
            sizes = json.loads(found.dataset.profile or "{}").get("split_sizes")
            if sizes:
                return {k: int(v) for k, v in sizes.items()}
    return None


def _answered(folder: Path, run_id: str | None) -> str:
    """The trial run's `answered_from_record` tag; "-" where the code sets none (older code)."""
    if run_id is None:
        return "-"
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client.get_run(run_id).data.tags.get("answered_from_record", "-")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _warm_table(warm: dict) -> str:
    rows = [[name, f"{r['to_first_trial_s']:.2f}", f"{r['to_first_trial_end_s']:.2f}",
             r["first_trial_from_record"]] for name, r in warm.items()]
    return benchlib.table(["code, case", "first trial starts", "first trial ends",
                           "answered from record"], rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="the commit to compare against")
    p.add_argument("--faces", type=int, default=5800, help="faces in all (70%% train)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "grid-wall-time")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--name", default="grid_wall_time")
    p.add_argument("--precision", choices=("mixed_bfloat16", "mixed_float16"),
                   help="also run this commit's grid with this precision")
    p.add_argument("--warm-only", action="store_true",
                   help="only the warm starts, on the projects an earlier run left")
    return p


def _spec(folder: Path, data_root: Path, image_size: int, name: str, seed: int = 0,
          precision: str | None = None) -> Path:
    space = "\n".join(f"  {k}: {v}" for k, v in SPACE.items())
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nsampler: grid\nseed: 0\nspace:\n{space}\n"
        f"train:\n  image_size: {image_size}\n  weights: none\n  trainable_blocks: 0\n"
        f"  dropout: 0.3\n  seed: {seed}\n"
        + (f"  precision: {precision}\n" if precision else "")
        +
        f"data:\n  root: {data_root}\n  cache_dir: {folder / '.cache'}\n"
        f"storage: sqlite:///{folder / 'optuna.db'}\n"
        f"tracking_uri: sqlite:///{folder / 'mlflow.db'}\n"
    )
    return spec


def _run(src: Path, folder: Path, data_root: Path, args, name: str,
         extra: tuple[str, ...] = (), seed: int = 0, precision: str | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    spec = _spec(folder, data_root, args.image_size, name, seed, precision)
    log = folder / f"{name}.log"
    started = time.time()
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(spec), *extra],
                              cwd=folder, env=benchlib.source_env(src), stdout=out,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{src}: fer-search run exited {proc.returncode}; see {log}")
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    first = min((t for t in study.trials if t.datetime_start), key=lambda t: t.datetime_start)
    return {
        "wall_s": wall,
        "complete": len(complete),
        "best": max(t.value for t in complete),
        "to_first_trial_s": first.datetime_start.astimezone(dt.UTC).timestamp() - started,
        "to_first_trial_end_s": first.datetime_complete.astimezone(dt.UTC).timestamp() - started,
        "first_trial_from_record": _answered(folder, first.user_attrs.get("mlflow_run_id")),
        "feature_s": benchlib.feature_seconds(folder, name),
        "log": str(log),
    }


if __name__ == "__main__":
    raise SystemExit(main())
