"""A random study shaped like studies/expw-random.yaml: batched asks vs one at a time, in one run.

    .venv/bin/python benchmarks/random_batched.py [--old COMMIT] [--faces N] [--trials N]
        [--rounds R] [--reuse-warm-up]

Three contenders run `fer-search run` on the same 32-trial random study (the space of
studies/expw-random.yaml: learning_rate, batch_size, epochs, head_width and dropout; seed 0, no
pruner, val_macro_f1, class_weight balanced) on the same synthetic ExpW folder at 64 px with
`weights: none`:

- `old`: the commit before batched asks (default ec23929), exported with `git archive` and run
  from the same virtual environment (PYTHONPATH), one trial at a time;
- `one at a time`: this commit with FER_SEARCH_ASK_BATCH=1;
- `batched`: this commit with its default FER_SEARCH_ASK_BATCH;
- `batched by K`, for each `--also-batch K`: this commit with FER_SEARCH_ASK_BATCH=K.

Each contender has fresh Optuna and MLflow stores and its own cache, into which the crops and
VGG16 features of a warm-up run are copied first (never its epoch records): so every contender
starts with its features cached, and the one-time extraction, which all would pay, is timed
apart (the warm-up's `feature_seconds`). Timed as whole commands, process start to exit.

A random sampler draws the same configurations one at a time and batched (same seed), and a
head trains to the same numbers in a group as alone, so all three should report the same value
for every trial; the results say whether they do.

Writes results/random_batched.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import floor  # noqa: E402
from grid_wall_time import MATMUL_REPEATS, _split_sizes, network_shapes_apart  # noqa: E402

# Each contender says its own FER_SEARCH_ASK_BATCH; none inherits this shell's.
ASK_BATCH_UNSET = ("FER_SEARCH_ASK_BATCH",)
DEFAULT_OLD = "ec23929"  # the last commit before batched asks and dropout free in a group
SPACE = """\
  learning_rate: {low: 1.0e-5, high: 1.0e-2, log: true}
  batch_size: {choices: [16, 32, 64, 128]}
  epochs: {low: 5, high: 20}
  head_width: {low: 64, high: 1024, log: true}
  dropout: {low: 0.0, high: 0.6}
"""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work, prov, data_root = benchlib.prepare(args.work, args.faces)
    old_src = benchlib.export_source(args.old, work / f"src-{args.old}")

    warm = work / "warm-up"
    warm_up = warm_up_run(work, data_root, args)

    contenders = {
        f"old ({args.old})": (old_src, {}),
        "one at a time": (benchlib.REPO, {"FER_SEARCH_ASK_BATCH": "1"}),
        "batched": (benchlib.REPO, {}),
        **{f"batched by {k}": (benchlib.REPO, {"FER_SEARCH_ASK_BATCH": str(k)})
           for k in args.also_batch},
    }
    # Rounds in turns, every other one reversed (A B C, C B A, ...): on a shared machine whose
    # load drifts, no contender always runs first or last. Wall time: the mean over rounds.
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    order = list(contenders)
    matmul: list[float] = []
    for round_ in range(args.rounds):
        matmul += floor.matmul_seconds(repeats=MATMUL_REPEATS)
        for name in order if round_ % 2 == 0 else order[::-1]:
            src, env = contenders[name]
            folder = work / f"contender-{order.index(name)}-round-{round_}"
            shutil.rmtree(folder, ignore_errors=True)
            for part in ("crops", "features"):
                shutil.copytree(warm / ".cache" / part, folder / ".cache" / part)
            runs[name].append(_run(src, folder, data_root, args, "random", args.trials, env))
            print(f"round {round_ + 1}, {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    matmul += floor.matmul_seconds(repeats=MATMUL_REPEATS)
    prov["load_average_at_end"] = benchlib.load_average()
    results = {name: {**found[0], "wall_s": sum(r["wall_s"] for r in found) / len(found),
                      "wall_s_by_round": [r["wall_s"] for r in found],
                      "same_in_every_round": all(r["values"] == found[0]["values"]
                                                 for r in found)}
               for name, found in runs.items()}

    old_name = f"old ({args.old})"
    base = results["one at a time"]
    old_s = results[old_name]["wall_s"]
    for r in results.values():
        r["same_params_as_one_at_a_time"] = r["params"] == base["params"]
        r["same_values_as_one_at_a_time"] = r["values"] == base["values"] and \
            r["same_in_every_round"]
    report = {
        "provenance": prov,
        "setup": {"faces": args.faces, "image_size": args.image_size, "trials": args.trials,
                  "rounds": args.rounds,
                  "space": SPACE, "weights": "none", "old_commit": args.old,
                  "ask_batch_default": _default_batch()},
        "warm_up": warm_up,
        "results": results,
        "batched_over_old": results["batched"]["wall_s"] / old_s,
        "batched_over_one_at_a_time": results["batched"]["wall_s"] / base["wall_s"],
        "heads_floor": heads_floor(base["params"], _splits(work, args), args.image_size,
                                   floor.matmul_rate(matmul)),
    }
    rows = [[name, f"{r['wall_s']:.1f}",
             " / ".join(f"{w:.1f}" for w in r["wall_s_by_round"]), f"{r['wall_s'] / old_s:.3f}",
             f"{r['wall_s'] / base['wall_s']:.3f}", r["complete"], f"{r['best']:.4f}",
             "yes" if r["same_params_as_one_at_a_time"] else "no",
             "yes" if r["same_values_as_one_at_a_time"] else "no"]
            for name, r in results.items()]
    markdown = (
        "# A random study, batched asks vs one at a time\n\n"
        f"{args.trials} trials of a random study shaped like studies/expw-random.yaml (no "
        f"pruner), {args.faces} synthetic faces (70% train), {args.image_size} px, frozen "
        "VGG16 (`weights: none`), features cached for every contender (copied from one "
        "warm-up run), fresh Optuna and MLflow stores; timed as the whole `fer-search run` "
        f"command. Batched: FER_SEARCH_ASK_BATCH={_default_batch()} (the default). "
        f"{args.rounds} round(s) in turns, every other one in reverse order.\n\n"
        + benchlib.table(["code", "wall s (mean)", "by round", "/ old", "/ one at a time",
                          "complete trials",
                          "best val_macro_f1", "same configs", "same values"], rows)
        + f"\n\nbatched / old wall time: **{report['batched_over_old']:.3f}**; batched / one "
        f"at a time: **{report['batched_over_one_at_a_time']:.3f}**\n\n"
        f"The one-time feature extraction, paid once by the warm-up run (every contender "
        f"would pay it): {warm_up['feature_s']:.1f} s (warm-up run, 1 trial: "
        f"{warm_up['wall_s']:.1f} s"
        + (f"; an earlier warm-up's, reused: {warm_up.get('date', '')}" if warm_up.get("reused")
           else "") + ").\n\n"
        "Same configs / same values: each trial's params and final value equal those of the "
        "one-at-a-time run, trial by trial.\n\n"
        + _floor_markdown(report["heads_floor"], results["batched"]["wall_s"], old_s) + "\n\n"
        + benchlib.provenance_markdown(prov)
    )
    for path in benchlib.write_results(args.out, args.name, report, markdown):
        print(f"wrote {path}")
    return 0


def heads_floor(params: list[dict], splits: dict[str, int], image_size: int,
                rate: dict) -> dict:
    """The heads' share of the machine's floor (benchmarks/floor.py): every trial's head trained
    for its epochs over the train split and scoring the val split after each, in FLOPs, at the
    best matmul rate measured in this run. Start-up, logging and the report are not in it; the
    features are cached for every contender."""
    widths = sorted({int(p["head_width"]) for p in params})
    shapes = network_shapes_apart(image_size, widths)["heads"]
    flop = sum(int(p["epochs"]) * floor.head_epoch_flops(shapes[str(int(p["head_width"]))],
                                                         splits["train"], splits["val"])
               for p in params)
    return {"head_flop": flop, "head_epochs": sum(int(p["epochs"]) for p in params),
            "split_sizes": splits, "matmul": {"n": floor.MATMUL_N, **rate},
            "floor_s": flop / (rate["gflops_best"] * 1e9)}


def _splits(work: Path, args) -> dict[str, int]:
    found = _split_sizes(work / "warm-up", "warm-up")
    return found or {"train": round(args.faces * 0.7), "val": round(args.faces * 0.1)}


def _floor_markdown(f: dict, batched_s: float, old_s: float) -> str:
    goal = old_s / 2
    return (
        f"The heads' floor: every trial's head for its epochs ({f['head_epochs']} head-epochs "
        f"over {f['split_sizes']['train']} train faces, the {f['split_sizes']['val']} val "
        f"faces scored after each) is {f['head_flop'] / 1e12:.2f} TFLOP, "
        f"**{f['floor_s']:.1f} s** at this run's best numpy matmul rate "
        f"({f['matmul']['gflops_best']:.0f} GFLOP/s; benchmarks/floor.py). Batched: "
        f"{batched_s:.1f} s = that floor + {batched_s - f['floor_s']:.1f} s of everything else "
        f"(start-up and imports, the study's set-up, logging, the report, and kernels slower "
        f"than a large matmul). The goal, half the old code's time, is {goal:.1f} s: it "
        f"leaves {goal - f['floor_s']:.1f} s beside the heads' arithmetic.")


def warm_up_run(work: Path, data_root: Path, args) -> dict:
    """The run that extracts the features every contender copies (one trial, another training
    seed than the contenders': nothing of its epoch records could answer them, and they are
    not copied anyway). With --reuse-warm-up, an earlier one's cache and numbers are kept."""
    warm = work / "warm-up"
    saved = warm / "warm-up.json"
    if args.reuse_warm_up and saved.exists() and (warm / ".cache" / "features").exists():
        warm_up = {**json.loads(saved.read_text()), "reused": True}
        print(f"warm-up reused from {warm}", flush=True)
        return warm_up
    shutil.rmtree(warm, ignore_errors=True)
    warm_up = _run(benchlib.REPO, warm, data_root, args, "warm-up", 1, {}, seed=1)
    saved.write_text(json.dumps({**{k: v for k, v in warm_up.items()
                                    if k not in ("params", "values")},
                                 "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())}))
    print(f"warm-up (one-time extraction {warm_up['feature_s']:.1f} s): "
          f"{warm_up['wall_s']:.1f} s", flush=True)
    return warm_up


def _default_batch() -> int:
    sys.path.insert(0, str(benchlib.REPO))  # this checkout's search, not an installed one
    from search.study.ask_batch import DEFAULT_BATCH

    return DEFAULT_BATCH["random"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=DEFAULT_OLD, help="the commit to compare against")
    p.add_argument("--faces", type=int, default=5800, help="faces in all (70%% train)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="runs of each contender, in turns")
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "random-batched")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--name", default="random_batched")
    p.add_argument("--also-batch", type=int, nargs="*", default=[], metavar="K",
                   help="more contenders: this commit with FER_SEARCH_ASK_BATCH=K")
    p.add_argument("--reuse-warm-up", action="store_true",
                   help="keep an earlier warm-up's features (and its timing) if present")
    return p


def _spec(folder: Path, data_root: Path, image_size: int, name: str, trials: int,
          seed: int, sampler: str = "random", sampler_seed: int = 0) -> Path:
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nsampler: {sampler}\nseed: {sampler_seed}\nmetric: val_macro_f1\n"
        "pruner: none\n"
        f"n_trials: {trials}\nspace:\n{SPACE}"
        f"train:\n  image_size: {image_size}\n  weights: none\n  trainable_blocks: 0\n"
        f"  pooling: avg\n  class_weight: balanced\n  seed: {seed}\n"
        f"data:\n  root: {data_root}\n  cache_dir: {folder / '.cache'}\n"
        f"storage: sqlite:///{folder / 'optuna.db'}\n"
        f"tracking_uri: sqlite:///{folder / 'mlflow.db'}\n"
    )
    return spec


def _run(src: Path, folder: Path, data_root: Path, args, name: str, trials: int,
         env: dict[str, str], seed: int = 0, sampler: str = "random",
         sampler_seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    spec = _spec(folder, data_root, args.image_size, name, trials, seed, sampler, sampler_seed)
    log = folder / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(spec)],
                              cwd=folder,
                              env=benchlib.source_env(src, env, unset=ASK_BATCH_UNSET),
                              stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{src}: fer-search run exited {proc.returncode}; see {log}")
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "wall_s": wall,
        "complete": len(complete),
        "best": max(t.value for t in complete),
        "params": [t.params for t in trials],
        "values": [t.value for t in trials],
        "feature_s": benchlib.feature_seconds(folder, name),
        "log": str(log),
    }


if __name__ == "__main__":
    raise SystemExit(main())
