"""What one claim costs with 10 and with 10,000 trials waiting, before and after issue 18's claim.

One worker (one storage, PostgreSQL directly, a throwaway cluster) claims trials one at a time
(FER_SEARCH_MAX_GROUP=1) from a fresh study whose queue holds N grid points, N = 10 and 10,000:

- claim (this commit): `grid_queue.claim_batch`, one transaction over at most 32 queued rows of
  the queue's own table read through an index, `FOR UPDATE SKIP LOCKED` (search.queue.items),
  then the point's trial created through Optuna's public `create_new_trial` and linked;
- claim (before: `claim_group` of d41d3da~1, from the git history, run against this commit's
  storage): reads every WAITING trial through Optuna's cache, then claims the first by Optuna's
  WAITING -> RUNNING state change.

The queue is written in one transaction per study (this commit: the queue's rows, as
`fill_queue` writes them; before: WAITING trials with Optuna's `fixed_params`);
`--claims` claims are timed for each. Reported: median and p99 ms per claim, and the ratio
10,000 / 10 for each claim, side by side.

    .venv/bin/python benchmarks/claim_scaling.py     # results/claim_scaling.{md,json}
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from benchmarks import benchlib  # noqa: E402
from search.storage import optuna_private as private  # noqa: E402
from search.storage.sessions import open_storage  # noqa: E402
from search.study import grid_queue  # noqa: E402
from tests.infra import pgcluster  # noqa: E402

OLD_COMMIT = "d41d3da~1"  # the last commit before the claim of search.storage.claims
LENGTHS = (10, 10_000)


def old_grid_queue() -> types.ModuleType:
    """`search/study/grid_queue.py` as of OLD_COMMIT, as a module of its own."""
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:search/study/grid_queue.py"],
                            capture_output=True, text=True, check=True,
                            cwd=benchlib.BENCH_DIR.parent).stdout
    module = types.ModuleType("old_grid_queue")
    exec(compile(source, "old_grid_queue.py", "exec"), module.__dict__)  # noqa: S102
    return module


def queue(study, storage, length: int, which: str) -> None:
    """`length` queued grid points, in one transaction: this commit's queue rows ("after"), or
    the WAITING trials the code before issue 18 claimed ("before")."""
    points = [{"learning_rate": 1.0e-6 * (index + 1), "batch_size": 32}
              for index in range(length)]
    if which == "after":
        grid_queue.enqueue(study, points)
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    with private.session(storage) as session:
        private.lock_study(session, study_id)
        for params in points:
            private.new_trial(storage, session, study_id, optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, system_attrs={"fixed_params": params}))


def time_claims(url: str, length: int, which: str, claims: int) -> list[float]:
    if which == "before":
        old = old_grid_queue()

        def claim(study, storage):
            return old.claim_group(study, storage, lambda params: None, limit=1)
    else:
        def claim(study, storage):
            return grid_queue.claim_batch(study, storage, lambda params: None)
    name = f"scaling-{which}-{length}"
    storage = open_storage(url, resilient=True)
    try:
        study = optuna.create_study(study_name=name, storage=storage)
        queue(study, storage, length, which)
        times = []
        for _ in range(min(claims, length)):
            began = time.perf_counter()
            trials = claim(study, storage)
            times.append(time.perf_counter() - began)
            assert len(trials) == 1
        return times
    finally:
        storage.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--name", default="claim_scaling")
    args = parser.parse_args(argv)
    if min(args.lengths) < 1 or args.claims < 1:
        parser.error("--lengths and --claims must be >= 1")
    prov = benchlib.provenance()
    rows: list[dict[str, Any]] = []
    cluster = pgcluster.start_cluster()
    try:
        for which in ("after", "before"):
            for length in args.lengths:
                times = time_claims(cluster.url(), length, which, args.claims)
                ordered = sorted(times)
                rows.append({"claim": which, "waiting": length, "claims": len(times),
                             "median_ms": round(statistics.median(times) * 1000, 1),
                             "p99_ms": round(ordered[min(len(ordered) - 1,
                                                         int(0.99 * len(ordered)))] * 1000, 1)})
                print(rows[-1], flush=True)
    finally:
        pgcluster.remove_cluster(cluster)
    prov["load_average_at_end"] = benchlib.load_average()
    by = {(r["claim"], r["waiting"]): r for r in rows}
    low, high = min(args.lengths), max(args.lengths)
    table = benchlib.table(
        ["claim", *[f"median ms, {n:,} waiting" for n in args.lengths],
         *[f"p99 ms, {n:,} waiting" for n in args.lengths], f"median {high:,} / {low:,}"],
        [[which, *[by[(which, n)]["median_ms"] for n in args.lengths],
          *[by[(which, n)]["p99_ms"] for n in args.lengths],
          round(by[(which, high)]["median_ms"] / by[(which, low)]["median_ms"], 2)]
         for which in ("after", "before")])
    text = f"""# One claim with few and many trials waiting, before and after issue 18's claim

One worker, one storage, PostgreSQL directly (a throwaway cluster on this machine); a fresh study
per row whose queue holds the given number of grid points; {args.claims} claims of one trial
each timed (at most as many as are waiting). "after": this commit's `grid_queue.claim_batch`
(one transaction over at most 32 queued rows of the queue's own table through an index, FOR
UPDATE SKIP LOCKED, then the trial created through Optuna's public API and linked to its row);
"before": `claim_group` of {OLD_COMMIT} (reads every WAITING trial, then claims the first),
run against this commit's storage.

{table}

{benchlib.provenance_markdown(prov)}"""
    for path in benchlib.write_results(benchlib.RESULTS_DIR, args.name,
                                       {"provenance": prov, "rows": rows}, text):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
