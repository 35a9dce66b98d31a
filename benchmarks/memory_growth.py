"""Does a long study's process grow? RSS after 200 cached-feature trainings against after 10.

    python benchmarks/memory_growth.py     # ~3-5 min on 2 cores; writes
                                           # benchmarks/results/memory_growth.{json,md}

One process calls `trainer.train` in a loop, as a study's worker does, on tiny data (64 training
and 16 validation faces at 32 px, features cached after the first call), 1 epoch each. Each call
uses another seed, so every call trains (a repeated config would be answered from its group's
epoch record without training). `--vary head_width` also gives every call another head width, as
a random or TPE search over `head_width` does (every head a new shape):

    python benchmarks/memory_growth.py --vary head_width --name memory_growth_head_width
 RSS is read from /proc after calls 1, 10, 25, 50, 100, 150 and
200 (with a `gc.collect()` first, so that garbage not yet collected does not count as growth).
Goal: less than 200 MB between call 10 and call 200.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (a sibling module; benchmarks/ is not a package)

GOAL_MB = 200


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainings", type=int, default=200)
    p.add_argument("--baseline", type=int, default=10, help="the call growth is measured from")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--vary", choices=("seed", "head_width"), default="seed",
                   help="what changes from call to call besides the seed (default: only the seed)")
    p.add_argument("--name", default="memory_growth", help="stem of the result files")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    prov = benchlib.provenance()
    started = time.perf_counter()
    samples, seconds = _loop(args.trainings, args.baseline, args.image_size, args.vary)
    prov["load_average_at_end"] = benchlib.load_average()
    growth = samples[args.trainings] - samples[args.baseline]
    report = {
        "benchmark": "memory_growth",
        **prov,
        "trainings": args.trainings,
        "baseline_call": args.baseline,
        "image_size": args.image_size,
        "varied": args.vary,
        "rss_mib_after_call": samples,
        "growth_mib": growth,
        "growth_mb": growth * 2**20 / 1e6,
        "growth_per_training_kib": growth * 1024 / (args.trainings - args.baseline),
        "seconds_per_training_median": statistics.median(seconds),
        "seconds_per_training_p95": sorted(seconds)[int(0.95 * (len(seconds) - 1))],
        "goal_growth_below_200_mb": growth * 2**20 / 1e6 < GOAL_MB,
        "benchmark_seconds": time.perf_counter() - started,
    }
    out = Path(args.out) if args.out else benchlib.RESULTS_DIR
    paths = benchlib.write_results(out, args.name, report, _markdown(report))
    print(_markdown(report))
    print(f"[memory_growth] wrote {', '.join(map(str, paths))}")
    return 0


def _loop(
    trainings: int, baseline: int, size: int, vary: str
) -> tuple[dict[int, float], list[float]]:
    import numpy as np

    import trainer
    from trainer.data.dataset import Dataset, Split

    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> Split:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        return Split(name, images, np.arange(n) % 7, np.array([f"{name}{i}" for i in range(n)]))

    checkpoints = sorted({1, baseline, 25, 50, 100, 150, trainings} - {0})
    checkpoints = [c for c in checkpoints if c <= trainings]
    samples: dict[int, float] = {}
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as cache:
        data = Dataset(train=split("train", 64), val=split("val", 16), test=split("test", 7),
                       fingerprint=f"mem-{os.getpid()}-{time.time_ns()}", image_size=size,
                       cache_dir=Path(cache))
        for call in range(1, trainings + 1):
            config = trainer.TrainConfig(image_size=size, weights="none", epochs=1,
                                         batch_size=16, seed=call,
                                         head_width=64 + call if vary == "head_width" else 64)
            start = time.perf_counter()
            trainer.train(config, data)
            if call > 1:  # the first call extracts the features
                seconds.append(time.perf_counter() - start)
            if call in checkpoints:
                gc.collect()
                samples[call] = benchlib.rss_mib()
                print(f"[memory_growth] after call {call}: RSS {samples[call]:.0f} MiB",
                      flush=True)
    return samples, seconds


def _markdown(r: dict[str, Any]) -> str:
    rows = [[call, f"{rss:.0f}"] for call, rss in r["rss_mib_after_call"].items()]
    return (
        f"# Memory growth over repeated cached-feature trainings (varied: {r['varied']})\n\n"
        + benchlib.table(["after trainer.train call", "RSS (MiB)"], rows)
        + f"\n\nGrowth from call {r['baseline_call']} to call {r['trainings']}: "
        f"{r['growth_mb']:.1f} MB ({r['growth_per_training_kib']:.0f} KiB per training); goal "
        f"< {GOAL_MB} MB: {'met' if r['goal_growth_below_200_mb'] else 'NOT met'}. One training "
        f"(64 + 16 faces at {r['image_size']} px, 1 epoch, cached features): median "
        f"{r['seconds_per_training_median']:.2f} s, p95 {r['seconds_per_training_p95']:.2f} s.\n\n"
        + benchlib.provenance_markdown(r)
        + f"- benchmark total: {r['benchmark_seconds']:.0f} s\n"
    )


if __name__ == "__main__":
    sys.exit(main())
