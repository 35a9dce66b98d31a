"""Many simulated workers on one PostgreSQL study, directly and through PgBouncer (issue 18).

Each simulated worker is the real worker's loop with training replaced by a sleep
(search.study.dry_worker): its own storage (engine and connections), the study lock and queue
check at start, then claim (search.storage.claims), heartbeat, a report per epoch and a tell,
until the grid is done. 256 worker processes are too heavy for a 2-core machine, so workers run
as threads, `--processes` processes of workers/processes threads each; every thread opens its
own storage, as a process would, so PostgreSQL (or PgBouncer) sees one worker's connections per
thread.

For each mode (direct: every worker connects to PostgreSQL; pgbouncer: every worker's storage
URL is a throwaway PgBouncer's, transaction pooling, `--pool` server connections) and each
worker count, a fresh study of workers x `--trials-per-worker` grid points (one trial per claim:
FER_SEARCH_MAX_GROUP=1) is queued once, then the workers start: together, or evenly over
`--stagger-s` seconds, as a cluster's scheduler brings them up. Reported:

- claims/s: claims that took a trial / (last such claim's end - first one's start);
- p50 / p99 latency of a claim (one `_next_trials`: the claim transaction and the Optuna trial
  it builds), of a report (one epoch's `on_epoch_end`: Optuna report, pruning check) and of a
  tell (the trial's final state change);
- start-up: open the storage, take the study lock, check the queue (median and max);
- PostgreSQL connections at peak: client backends on the study's database in pg_stat_activity,
  polled every 0.2 s;
- duplicates (COMPLETE trials beyond one per grid point) and lost points (none COMPLETE).

    .venv/bin/python benchmarks/storage_load.py                 # results/storage_load.{md,json}
    .venv/bin/python benchmarks/storage_load.py --workers 8 --modes pgbouncer --quick
    # trials of a modelled length (10 epochs x 3 s), workers brought up over a minute:
    .venv/bin/python benchmarks/storage_load.py --workers 128 256 --epochs 10 --epoch-s 3 \
        --stagger-s 60 --name storage_load-30s-trials
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import benchlib  # noqa: E402
from tests.infra import pgbouncer, pgcluster  # noqa: E402

WORKERS = (8, 32, 128, 256)
MODES = ("direct", "pgbouncer")


def spec(name: str, points: int, epochs: int) -> dict[str, Any]:
    """A grid of `points` points (learning rates), `epochs` epochs each; nothing is trained."""
    return {
        "name": name,
        "sampler": "grid",
        "seed": 0,
        "metric": "val_accuracy",
        "pruner": "none",
        "space": {
            "learning_rate": [round(1.0e-5 * (i + 1), 8) for i in range(points)],
            "batch_size": [32],
            "epochs": [epochs],
            "head_width": [16],
        },
        "train": {"image_size": 32, "weights": "none", "seed": 0},
        "data": {"synthetic": {"faces": 140, "seed": 0}, "cache_dir": ".cache"},
    }


# ---------------------------------------------------------------------------------- one worker


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _worker(spec_path: str, epoch_s: float, stats: dict[str, list]) -> None:
    """One simulated worker: search.study.dry_worker.run, timed."""
    from search.spec.loader import load_spec
    from search.storage.engines import close_storage
    from search.storage.locks import study_lock
    from search.storage.sessions import open_storage, resolve_storage
    from search.study.dry_worker import DryRunner, NullData, NullTracker
    from search.study.loop import StudyLoop
    from search.study.setup import LostRuns, prepare_queue, ready_study

    class TimedLoop(StudyLoop):
        def _next_trials(self):
            start = time.time()
            began = time.perf_counter()
            trials = super()._next_trials()
            took = time.perf_counter() - began
            if trials:
                stats["claims"].append([start, start + took, took])
            return trials

    class TimedRunner(DryRunner):
        def _train(self, sessions):
            for session in sessions:
                session.on_epoch_end = _timed(session.on_epoch_end, stats["reports"])
            return super()._train(sessions)

    began = time.perf_counter()
    spec = load_spec(spec_path)
    url = resolve_storage(None, spec.storage)
    lost = LostRuns()
    storage = open_storage(url, on_stale=lost, resilient=True)
    tell = storage.set_trial_state_values

    def timed_tell(trial_id, state, values=None):
        took = time.perf_counter()
        try:
            return tell(trial_id, state, values)
        finally:
            if state.is_finished():
                stats["tells"].append(time.perf_counter() - took)

    storage.set_trial_state_values = timed_tell
    try:
        study = ready_study(spec, storage)  # as dry_worker.run: a running study needs no lock
        if study is None:
            with study_lock(url, spec.name):
                study = prepare_queue(spec, storage, url, lost)
        stats["startup"].append(time.perf_counter() - began)
        tracker = NullTracker()
        runner = TimedRunner(spec, study, storage, NullData(), tracker, "dry", "dry")
        runner.epoch_s = epoch_s
        loop = TimedLoop(spec, study, storage, runner, tracker, lost)
        loop.run()
    finally:
        close_storage(storage)


def _timed(call, sink: list):
    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - began)
    return timed


def child(spec_path: str, threads: int, epoch_s: float, out: str,
          delays: list[float]) -> int:
    """A process of `threads` simulated workers, the i-th started `delays[i]` seconds after the
    process; writes their timings to `out` (JSON)."""
    stats: dict[str, list] = {"claims": [], "reports": [], "tells": [], "startup": [],
                              "errors": []}

    def run_one(delay: float) -> None:
        time.sleep(delay)
        try:
            _worker(spec_path, epoch_s, stats)
        except BaseException as error:  # noqa: BLE001  (counted, and the others go on)
            from search.urls import mask_text

            stats["errors"].append(mask_text(f"{type(error).__name__}: {error}")[:300])

    workers = [threading.Thread(target=run_one, args=(delay,)) for delay in delays[:threads]]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    Path(out).write_text(json.dumps(stats))
    return 0


# ---------------------------------------------------------------------------------- one config


class Peak:
    """Polls pg_stat_activity for the study database's client backends, keeping the peak."""

    def __init__(self, cluster: pgcluster.PgCluster) -> None:
        self.cluster, self.peak = cluster, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, pgbouncer.server_connections(self.cluster))
            except Exception:  # noqa: BLE001  (the server is busy: the next poll counts)
                pass
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.peak


def _process_cpu_s(pid_file: Path, with_children: bool) -> float:
    """CPU seconds (user + system) of the process named in `pid_file` (first line), and of its
    children it has waited for when `with_children` (PostgreSQL's postmaster reaps its
    backends); 0.0 when it cannot be read."""
    try:
        pid = int(pid_file.read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = sum(int(fields[i]) for i in ((11, 12, 13, 14) if with_children else (11, 12)))
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuSplit:
    """CPU seconds over one row: the worker processes (this script's children, once waited
    for), PostgreSQL (the postmaster and the backends it reaped: a row's workers are gone by
    its end, and their backends with them) and PgBouncer."""

    def __init__(self, cluster, bouncer) -> None:
        self._postgres = cluster.data / "postmaster.pid"
        self._bouncer = bouncer.root / "pgbouncer.pid"
        self._start = self._read()

    def _read(self) -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (children.ru_utime + children.ru_stime, _process_cpu_s(self._postgres, True),
                _process_cpu_s(self._bouncer, False))

    def stop(self) -> dict[str, float]:
        end = self._read()
        return {name: round(b - a, 1) for name, a, b in
                zip(("workers", "postgres", "pgbouncer"), self._start, end, strict=True)}


def run_config(mode: str, workers: int, args, cluster, bouncer, folder: Path) -> dict[str, Any]:
    from search.spec.loader import load_spec
    from search.storage.locks import study_lock
    from search.storage.sessions import open_storage
    from search.study import grid_queue
    from search.study.setup import prepare_queue

    name = f"load-{mode}-{workers}"
    folder.mkdir(parents=True, exist_ok=True)
    points = workers * args.trials_per_worker
    spec_path = folder / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec(name, points, args.epochs), sort_keys=False))
    url = bouncer.url() if mode == "pgbouncer" else cluster.url()
    loaded = load_spec(spec_path)
    storage = open_storage(url)
    try:  # queued once, as `run --workers N` prepares the study before its workers
        with study_lock(url, name):
            prepare_queue(loaded, storage, url)
    finally:
        storage.close()

    processes = min(workers, args.processes)
    env = {**os.environ, "FER_SEARCH_STORAGE": url, "FER_SEARCH_MAX_GROUP": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(benchlib.BENCH_DIR.parent)}
    peak = Peak(cluster)
    cpu = CpuSplit(cluster, bouncer)
    started = time.time()
    children = []
    # Worker w starts at w / workers of --stagger-s (0: all at once). Each process takes a
    # contiguous run of workers and is itself started at its first worker's time, so that the
    # processes' start-up (imports, about a second of CPU each) is spread over the span too, as
    # it is on machines of their own; its threads' delays are counted from its own start.
    delays = [w * args.stagger_s / workers for w in range(workers)]
    first = 0
    for index in range(processes):
        threads = workers // processes + (1 if index < workers % processes else 0)
        mine, first = delays[first:first + threads], first + threads
        time.sleep(max(0.0, started + mine[0] - time.time()))
        out = folder / f"{name}-{index}.json"
        log = open(folder / f"{name}-{index}.log", "wb")  # noqa: SIM115  (closed below)
        command = [sys.executable, __file__, "--child", str(spec_path), "--threads", str(threads),
                   "--epoch-s", str(args.epoch_s), "--out", str(out),
                   "--delays", json.dumps([d - mine[0] for d in mine])]
        children.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL), out, log))
    codes = []
    for process, _, log in children:
        try:
            codes.append(process.wait(timeout=args.timeout))
        except subprocess.TimeoutExpired:
            process.kill()
            codes.append(process.wait())
        log.close()
    wall = time.time() - started
    peak_connections = peak.stop()
    time.sleep(1)  # the workers' backends end when their connections close: let them be reaped
    cpu_s = cpu.stop()

    stats: dict[str, list] = {"claims": [], "reports": [], "tells": [], "startup": [],
                              "errors": []}
    for _, out, _ in children:
        if out.exists():
            for key, values in json.loads(out.read_text()).items():
                stats[key].extend(values)
    duplicates, lost, failed = _outcome(url, name, loaded, grid_queue)
    claims = stats["claims"]
    span = (max(c[1] for c in claims) - min(c[0] for c in claims)) if claims else 0.0

    def ms(values, share):
        found = _percentile(values, share)
        return None if found is None else round(found * 1000, 1)

    return {
        "mode": mode, "workers": workers, "processes": processes, "points": points,
        "claims": len(claims), "claim_span_s": round(span, 2),
        "claims_per_s": round(len(claims) / span, 1) if span else None,
        "claim_p50_ms": ms([c[2] for c in claims], 0.5),
        "claim_p99_ms": ms([c[2] for c in claims], 0.99),
        "report_p50_ms": ms(stats["reports"], 0.5), "report_p99_ms": ms(stats["reports"], 0.99),
        "tell_p50_ms": ms(stats["tells"], 0.5), "tell_p99_ms": ms(stats["tells"], 0.99),
        "startup_p50_s": round(statistics.median(stats["startup"]), 2) if stats["startup"]
        else None,
        "startup_max_s": round(max(stats["startup"]), 2) if stats["startup"] else None,
        "peak_pg_connections": peak_connections, "cpu_s": cpu_s,
        "duplicates": duplicates, "lost": lost, "failed_trials": failed,
        "worker_errors": len(stats["errors"]), "first_errors": stats["errors"][:3],
        "exit_codes": sorted(set(codes)), "wall_s": round(wall, 1),
    }


def _outcome(url: str, name: str, loaded, grid_queue) -> tuple[int, int, int]:
    """Duplicates (COMPLETE trials beyond one per point), lost points (none COMPLETE), and
    trials that FAILed."""
    import optuna
    from optuna.trial import TrialState

    from search.storage.sessions import open_storage

    storage = open_storage(url, read_only=True)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.close()
    complete = Counter(json.dumps(grid_queue.params_of(t), sort_keys=True)
                       for t in trials if t.state == TrialState.COMPLETE)
    expected = {json.dumps(p, sort_keys=True) for p in grid_queue.grid_points(loaded)}
    duplicates = sum(count - 1 for count in complete.values())
    lost = len(expected - set(complete))
    failed = sum(1 for t in trials if t.state == TrialState.FAIL)
    return duplicates, lost, failed


# ---------------------------------------------------------------------------------- report


HEADERS = ["mode", "workers", "claims", "claims/s", "claim p50 ms", "claim p99 ms",
           "report p50 ms", "report p99 ms", "tell p50 ms", "tell p99 ms", "start-up p50/max s",
           "PG connections at peak", "CPU s: workers / PostgreSQL / PgBouncer", "duplicates",
           "lost", "errors"]


def markdown(rows: list[dict[str, Any]], args, prov: dict[str, Any]) -> str:
    table = benchlib.table(HEADERS, [[
        r["mode"], f"{r['workers']} ({r['processes']} proc.)", r["claims"], r["claims_per_s"],
        r["claim_p50_ms"], r["claim_p99_ms"], r["report_p50_ms"], r["report_p99_ms"],
        r["tell_p50_ms"], r["tell_p99_ms"], f"{r['startup_p50_s']}/{r['startup_max_s']}",
        r["peak_pg_connections"], _cpu(r), r["duplicates"], r["lost"], r["worker_errors"]]
        for r in rows])
    ratios = []
    by = {(r["mode"], r["workers"]): r for r in rows}
    for workers in sorted({r["workers"] for r in rows}):
        direct, pooled = by.get(("direct", workers)), by.get(("pgbouncer", workers))
        if direct and pooled and direct["claims_per_s"] and pooled["claims_per_s"]:
            ratios.append([workers, round(pooled["claims_per_s"] / direct["claims_per_s"], 2),
                           _ratio(pooled["claim_p99_ms"], direct["claim_p99_ms"]),
                           _ratio(pooled["peak_pg_connections"], direct["peak_pg_connections"])])
    ratio_table = benchlib.table(["workers", "claims/s pgbouncer/direct",
                                  "claim p99 pgbouncer/direct", "PG connections pgbouncer/direct"],
                                 ratios) if ratios else ""
    return f"""# Storage load: simulated workers on one PostgreSQL study, direct and via PgBouncer

Each worker is the real worker loop (search.study.dry_worker: the study lock and queue check at
start, claim, heartbeat, a report per epoch, tell) with training replaced by a sleep of
{args.epochs} epochs x {args.epoch_s} s; a fresh grid of workers x {args.trials_per_worker} points
per row, one trial per claim (FER_SEARCH_MAX_GROUP=1), {_starts(args)}. Workers are
threads, at most {args.processes} processes of them (256 processes are too heavy for this
2-core machine); each thread opens its own storage, so the database (or PgBouncer) sees each
worker's own connections. PgBouncer: transaction pooling, {args.pool} server connections,
query_wait_timeout {pgbouncer.QUERY_WAIT_S} s.
PostgreSQL (a throwaway cluster, fsync off, max_connections {args.max_connections}), PgBouncer,
the workers and this script all share the machine's 2 cores.

{table}

{ratio_table}

Claims/s: claims that took a trial over the span from the first one's start to the last one's
end (the workers' sleep bounds it: at most workers / {args.epochs * args.epoch_s:g} s per second).
Latencies: a claim is one `_next_trials` (the claim transaction and the Optuna trial it builds);
a report is one epoch's `on_epoch_end`; a tell is the trial's final state change. Start-up: open
the storage, take the study lock, check the queue. PG connections: client backends on the study's
database in pg_stat_activity, polled every 0.2 s. CPU s: over the row, the simulated workers'
processes (which on a cluster run on the workers' own machines), PostgreSQL's (the postmaster
and the backends it reaped) and PgBouncer's. Duplicates: COMPLETE trials beyond one per grid
point; lost: grid points without a COMPLETE trial.

{benchlib.provenance_markdown(prov)}"""


def _cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_s") or {}
    return " / ".join(str(cpu.get(k, "-")) for k in ("workers", "postgres", "pgbouncer"))


def _starts(args) -> str:
    if not args.stagger_s:
        return "all workers started together"
    return (f"workers started evenly over {args.stagger_s:g} s (as a scheduler brings them up; "
            "each process of workers starts with its first worker)")


def _ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=list(WORKERS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch-s", type=float, default=0.5)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--pool", type=int, default=pgbouncer.DEFAULT_POOL)
    parser.add_argument("--stagger-s", type=float, default=0.0,
                        help="start the workers evenly over this many seconds (0: together)")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--name", default="storage_load")
    parser.add_argument("--quick", action="store_true", help="results not written")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--delays", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.threads, args.epoch_s, args.out, json.loads(args.delays))
    if min(args.workers) < 1 or args.processes < 1 or args.pool < 1:
        parser.error("--workers, --processes and --pool must be >= 1")

    prov = benchlib.provenance()
    args.max_connections = max(100, 4 * max(args.workers) + 50)
    work = benchlib.WORK_DIR / "storage_load"
    cluster = pgcluster.start_cluster(max_connections=args.max_connections)
    rows = []
    try:
        bouncer = pgbouncer.start_bouncer(cluster, pool=args.pool)
        try:
            for workers in args.workers:
                for mode in args.modes:
                    row = run_config(mode, workers, args, cluster, bouncer, work)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        finally:
            pgbouncer.remove_bouncer(bouncer)
    finally:
        pgcluster.remove_cluster(cluster)
    prov["load_average_at_end"] = benchlib.load_average()
    text = markdown(rows, args, prov)
    if args.quick:
        print(text)
        return 0
    for path in benchlib.write_results(benchlib.RESULTS_DIR, args.name,
                                       {"provenance": prov, "settings": {
                                           k: v for k, v in vars(args).items()
                                           if k not in ("child", "threads", "out", "delays")},
                                        "rows": rows}, text):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
