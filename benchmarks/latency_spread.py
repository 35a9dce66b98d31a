"""How much does a model's measured latency move between runs? `trainer.model_costs` 5 times per
shape, each in a fresh process with an empty cache.

    python benchmarks/latency_spread.py     # ~5 min on 2 cores; writes
                                            # benchmarks/results/latency-spread.{json,md}

Issue 32 asks for it: a constraint such as `latency_ms_b1 <= 20` decides nothing if the number
moves by 30% between runs. Each run is one fresh process with an empty cache folder, as a study
on another day would measure (`model_costs` then measures in a process of its own, as always).
Runs are interleaved (run 1 of every shape, then run 2, ...) so that a change in the machine's
load falls on every shape alike.

Per shape and batch size (1 and 32) the table gives the 5 medians `model_costs` reported (one
thread's CPU time per face: `trainer.network.latency`), their min and max, and the spread
(max - min) / median of the 5, in %. Beside it, from the same calls, the spread of the wall-clock
medians, which the first protocol reported (a88ffdc: 42-141% under the load of other sessions).

    python benchmarks/latency_spread.py --runs 3 --name latency-spread-quick
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
GOAL_SPREAD_PCT = 10  # what a constraint can live with; the bad example is 30%
BATCHES = (1, 32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per shape")
    p.add_argument("--name", default="latency-spread", help="stem of the result files")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one measurement: a shape's JSON
    args = p.parse_args(argv)
    if args.child:
        return _child(json.loads(args.child))
    prov = benchlib.provenance()
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for shape in SHAPES:
            result = _spawn(shape)
            result.update(run=run, shape=shape)
            runs.append(result)
            print(f"[latency_spread] run {run} {_shape_name(shape)}: "
                  f"b1 {result['costs']['latency_ms_b1']:.2f} ms, "
                  f"b32 {result['costs']['latency_ms_b32']:.2f} ms/face, "
                  f"{result['seconds']:.1f} s", flush=True)
    prov["load_average_at_end"] = benchlib.load_average()
    report = {"benchmark": "latency_spread", **prov, "runs_per_shape": args.runs,
              "shapes": list(SHAPES), "goal_spread_pct": GOAL_SPREAD_PCT,
              "summary": _summary(runs), "runs": runs,
              "benchmark_seconds": time.perf_counter() - started}
    out = Path(args.out) if args.out else benchlib.RESULTS_DIR
    paths = benchlib.write_results(out, args.name, report, _markdown(report))
    print(_markdown(report))
    print(f"[latency_spread] wrote {', '.join(map(str, paths))}")
    return 0


def _spawn(shape: dict[str, int]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(shape)],
        capture_output=True, text=True, check=True, cwd=benchlib.REPO,
        env=benchlib.source_env(benchlib.REPO))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child(shape: dict[str, int]) -> int:
    """One fresh measurement: `model_costs` on an empty cache folder, the measurement's own call
    times kept. Prints one JSON line."""
    from trainer import TrainConfig, model_costs
    from trainer.network import latency

    kept = {}
    measure = latency.measure

    def keeping(config, protocol):
        kept["measured"] = measure(config, protocol)
        return kept["measured"]

    latency.measure = keeping
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fer-latency-") as cache:
        costs = model_costs(TrainConfig(weights="none", **shape), cache)
    print(json.dumps({"costs": costs.__dict__, "call_seconds": kept["measured"].calls,
                      "seconds": time.perf_counter() - start, "load": os.getloadavg()[0]}))
    return 0


def _spread(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / statistics.median(values)


def _summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shape and batch size: the reported medians (CPU time) and their spread, and the spread
    of the wall-clock medians of the same calls."""
    rows = []
    for shape in SHAPES:
        mine = [r for r in runs if r["shape"] == shape]
        for batch in BATCHES:
            medians = [r["costs"][f"latency_ms_b{batch}"] for r in mine]
            wall = [statistics.median(1000 * w / batch for _, w in r["call_seconds"][str(batch)])
                    for r in mine]
            rows.append({"shape": _shape_name(shape), "batch": batch, "medians": medians,
                         "min": min(medians), "max": max(medians),
                         "spread_pct": _spread(medians), "wall_medians": wall,
                         "wall_spread_pct": _spread(wall)})
    return rows


def _shape_name(shape: dict[str, int]) -> str:
    return f"{shape['image_size']} px, head {shape['head_width']}"


def _markdown(r: dict[str, Any]) -> str:
    rows = [[s["shape"], s["batch"], " / ".join(f"{m:.2f}" for m in s["medians"]),
             f"{s['min']:.2f}", f"{s['max']:.2f}", f"**{s['spread_pct']:.1f}%**",
             " / ".join(f"{m:.1f}" for m in s["wall_medians"]), f"{s['wall_spread_pct']:.1f}%"]
            for s in r["summary"]]
    worst = max(r["summary"], key=lambda s: s["spread_pct"])
    runs = r["runs"]
    protocols = sorted({run["costs"]["protocol"].split("; load average")[0] for run in runs})
    loads = [run["load"] for run in runs]
    seconds = [run["seconds"] for run in runs]
    return (
        f"# Latency spread: `model_costs` {r['runs_per_shape']} times per shape, each in a fresh "
        "process\n\n"
        + benchlib.table(["shape", "batch", "medians (CPU ms per face)", "min", "max",
                          "spread (max-min)/median", "wall-clock medians, same calls",
                          "their spread"], rows)
        + f"\n\nWorst spread of the reported medians: {worst['spread_pct']:.1f}% "
        f"({worst['shape']}, batch {worst['batch']}); goal < {r['goal_spread_pct']}%: "
        + ("met" if worst["spread_pct"] < r["goal_spread_pct"] else "NOT met")
        + f". Params and size do not move (params {sorted({x['costs']['params'] for x in runs})},"
        f" size MB {sorted({round(x['costs']['size_mb'], 3) for x in runs})}). One "
        f"`model_costs` call (a fresh measuring process): {min(seconds):.1f} to "
        f"{max(seconds):.1f} s. Load average at each run's start: {min(loads):.1f} to "
        f"{max(loads):.1f}.\n\n"
        "Protocol (as `model_costs` recorded it, less the load):\n\n"
        + "".join(f"- {p}\n" for p in protocols) + "\n"
        + benchlib.provenance_markdown(r)
        + f"- benchmark total: {r['benchmark_seconds']:.0f} s\n"
    )


if __name__ == "__main__":
    sys.exit(main())
