"""How much does a model's measured latency move between runs? `trainer.model_costs` 5 times per
shape, each in a fresh process with an empty cache.

    python benchmarks/latency_spread.py     # ~6 min on 2 cores; writes
                                            # benchmarks/results/latency-spread.{json,md}

Issue 32 asks for it: a constraint such as `latency_ms_b1 <= 20` decides nothing if the number
moves by 30% between runs. Each run is one fresh process (TensorFlow started anew, the model
built anew, nothing cached), as a study on another day would measure it. Runs are interleaved
(run 1 of every shape, then run 2, ...) so that a change in the machine's load falls on every
shape alike.

Per shape and batch size (1 and 32) the table gives the 5 medians `model_costs` reported, their
min and max, and the spread (max - min) / median of the 5, in %. Each run's raw call times are
kept too (the timer is wrapped in the child, the numbers are the product's own), so the spread
another statistic would have had (the fastest call, the lower quartile) is shown from the same
calls.

Two thread plans, since the cache keys latency by TensorFlow's threads and a study sets them as
for training (`trainer.runtime`): `default` (TensorFlow's pools: each op split over the cores, as
a fine-tuning study runs) and `ops-in-parallel` (one thread per op, the cores running ops side by
side, as a study that trains only heads runs: `fer-search run` without `--threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (a sibling module; benchmarks/ is not a package)

SHAPES = ({"image_size": 48, "head_width": 256}, {"image_size": 64, "head_width": 256},
          {"image_size": 48, "head_width": 64})
PLANS = ("default", "ops-in-parallel")
GOAL_SPREAD_PCT = 10  # what a constraint can live with; the bad example is 30%
BATCHES = (1, 32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per shape and plan")
    p.add_argument("--plans", nargs="+", choices=PLANS, default=list(PLANS))
    p.add_argument("--name", default="latency-spread", help="stem of the result files")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one measurement: a shape's JSON
    p.add_argument("--plan", default="default", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child), args.plan)
    prov = benchlib.provenance()
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for plan in args.plans:
            for shape in SHAPES:
                result = _spawn(shape, plan)
                result.update(run=run, plan=plan, shape=shape)
                runs.append(result)
                print(f"[latency_spread] run {run} {plan} {_shape_name(shape)}: "
                      f"b1 {result['costs']['latency_ms_b1']:.2f} ms, "
                      f"b32 {result['costs']['latency_ms_b32']:.2f} ms/face", flush=True)
    prov["load_average_at_end"] = benchlib.load_average()
    report = {"benchmark": "latency_spread", **prov, "runs_per_shape": args.runs,
              "plans": args.plans, "shapes": list(SHAPES), "goal_spread_pct": GOAL_SPREAD_PCT,
              "summary": _summary(runs, args.plans), "runs": runs,
              "benchmark_seconds": time.perf_counter() - started}
    out = Path(args.out) if args.out else benchlib.RESULTS_DIR
    paths = benchlib.write_results(out, args.name, report, _markdown(report))
    print(_markdown(report))
    print(f"[latency_spread] wrote {', '.join(map(str, paths))}")
    return 0


def _spawn(shape: dict[str, int], plan: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(shape), "--plan", plan],
        capture_output=True, text=True, check=True, cwd=benchlib.REPO,
        env=benchlib.source_env(benchlib.REPO))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(shape: dict[str, int], plan: str) -> int:
    """One fresh measurement, as a study's worker makes it: the threads planned as `fer-search
    run` plans them, then `model_costs` on an empty cache folder. Prints one JSON line."""
    from trainer import TrainConfig, model_costs
    from trainer.runtime import defer_tensorflow, load_tensorflow

    defer_tensorflow(None, ops_in_parallel=plan == "ops-in-parallel")
    load_tensorflow()  # with those threads, before `latency` imports Keras
    from trainer.network import latency

    calls: dict[int, list[float]] = {}
    timed = latency.call_seconds

    def recording(model, faces, warm_up, repeats):
        seconds = timed(model, faces, warm_up, repeats)
        calls[len(faces)] = seconds
        return seconds

    latency.call_seconds = recording
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fer-latency-") as cache:
        costs = model_costs(TrainConfig(weights="none", **shape), cache)
    print(json.dumps({"costs": costs.__dict__, "call_seconds": calls,
                      "seconds": time.perf_counter() - start, "load": os.getloadavg()[0]}))
    return 0


def _spread(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / statistics.median(values)


def _summary(runs: list[dict[str, Any]], plans: list[str]) -> list[dict[str, Any]]:
    """Per plan, shape and batch size: the reported medians and their spread, and the spread the
    fastest call and the lower quartile of each run's calls would have had."""
    rows = []
    for plan in plans:
        for shape in SHAPES:
            mine = [r for r in runs if r["plan"] == plan and r["shape"] == shape]
            for batch in BATCHES:
                medians = [r["costs"][f"latency_ms_b{batch}"] for r in mine]
                per_face = [[1000 * s / batch for s in r["call_seconds"][str(batch)]]
                            for r in mine]
                fastest = [min(calls) for calls in per_face]
                quartile = [statistics.quantiles(calls, n=4)[0] for calls in per_face]
                rows.append({"plan": plan, "shape": _shape_name(shape), "batch": batch,
                             "medians": medians, "min": min(medians), "max": max(medians),
                             "spread_pct": _spread(medians),
                             "fastest_call_spread_pct": _spread(fastest),
                             "lower_quartile_spread_pct": _spread(quartile)})
    return rows


def _shape_name(shape: dict[str, int]) -> str:
    return f"{shape['image_size']} px, head {shape['head_width']}"


def _markdown(r: dict[str, Any]) -> str:
    rows = [[s["plan"], s["shape"], s["batch"], " / ".join(f"{m:.2f}" for m in s["medians"]),
             f"{s['min']:.2f}", f"{s['max']:.2f}", f"**{s['spread_pct']:.1f}%**",
             f"{s['fastest_call_spread_pct']:.1f}%", f"{s['lower_quartile_spread_pct']:.1f}%"]
            for s in r["summary"]]
    worst = max(r["summary"], key=lambda s: s["spread_pct"])
    protocols = sorted({run["costs"]["protocol"].split("; load average")[0] for run in r["runs"]})
    runs = r["runs"]
    loads = [run["load"] for run in runs]
    return (
        f"# Latency spread: `model_costs` {r['runs_per_shape']} times per shape, each in a fresh "
        "process\n\n"
        + benchlib.table(["threads", "shape", "batch", "medians (ms per face)", "min", "max",
                          "spread (max-min)/median", "spread if: fastest call",
                          "lower quartile"], rows)
        + f"\n\nWorst spread of the reported medians: {worst['spread_pct']:.1f}% "
        f"({worst['plan']}, {worst['shape']}, batch {worst['batch']}); goal "
        f"< {r['goal_spread_pct']}%: "
        + ("met" if worst["spread_pct"] < r["goal_spread_pct"] else "NOT met")
        + f". Params and size do not move (params {sorted({x['costs']['params'] for x in runs})},"
        f" size MB {sorted({round(x['costs']['size_mb'], 3) for x in runs})}). Load "
        f"average at each run's start: {min(loads):.1f} to {max(loads):.1f}.\n\n"
        "Protocols (as `model_costs` recorded them):\n\n"
        + "".join(f"- {p}\n" for p in protocols) + "\n"
        + benchlib.provenance_markdown(r)
        + f"- benchmark total: {r['benchmark_seconds']:.0f} s\n"
    )


if __name__ == "__main__":
    sys.exit(main())
