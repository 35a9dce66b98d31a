"""A TPE study, batched asks vs one at a time: best value and wall time over a few sampler seeds.

    .venv/bin/python benchmarks/tpe_batched.py [--seeds 0 1 2] [--batch K] [--faces N]
        [--trials N] [--reuse-warm-up] [--render-only]

For each sampler seed, two contenders run `fer-search run` on the same 32-trial TPE study (the
space of studies/expw-random.yaml, no pruner, val_macro_f1, class_weight balanced, training
seed 0) on the synthetic ExpW folder of benchmarks/random_batched.py (5,800 faces, 64 px,
`weights: none`), this commit's code:

- `batched`: FER_SEARCH_ASK_BATCH unset (the default: TPE's 10 random start-up trials asked in
  batches, 8 then 2, and trained together, then one trial at a time), or K (`--batch`): K
  trials at once after the start-up too, the batch's earlier ones RUNNING and lied about
  (constant liar);
- `one at a time`: FER_SEARCH_ASK_BATCH=1, every trial asked after the last one ended.

Unset, both should draw the same configurations and values trial by trial (TPE's first model
sees the same finished trials); with K > 1 after the start-up, TPE sees fewer finished trials
per ask and draws others, so the best values differ. Features are copied from random_batched's
warm-up into every contender's fresh cache (extraction timed apart, there); fresh Optuna and
MLflow stores; timed as whole commands. Contenders alternate which runs first from seed to
seed.

Writes results/tpe_batched.{json,md} (`--name`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import random_batched as rb  # noqa: E402


def contenders(batch: int | None) -> dict[str, dict[str, str]]:
    # An empty env leaves FER_SEARCH_ASK_BATCH unset (random_batched.ASK_BATCH_UNSET).
    return {"batched": {} if batch is None else {"FER_SEARCH_ASK_BATCH": str(batch)},
            "one at a time": {"FER_SEARCH_ASK_BATCH": "1"}}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render_only:
        saved = args.out / f"{args.name}.json"
        (args.out / f"{args.name}.md").write_text(
            render(json.loads(saved.read_text())).rstrip() + "\n")
        return 0
    work, prov, data_root = benchlib.prepare(args.work, args.faces)
    warm = work / "warm-up"
    warm_up = rb.warm_up_run(work, data_root, args)

    candidates = contenders(args.batch)
    runs: dict[str, dict[str, dict]] = {name: {} for name in candidates}
    names = list(candidates)
    for i, seed in enumerate(args.seeds):
        for name in names if i % 2 == 0 else names[::-1]:
            folder = work / f"tpe-{names.index(name)}-seed-{seed}"
            shutil.rmtree(folder, ignore_errors=True)
            for part in ("crops", "features"):
                shutil.copytree(warm / ".cache" / part, folder / ".cache" / part)
            found = rb._run(benchlib.REPO, folder, data_root, args, "tpe", args.trials,
                            candidates[name], sampler="tpe", sampler_seed=seed)
            runs[name][str(seed)] = {k: found[k] for k in ("wall_s", "complete", "best", "params",
                                                      "values", "log")}
            print(f"seed {seed}, {name}: {found['wall_s']:.1f} s, best {found['best']:.4f}",
                  flush=True)
    prov["load_average_at_end"] = benchlib.load_average()

    summary = {name: {"wall_s_mean": statistics.mean(r["wall_s"] for r in by_seed.values()),
                      "best_mean": statistics.mean(r["best"] for r in by_seed.values())}
               for name, by_seed in runs.items()}
    ratio = summary["batched"]["wall_s_mean"] / summary["one at a time"]["wall_s_mean"]
    report = {
        "provenance": prov,
        "setup": {"faces": args.faces, "image_size": args.image_size, "trials": args.trials,
                  "seeds": args.seeds, "space": rb.SPACE, "weights": "none", "sampler": "tpe",
                  "ask_batch_default": args.batch},
        "warm_up": warm_up,
        "results": runs,
        "summary": summary,
        "batched_over_one_at_a_time": ratio,
    }
    markdown = render(report)
    for path in benchlib.write_results(args.out, args.name, report, markdown):
        print(f"wrote {path}")
    return 0


def _steps(params: list[dict], train_faces: int) -> int:
    """A study's work: batches trained over all its trials (epochs x batches per epoch)."""
    return sum(p["epochs"] * -(-train_faces // p["batch_size"]) for p in params)


def render(report: dict) -> str:
    """The Markdown table of a report (also from a saved .json: --render-only)."""
    setup, runs, summary = report["setup"], report["results"], report["summary"]
    seeds = setup["seeds"]
    train_faces = int(setup["faces"] * 0.7)
    rows, lower, same = [], 0, 0
    for seed in seeds:
        b, o = runs["batched"][str(seed)], runs["one at a time"][str(seed)]
        lower += b["best"] < o["best"]
        same += b["params"] == o["params"] and b["values"] == o["values"]
        sb, so = _steps(b["params"], train_faces), _steps(o["params"], train_faces)
        rows.append([str(seed), f"{b['best']:.4f}", f"{o['best']:.4f}",
                     f"{b['best'] - o['best']:+.4f}", f"{b['wall_s']:.1f}", f"{o['wall_s']:.1f}",
                     f"{b['wall_s'] / o['wall_s']:.3f}", f"{sb} / {so}",
                     f"{b['complete']} / {o['complete']}"])
    b, o = summary["batched"], summary["one at a time"]
    rows.append(["mean", f"{b['best_mean']:.4f}", f"{o['best_mean']:.4f}",
                 f"{b['best_mean'] - o['best_mean']:+.4f}", f"{b['wall_s_mean']:.1f}",
                 f"{o['wall_s_mean']:.1f}", f"{report['batched_over_one_at_a_time']:.3f}", "",
                 ""])
    return (
        "# A TPE study, batched asks vs one at a time\n\n"
        f"{setup['trials']} trials of a TPE study (constant liar) over the space of "
        f"studies/expw-random.yaml (no pruner), {setup['faces']} synthetic faces (70% train), "
        f"{setup['image_size']} px, frozen VGG16 (`weights: none`), features cached for every "
        "run (copied from one warm-up run), fresh Optuna and MLflow stores; timed as the whole "
        f"`fer-search run` command. Batched: {_batched(setup['ask_batch_default'])}"
        "; one at a time: FER_SEARCH_ASK_BATCH=1. "
        "One run per sampler seed and contender, the first to run alternating from seed to "
        "seed.\n\n"
        + benchlib.table(["sampler seed", "best val_macro_f1, batched", "one at a time",
                          "difference", "wall s, batched", "one at a time",
                          "batched / one at a time", "batches trained, batched / one at a time",
                          "complete trials"], rows)
        + f"\n\nBest value: batched was lower for {lower} of {len(seeds)} sampler seeds. "
        f"Same configurations and values as one at a time, trial by trial: {same} of "
        f"{len(seeds)} seeds. " + _why(setup["ask_batch_default"], lower, len(seeds))
        + "\n\n"
        f"The one-time feature extraction (timed apart, warm-up run): "
        f"{report['warm_up']['feature_s']:.1f} s.\n\n"
        + benchlib.provenance_markdown(report["provenance"])
    )


def _batched(batch: int | None) -> str:
    if batch is None:
        return ("FER_SEARCH_ASK_BATCH unset (the default: TPE's random start-up trials in "
                "batches, then one trial at a time)")
    return f"FER_SEARCH_ASK_BATCH={batch}"


def _why(batch: int | None, lower: int, seeds: int) -> str:
    if batch is None:
        return ("Unset, only TPE's random start-up trials are batched, and TPE's first model "
                "sees the same finished trials as one at a time: the two should draw the same "
                "configurations, so the wall times compare the same work.")
    return (
        f"Batched TPE asks {batch} trials at once, the batch's earlier ones lied about as bad "
        "(constant liar), so each ask sees fewer finished trials and it draws other "
        "configurations than one at a time; one run per seed is few"
        + (", but here it cost best value" if 2 * lower > seeds else "") + ".\n\n"
        "Wall time: the two draw other configurations, so they train different amounts "
        "(\"batches trained\": the sum over trials of epochs x batches per epoch on 70% "
        "of the faces, a batch-16 epoch costing about 8 batch-128 ones); compare wall "
        "times with that in mind, and with the load below.")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    p.add_argument("--batch", type=int, default=None,
                   help="the batched contender's FER_SEARCH_ASK_BATCH (default: unset)")
    p.add_argument("--faces", type=int, default=5800, help="faces in all (70%% train)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "random-batched",
                   help="shared with random_batched.py: its data and warm-up features")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--name", default="tpe_batched")
    p.add_argument("--reuse-warm-up", action="store_true",
                   help="keep an earlier warm-up's features (and its timing) if present")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the .md from the saved .json (no run)")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
