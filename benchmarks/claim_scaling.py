"""What one claim costs with 10 and with 10,000 grid points waiting: the queue in its own tables
(issue 31) side by side with the claim it replaced (issue 18's, on Optuna's tables).

One worker (one storage, PostgreSQL directly, a throwaway cluster) claims one point at a time
from a fresh study whose queue holds N grid points, N = 10 and 10,000:

- "queue" (this commit): `grid_queue.claim_batch`, one transaction over at most 32 queued rows
  of the queue's own table read through an index, `FOR UPDATE SKIP LOCKED` (search.queue.items),
  then the point's trial created through Optuna's public `create_new_trial` and linked;
- "issue 18": `--old`'s (default 8c1f32a, the last commit with issue 18's claim) own
  `benchmarks/claim_scaling.py` functions, run with that commit's code in a git worktree of it:
  one transaction over at most 32 WAITING trials of Optuna's table, set RUNNING in it. (The
  claim before issue 18, which read every WAITING trial, took 140x longer with 10,000 waiting
  than with 10: f608baf's run, in HISTORY.md; its code no longer runs with today's settings.)

Each queue is written in one transaction per study; `--claims` claims are timed for each.
Reported: median and p99 ms per claim, and the ratio 10,000 / 10 for each claim, side by side.

    .venv/bin/python benchmarks/claim_scaling.py     # results/claim_scaling.{md,json}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from benchmarks import benchlib  # noqa: E402
from search.storage.sessions import open_storage  # noqa: E402
from search.study import grid_queue  # noqa: E402
from tests.infra import pgcluster  # noqa: E402

OLD_COMMIT = "8c1f32a"  # the last commit with issue 18's claim on Optuna's tables
LENGTHS = (10, 10_000)
OLD_ARM = "issue 18 (Optuna's tables)"
# Run in `--old`'s worktree, with its code: its own script's queue and claim, on its own cluster.
OLD_DRIVER = """
import json, sys
from benchmarks import claim_scaling as old
from tests.infra import pgcluster
lengths, claims = json.loads(sys.argv[1]), int(sys.argv[2])
cluster = pgcluster.start_cluster()
try:
    print(json.dumps([old.time_claims(cluster.url(), n, "after", claims) for n in lengths]))
finally:
    pgcluster.remove_cluster(cluster)
"""


def time_claims(url: str, length: int, claims: int) -> list[float]:
    """This commit's claims of one point each from a fresh queue of `length` points."""
    storage = open_storage(url, resilient=True)
    try:
        study = optuna.create_study(study_name=f"scaling-queue-{length}", storage=storage)
        grid_queue.enqueue(study, [{"learning_rate": 1.0e-6 * (index + 1), "batch_size": 32}
                                   for index in range(length)])  # one transaction
        times = []
        for _ in range(min(claims, length)):
            began = time.perf_counter()
            trials = grid_queue.claim_batch(study, storage, lambda params: None)
            times.append(time.perf_counter() - began)
            assert len(trials) == 1
        return times
    finally:
        storage.close()


def old_rows(commit: str, lengths: list[int], claims: int) -> list[dict[str, Any]]:
    """Issue 18's claims, timed by `commit`'s own functions with its code (a git worktree of
    it), as this script's rows."""
    tree = benchlib.WORK_DIR / "claim-scaling" / f"src-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit],
                       cwd=benchlib.REPO, check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-c", OLD_DRIVER, json.dumps(lengths), str(claims)],
                         cwd=tree, check=True, env=benchlib.source_env(tree),
                         capture_output=True, text=True).stdout
    times = json.loads(out.strip().splitlines()[-1])
    return [summary(OLD_ARM, length, each) for length, each in zip(lengths, times, strict=True)]


def summary(which: str, length: int, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {"claim": which, "waiting": length, "claims": len(times),
            "median_ms": round(statistics.median(times) * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--name", default="claim_scaling")
    parser.add_argument("--old", default=OLD_COMMIT, help="the commit of issue 18's claim")
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.claims < 1:
        parser.error("--lengths and --claims must be >= 1")
    prov = benchlib.provenance()
    rows: list[dict[str, Any]] = []
    cluster = pgcluster.start_cluster()
    try:
        for length in args.lengths:
            rows.append(summary("queue (issue 31)", length,
                                time_claims(cluster.url(), length, args.claims)))
            print(rows[-1], flush=True)
    finally:
        pgcluster.remove_cluster(cluster)
    rows += old_rows(args.old, args.lengths, args.claims)
    prov["load_average_at_end"] = benchlib.load_average()
    by = {(r["claim"], r["waiting"]): r for r in rows}
    low, high = min(args.lengths), max(args.lengths)
    table = benchlib.table(
        ["claim", *[f"median ms, {n:,} waiting" for n in args.lengths],
         *[f"p99 ms, {n:,} waiting" for n in args.lengths], f"median {high:,} / {low:,}"],
        [[which, *[by[(which, n)]["median_ms"] for n in args.lengths],
          *[by[(which, n)]["p99_ms"] for n in args.lengths],
          round(by[(which, high)]["median_ms"] / by[(which, low)]["median_ms"], 2)]
         for which in ("queue (issue 31)", OLD_ARM)])
    ratios = benchlib.table(
        ["waiting", "median queue / issue 18", "p99 queue / issue 18"],
        [[f"{n:,}", *[round(by[("queue (issue 31)", n)][k] / by[(OLD_ARM, n)][k], 2)
                      for k in ("median_ms", "p99_ms")]] for n in args.lengths])
    text = f"""# One claim with few and many points waiting: the queue's tables vs issue 18's

One worker, one storage, PostgreSQL directly (a throwaway cluster on this machine); a fresh study
per row whose queue holds the given number of grid points; {args.claims} claims of one point
each timed (at most as many as are waiting). "queue (issue 31)": this commit's
`grid_queue.claim_batch` (one transaction over at most 32 queued rows of the queue's own table
through an index, FOR UPDATE SKIP LOCKED, then the trial created through Optuna's public API
and linked to its row). "issue 18": {args.old}'s claim (one transaction over at most 32 WAITING
trials of Optuna's table, set RUNNING in it), timed by {args.old}'s own script functions with
its code (a git worktree of it), right after this commit's rows, on another throwaway cluster.
The queue's claim is three round trips (the claim, the trial's creation with its first
heartbeat, the link) where issue 18's was one: what the queue's own tables and Optuna's public
API cost per claim, against trainings of seconds to minutes.

{table}

{ratios}

{benchlib.provenance_markdown(prov)}"""
    for path in benchlib.write_results(benchlib.RESULTS_DIR, args.name,
                                       {"provenance": prov, "rows": rows}, text):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
