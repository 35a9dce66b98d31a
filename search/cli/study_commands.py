"""`fer-search run`, `worker`, `promote`, `report`: the commands that run a study or act on its
results (Optuna, MLflow, TensorFlow once a trial trains)."""

from __future__ import annotations

import os

import optuna

from search.cli.common import err, one_line, out, start_tensorflow
from search.cli.progress import TrialProgress, leaderboard_table
from search.cli.stores import require_stores, storage_for
from search.contracts import EXIT_OK
from search.registry.promotion import promote
from search.spec.loader import load_spec
from search.spec.warm_section import with_warm_start
from search.storage.sessions import check_reachable, resolve_storage
from search.study import signals
from search.study.loop import run_study
from search.study.warm_start import DONE_ATTR
from search.study.workers import GPU_ENV, WorkerPlan, parse_gpus, prepare_study, run_workers
from search.tracking.report import refresh_study
from search.tracking.runs import resolve_tracking_uri
from search.tracking.store_check import check_tracking_server
from search.trial.data_provider import DataProvider
from search.trial.objectives import goals
from search.urls import mask_url
from trainer.runtime import defer_tensorflow


def cmd_run(args) -> int:
    # `run --workers N` forwards signals to its workers once they start (search.study.workers).
    gpus = None
    if args.gpus is not None:
        gpus = parse_gpus(args.gpus)  # checked before anything starts
        if args.workers == 1:  # this process is the worker: before TensorFlow starts
            os.environ[GPU_ENV] = gpus[0]
    with signals.for_command(signals.RUN):
        if args.workers > 1:
            return _run_workers(args, gpus)
        summary, spec, urls, data = _run(args, leaderboard=True)
        if args.promote:
            print_promotion(promote_study(spec.name, urls, force=False, model_name=None, data=data))
    return EXIT_OK


def cmd_worker(args) -> int:
    with signals.for_command(signals.WORKER):
        _run(args, leaderboard=False)
    return EXIT_OK


def _run_workers(args, gpus: tuple[str, ...] | None) -> int:
    """`run --workers N`: prepares the study here, then runs N `fer-search worker` processes on
    it (search.study.workers), and prints the leaderboard when they are done."""
    spec = _load(args)
    storage_url = resolve_storage(args.storage, spec.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    check_reachable(storage_url)
    check_tracking_server(tracking_uri)  # a tracking server that is down: one line, in seconds
    # Bad data stops before the banner; prepare_study warns about skipped faces, once.
    DataProvider(spec, args.cache_dir, warn=lambda line: None, storage_url=storage_url).first()
    err.print(f"study [bold]{spec.name}[/] ({spec.sampler}, {spec.metric}) in "
              f"{mask_url(storage_url)}; runs in {mask_url(tracking_uri)}; "
              f"{args.workers} workers")
    prepare_study(spec, storage_url=storage_url, tracking_uri=tracking_uri,
                  cache_dir=args.cache_dir)
    _print_warm_start(spec, storage_url)
    plan = WorkerPlan(spec_path=args.spec, workers=args.workers, storage_url=storage_url,
                      tracking_uri=tracking_uri, n_trials=args.n_trials, timeout=args.timeout,
                      cache_dir=args.cache_dir, threads=args.threads, debug=args.debug,
                      gpus=gpus)
    result = run_workers(plan, sink=err.file)
    err.print(result.summary())
    with storage_for(storage_url) as storage:
        out.print(leaderboard_table(optuna.load_study(study_name=spec.name, storage=storage),
                                    spec.metric))
    if result.exit_code != EXIT_OK:
        return result.exit_code
    if args.promote:
        start_tensorflow(args.threads)
        print_promotion(promote_study(spec.name, (storage_url, tracking_uri), force=False,
                                      model_name=None))
    return EXIT_OK


def _run(args, leaderboard: bool):
    spec = _load(args)  # validated before anything is created
    storage_url = resolve_storage(args.storage, spec.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    check_reachable(storage_url)  # an unreachable store fails in seconds, not after TF loads
    check_tracking_server(tracking_uri)  # so does a tracking server (MLflow would retry minutes)
    data = DataProvider(spec, args.cache_dir, storage_url=storage_url)
    data.first()  # bad data stops here, before the banner names a study that never starts
    # TensorFlow starts when the first trial trains (trainer.runtime.defer_tensorflow): the
    # study reaches its first trial without waiting for its ~2-3 s import. A study that only
    # trains heads runs small ops side by side rather than splitting each over the cores.
    defer_tensorflow(args.threads, ops_in_parallel=spec.heads_only)
    err.print(f"study [bold]{spec.name}[/] ({spec.sampler}, {spec.metric}) in "
              f"{mask_url(storage_url)}; runs in {mask_url(tracking_uri)}")

    def on_start(expected: int) -> None:
        args.trials_started = True  # from here on, Ctrl-C has a trial to record
        progress.start(expected)

    with TrialProgress(err, spec.metric, spec.direction) as progress:
        summary = run_study(
            spec,
            storage_url=storage_url,
            tracking_uri=tracking_uri,
            n_trials=args.n_trials,
            timeout=args.timeout,
            data=data,
            on_start=on_start,
            on_trial_end=progress.advance,
        )
    if summary.warm_start:
        err.print(summary.warm_start, markup=False, soft_wrap=True)
    err.print(f"{summary.stopped_because}: {len(summary.outcomes)} trials run now")
    if leaderboard:
        with storage_for(storage_url) as storage:
            study = optuna.load_study(study_name=spec.name, storage=storage)
            out.print(leaderboard_table(study, spec.metric))
        if summary.best is not None:  # several objectives: the best by the first, feasible
            values = ", ".join(f"{o.name} = {v:.4g}" for o, v in
                               zip(goals(spec), summary.best.values, strict=True))
            out.print(f"best: trial {summary.best.number}, {values}, params "
                      f"{summary.best.params}")
        out.print(f"inspect the runs: fer-search ui --study {spec.name}   (prints the URL of "
                  "the runs; the study run holds the report and plots)")
    return summary, spec, (storage_url, tracking_uri), data


def _load(args):
    """The spec, with ``--warm-start STUDY`` in place of its ``warm_start.study``."""
    spec = load_spec(args.spec)
    if getattr(args, "warm_start", None) is not None:
        spec = with_warm_start(spec, args.warm_start)
    return spec


def _print_warm_start(spec, storage_url: str) -> None:
    """The warm start's line, as the study recorded it (`run --workers`: the parent did it)."""
    if spec.warm_start is None:
        return
    with storage_for(storage_url, read_only=True) as storage:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(spec.name))
    line = (attrs.get(DONE_ATTR) or {}).get("line")
    if line:
        err.print(line, markup=False, soft_wrap=True)


def cmd_report(args) -> int:
    report = refresh_study(args.study, resolve_storage(args.storage, None),
                           resolve_tracking_uri(args.tracking_uri, None), args.out)
    out.print(report.description, markup=False, soft_wrap=True)
    where = f"study run {report.run_id}" if report.run_id else "no study run (never run here)"
    drawn = ", ".join(report.plots) or "none"
    out.print(f"refreshed {where}: description, tags and plots ({drawn})", soft_wrap=True)
    if args.out is not None:
        out.print(f"wrote {args.out / 'description.md'} and {args.out / 'plots'}/")
    return EXIT_OK


def cmd_promote(args) -> int:
    urls = (resolve_storage(args.storage, None), resolve_tracking_uri(args.tracking_uri, None))
    require_stores(*urls)  # in seconds, before TensorFlow loads
    start_tensorflow(None)
    print_promotion(promote_study(args.study, urls, force=args.force, model_name=args.model_name,
                                  trial_number=args.trial, rule=args.rule))
    return EXIT_OK


def promote_study(study_name: str, urls: tuple[str, str], force: bool, model_name: str | None,
                  data=None, trial_number: int | None = None, rule: str | None = None):
    storage_url, tracking_uri = urls
    result = promote(study_name, storage_url=storage_url, tracking_uri=tracking_uri, force=force,
                     model_name=model_name, data=data, trial_number=trial_number, rule=rule)
    _refresh_report(study_name, urls)  # the study run names the version registered
    return result


def _refresh_report(study_name: str, urls: tuple[str, str]) -> None:
    try:
        refresh_study(study_name, *urls)
    except Exception as error:  # the promotion stands; only its mention on the study run waits
        err.print(f"warning: the study report was not refreshed ({one_line(error)}); "
                  f"`fer-search report {study_name}` retries", markup=False)


def print_promotion(result) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.test_metrics.items())
    how = "already registered as" if result.reused else "registered"
    out.print(f"{how} {result.model_name} version {result.version} "
              f"(trial {result.trial_number}; {metrics}): [bold]{result.alias}[/] "
              f"({result.reason})")
    if result.chosen:
        out.print(f"chosen: {result.chosen}", markup=False, soft_wrap=True)
    out.print(f"load it: mlflow.pyfunc.load_model('models:/{result.model_name}@{result.alias}')")
