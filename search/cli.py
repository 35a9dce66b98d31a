"""`fer-search`: the command line, grouped by noun; each command body calls the library.

Exit codes (search.contracts): 0 success, 2 bad input (one line on stderr), 1 runtime failure,
130 interrupted (`run`; a `worker` stopped by SIGINT or SIGTERM records its trial and exits 0).
`--debug` shows tracebacks. What each signal does to each command: search.signals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console

from search import signals
from search.contracts import (
    CHAMPION_ALIAS,
    DEFAULT_MODEL_NAME,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from search.errors import InputError, SearchError, SpecError

# Tables stay readable when piped to a file or a CI log (rich would assume 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.handler(args) or EXIT_OK
    except KeyboardInterrupt:
        if getattr(args, "trials_started", False):
            err.print("interrupted: the running trial was recorded as failed and will be retried")
        else:
            err.print("interrupted before any trial started: nothing was recorded")
        # A worker is stopped on purpose (Ctrl-C twice, or a stop before any trial started):
        # its trial is recorded, so that is a clean exit for whoever supervises it.
        return EXIT_OK if args.handler is cmd_worker else EXIT_INTERRUPTED
    except Exception as error:  # one line, unless --debug
        code = exit_code_of(error)
        if args.debug:
            raise
        err.print(f"error: {_one_line(error)}", markup=False, soft_wrap=True)
        if code == EXIT_FAILURE and not _explained(error):
            err.print("(run with --debug for the traceback)")
        return code


def exit_code_of(error: BaseException) -> int:
    """2 for input the user can fix (spec, data, weights, names), 1 for everything else."""
    import trainer

    bad_input = (SpecError, InputError, trainer.ConfigError, trainer.DataError,
                 trainer.WeightsError)
    return EXIT_BAD_INPUT if isinstance(error, bad_input) else EXIT_FAILURE


def _explained(error: BaseException) -> bool:
    """Errors raised on purpose say all there is to say; no traceback hint after them."""
    import trainer

    return isinstance(error, SearchError | trainer.TrainerError)


def _one_line(error: BaseException) -> str:
    from search.storage import mask_url_secrets_in

    text = " ".join(str(error).split()) or type(error).__name__
    return mask_url_secrets_in(text)


# ------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fer-search",
        description="Hyperparameter search for facial-expression recognition (VGG16 on ExpW).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(metavar="COMMAND")

    run = _command(commands, "run", cmd_run, "run (or resume) a study from its spec")
    _study_options(run)
    run.add_argument("--promote", action="store_true",
                     help="promote the best trial to the model registry at the end")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="run the study in N local worker processes (default 1: this one); "
                     "each gets cores/N TensorFlow threads unless --threads says otherwise")
    run.add_argument("--gpus", metavar="0,1,...",
                     help="GPU indices: each worker sees one (CUDA_VISIBLE_DEVICES), worker i the "
                     "i-th, round-robin when workers outnumber GPUs")

    worker = _command(commands, "worker", cmd_worker,
                      "run trials of a shared study until it is done (one of many workers)")
    _study_options(worker)

    promote = _command(commands, "promote", cmd_promote,
                       "register the best trial's model; champion if it beats the champion")
    promote.add_argument("study", help="the study's name")
    _storage_options(promote)
    promote.add_argument("--force", action="store_true", help="make it champion regardless")
    promote.add_argument("--model-name", help="registered model name (default: the spec's)")
    promote.add_argument("--trial", type=int, metavar="N",
                         help="promote complete trial N instead of the best one")

    fetch = _command(commands, "fetch", cmd_fetch, "download a registered model")
    fetch.add_argument("model", help="NAME, NAME@ALIAS or NAME/VERSION (default alias champion)")
    fetch.add_argument("--out", required=True, type=Path, help="folder to write the model into")
    fetch.add_argument("--force", action="store_true", help="replace a model.keras already there")
    _tracking_option(fetch)

    history = _command(commands, "history", cmd_history,
                       "the alias moves of a registered model (who was champion when)")
    history.add_argument("model", help="the registered model's name")
    _tracking_option(history)

    serve = _command(commands, "serve", cmd_serve,
                     "serve a registered model over HTTP (MLflow's scoring server)")
    serve.add_argument("model", help="NAME, NAME@ALIAS or NAME/VERSION (default alias champion)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5001, help="default 5001 (the UI has 5000)")
    _tracking_option(serve)

    predict = _command(commands, "predict", cmd_predict, "predict the expression of face images")
    default_model = f"{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"
    predict.add_argument("--model", default=default_model,
                         help=f"NAME@ALIAS or NAME/VERSION (default {default_model})")
    predict.add_argument("images", nargs="+", type=Path, help="image files")
    predict.add_argument("--box", help="crop first: top,left,right,bottom (ExpW's order)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per face, every probability at full precision")
    _tracking_option(predict)

    status = _command(commands, "status", cmd_status, "the trials of a study")
    status.add_argument("study", help="the study's name")
    _storage_option(status)

    studies = _command(commands, "studies", cmd_studies, "the studies in the storage")
    _storage_option(studies)

    ui = _command(commands, "ui", cmd_ui, "start the MLflow UI on the project's store and print "
                  "the URL of a study's runs")
    _tracking_option(ui)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--study", help="the study whose runs to show (default: the most recent)")
    ui.add_argument("--open", action="store_true", help="open the URL in a web browser")

    report = _command(commands, "report", cmd_report, "refresh a study run's description and "
                      "plots (works on a study in progress)")
    report.add_argument("study", help="the study's name")
    _storage_options(report)
    report.add_argument("--out", type=Path, help="also write description.md and plots/ here")

    dashboard = _command(commands, "dashboard", cmd_dashboard,
                         "start optuna-dashboard on the Optuna storage")
    _storage_option(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)

    data = commands.add_parser("data", help="datasets: check a real one, make a synthetic one")
    data_commands = data.add_subparsers(metavar="COMMAND")
    check = _command(data_commands, "check", cmd_data_check, "report what the reader sees")
    check.add_argument("root", type=Path, help="the ExpW folder (holding label.lst)")
    check.add_argument("--label-file", type=Path)
    check.add_argument("--image-dir", type=Path)
    check.add_argument("--strict", action="store_true", help="unreadable images are errors")
    check.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    synth = _command(data_commands, "synth", cmd_data_synth, "write a synthetic ExpW dataset")
    synth.add_argument("out", type=Path)
    synth.add_argument("--faces", type=int, default=1400)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--imbalance", action="store_true", help="ExpW's class frequencies")
    return parser


def _command(group, name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    return parser


def _storage_option(parser) -> None:
    parser.add_argument("--storage", help="Optuna storage URL (default: $FER_SEARCH_STORAGE, "
                        "the spec's, else sqlite:///studies/optuna.db)")


def _tracking_option(parser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                        "$MLFLOW_TRACKING_URI, the spec's, else sqlite:///mlruns/mlflow.db)")


def _storage_options(parser) -> None:
    _storage_option(parser)
    _tracking_option(parser)


def _study_options(parser) -> None:
    parser.add_argument("spec", type=Path, help="the study spec (studies/*.yaml)")
    parser.add_argument("--n-trials", type=_positive_int, help="run at most N trials now")
    parser.add_argument("--timeout", type=float, help="start no trial after S seconds")
    _storage_options(parser)
    parser.add_argument("--cache-dir", type=Path, help="crop and feature cache (default: spec's)")
    parser.add_argument("--threads", type=_positive_int,
                        help="TensorFlow threads for this process (default: all cores)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {value}")
    return value


# ----------------------------------------------------------------------------------- commands


def cmd_run(args) -> int:
    # `run --workers N` forwards signals to its workers once they start (search.workers).
    gpus = None
    if args.gpus is not None:
        from search.workers import GPU_ENV, parse_gpus

        gpus = parse_gpus(args.gpus)  # checked before anything starts
        if args.workers == 1:  # this process is the worker: before TensorFlow starts
            os.environ[GPU_ENV] = gpus[0]
    with signals.for_command(signals.RUN):
        if args.workers > 1:
            return _run_workers(args, gpus)
        summary, spec, urls, data = _run(args, leaderboard=True)
        if args.promote:
            _print_promotion(_promote(spec.name, urls, force=False, model_name=None, data=data))
    return EXIT_OK


def cmd_worker(args) -> int:
    with signals.for_command(signals.WORKER):
        _run(args, leaderboard=False)
    return EXIT_OK


def _run_workers(args, gpus: tuple[str, ...] | None) -> int:
    """`run --workers N`: prepares the study here, then runs N `fer-search worker` processes on
    it (search.workers), and prints the leaderboard when they are done."""
    from search.data import DataProvider
    from search.spec import load_spec
    from search.storage import check_reachable, mask_url, resolve_storage
    from search.tracking import resolve_tracking_uri
    from search.workers import WorkerPlan, prepare_study, run_workers

    spec = load_spec(args.spec)
    storage_url = resolve_storage(args.storage, spec.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    check_reachable(storage_url)
    # Bad data stops before the banner; prepare_study warns about skipped faces, once.
    DataProvider(spec, args.cache_dir, warn=lambda line: None).first()
    err.print(f"study [bold]{spec.name}[/] ({spec.sampler}, {spec.metric}) in "
              f"{mask_url(storage_url)}; runs in {mask_url(tracking_uri)}; "
              f"{args.workers} workers")
    prepare_study(spec, storage_url=storage_url, tracking_uri=tracking_uri,
                  cache_dir=args.cache_dir)
    plan = WorkerPlan(spec_path=args.spec, workers=args.workers, storage_url=storage_url,
                      tracking_uri=tracking_uri, n_trials=args.n_trials, timeout=args.timeout,
                      cache_dir=args.cache_dir, threads=args.threads, debug=args.debug,
                      gpus=gpus)
    result = run_workers(plan, sink=err.file)
    err.print(result.summary())
    import optuna

    from search.progress import leaderboard_table

    with _storage(storage_url) as storage:
        out.print(leaderboard_table(optuna.load_study(study_name=spec.name, storage=storage),
                                    spec.metric))
    if result.exit_code != EXIT_OK:
        return result.exit_code
    if args.promote:
        _start_tensorflow(args.threads)
        _print_promotion(_promote(spec.name, (storage_url, tracking_uri), force=False,
                                  model_name=None))
    return EXIT_OK


def _run(args, leaderboard: bool):
    from search.spec import load_spec
    from search.storage import check_reachable, mask_url, resolve_storage
    from search.tracking import resolve_tracking_uri

    spec = load_spec(args.spec)  # validated before anything is created
    storage_url = resolve_storage(args.storage, spec.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, spec.tracking_uri)
    check_reachable(storage_url)  # an unreachable store fails in seconds, not after TF loads
    from search.data import DataProvider

    data = DataProvider(spec, args.cache_dir)
    data.first()  # bad data stops here, before the banner names a study that never starts
    _start_tensorflow(args.threads)
    from search.progress import TrialProgress, leaderboard_table
    from search.study import run_study

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
    err.print(f"{summary.stopped_because}: {len(summary.outcomes)} trials run now")
    if leaderboard:
        import optuna

        with _storage(storage_url) as storage:
            study = optuna.load_study(study_name=spec.name, storage=storage)
            out.print(leaderboard_table(study, spec.metric))
        if summary.best is not None:
            out.print(f"best: trial {summary.best.number}, {spec.metric} = "
                      f"{summary.best.value:.4f}, params {summary.best.params}")
        out.print(f"inspect the runs: fer-search ui --study {spec.name}   (prints the URL of "
                  "the runs; the study run holds the report and plots)")
    return summary, spec, (storage_url, tracking_uri), data


def cmd_promote(args) -> int:
    from search.storage import resolve_storage
    from search.tracking import resolve_tracking_uri

    urls = (resolve_storage(args.storage, None), resolve_tracking_uri(args.tracking_uri, None))
    _require_stores(*urls)  # in seconds, before TensorFlow loads
    _start_tensorflow(None)
    _print_promotion(_promote(args.study, urls, force=args.force, model_name=args.model_name,
                              trial_number=args.trial))
    return EXIT_OK


def _promote(study_name: str, urls: tuple[str, str], force: bool, model_name: str | None,
             data=None, trial_number: int | None = None):
    from search.promotion import promote

    storage_url, tracking_uri = urls
    result = promote(study_name, storage_url=storage_url, tracking_uri=tracking_uri, force=force,
                     model_name=model_name, data=data, trial_number=trial_number)
    _refresh_report(study_name, urls)  # the study run names the version registered
    return result


def _refresh_report(study_name: str, urls: tuple[str, str]) -> None:
    from search.report import refresh_study

    try:
        refresh_study(study_name, *urls)
    except Exception as error:  # the promotion stands; only its mention on the study run waits
        err.print(f"warning: the study report was not refreshed ({_one_line(error)}); "
                  f"`fer-search report {study_name}` retries", markup=False)


def _print_promotion(result) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.test_metrics.items())
    how = "already registered as" if result.reused else "registered"
    out.print(f"{how} {result.model_name} version {result.version} "
              f"(trial {result.trial_number}; {metrics}): [bold]{result.alias}[/] "
              f"({result.reason})")
    out.print(f"load it: mlflow.pyfunc.load_model('models:/{result.model_name}@{result.alias}')")


def cmd_fetch(args) -> int:
    from search.registry import KERAS_FILE, fetch, parse_model_ref
    from search.tracking import resolve_tracking_uri

    parse_model_ref(args.model)  # a bad reference fails before MLflow is even imported
    if (args.out / KERAS_FILE).exists() and not args.force:
        raise InputError(f"--out: {args.out / KERAS_FILE} already exists; pass --force to "
                         f"replace it")
    tracking_uri = resolve_tracking_uri(args.tracking_uri, None)
    _require_stores(None, tracking_uri)
    created = _missing_folders(args.out)
    try:
        path = fetch(args.model, args.out, tracking_uri=tracking_uri)
    except BaseException:
        for folder in created:  # a failed fetch leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    out.print(f"wrote {path}")
    return EXIT_OK


def cmd_history(args) -> int:
    from search.aliases import alias_history, history_table
    from search.registry import check_model_name, registered_model, registry_tracker
    from search.tracking import resolve_tracking_uri

    name = check_model_name(args.model)
    uri = resolve_tracking_uri(args.tracking_uri, None)
    _require_stores(None, uri)
    client = registry_tracker(uri).client
    registered = registered_model(client, name, uri)
    out.print(history_table(name, alias_history(client, name), registered.aliases))
    return EXIT_OK


def cmd_serve(args) -> int:
    from search.serve import serve
    from search.tracking import resolve_tracking_uri

    def ready(version, url: str) -> None:
        out.print(f"serving {version.name} version {version.version} ({args.model}) on "
                  f"{url}: POST {url}/invocations, GET {url}/ping (Ctrl-C to stop)")
        sys.stdout.flush()

    tracking_uri = resolve_tracking_uri(args.tracking_uri, None)
    _require_stores(None, tracking_uri)
    _start_tensorflow(None)
    serve(args.model, tracking_uri=tracking_uri,
          host=args.host, port=args.port, on_ready=ready)
    return EXIT_OK


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` that do not exist yet, deepest first."""
    missing = []
    path = path.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def cmd_predict(args) -> int:
    from search.registry import parse_model_ref
    from search.tracking import resolve_tracking_uri

    parse_model_ref(args.model)  # bad input fails in a blink, before TensorFlow loads
    box = _parse_box(args.box)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, None)
    _require_stores(None, tracking_uri)
    _start_tensorflow(None)
    from search.predict import predict_images

    predictions = predict_images(
        args.model, args.images, box=box, warn=lambda text: err.print(
            f"warning: {text}", markup=False, soft_wrap=True),
        tracking_uri=tracking_uri)
    for p in predictions:
        if args.json:  # one object per face, every probability at full precision
            print(json.dumps({"file": str(p.file), "expression": p.expression,
                              "probabilities": p.probabilities}), flush=True)
            continue
        probs = "  ".join(f"{name} {value:.3f}" for name, value in p.probabilities.items())
        out.print(f"{p.file}: [bold]{p.expression}[/]  ({probs})")
    return EXIT_OK


def _parse_box(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = tuple(int(float(p)) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"--box: expected top,left,right,bottom (4 numbers), but got {text!r}")
    return values  # type: ignore[return-value]


def cmd_status(args) -> int:

    from search.progress import trials_table
    from search.storage import resolve_storage

    with _storage(resolve_storage(args.storage, None), read_only=True) as storage:
        out.print(trials_table(_load_study(args.study, storage)))
    return EXIT_OK


def cmd_studies(args) -> int:
    import optuna

    from search.progress import studies_table
    from search.storage import resolve_storage

    with _storage(resolve_storage(args.storage, None), read_only=True) as storage:
        out.print(studies_table(optuna.get_all_study_summaries(storage=storage)))
    return EXIT_OK


def cmd_ui(args) -> int:
    """Prints the URL of the study's runs in the model-training view (MLflow 3 would open its
    GenAI view), then becomes the MLflow UI; on a tracking server, that server is the UI."""
    from search.tracking import (
        DEFAULT_ARTIFACT_ROOT,
        Tracker,
        pick_experiment,
        resolve_tracking_uri,
        runs_url,
    )

    uri = resolve_tracking_uri(args.tracking_uri, None)
    _require_stores(None, uri)
    on_server = uri.startswith(("http://", "https://"))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = _without_userinfo(uri) if on_server else f"http://{host}:{args.port}"
    experiment = pick_experiment(Tracker(uri).client, args.study)
    url = runs_url(base, experiment.experiment_id) if experiment is not None else base
    what = f"study {experiment.name!r}" if experiment is not None else "no study yet"
    if on_server:
        out.print(f"{what}: {url}", soft_wrap=True)
        if args.open:
            import webbrowser

            webbrowser.open(url)
        return EXIT_OK
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", args.host, "--port", str(args.port), "--workers", "1"]
    DEFAULT_ARTIFACT_ROOT.mkdir(parents=True, exist_ok=True)
    command += ["--default-artifact-root", DEFAULT_ARTIFACT_ROOT.resolve().as_uri()]
    out.print(f"MLflow UI on {base} (Ctrl-C to stop); {what}: {url}", soft_wrap=True)
    sys.stdout.flush()
    if args.open:
        _open_when_up(f"{base}/health", url)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # Become the UI process: Ctrl-C and kill reach MLflow itself, and no server outlives us.
    os.execve(sys.executable, command, env)
    return EXIT_OK  # not reached


def _without_userinfo(url: str) -> str:
    """`url` without `user:password@`: for printing and for a browser (which asks itself)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port
                                                               else "")))


_OPEN_WHEN_UP = """
import sys, time, urllib.request, webbrowser
for _ in range(240):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        break
    except Exception:
        time.sleep(0.5)
webbrowser.open(sys.argv[2])
"""


def _open_when_up(health_url: str, url: str) -> None:
    """Opens `url` in a browser once the server answers `health_url` (we are about to become
    the server, so a small detached process waits for it)."""
    import subprocess

    subprocess.Popen([sys.executable, "-c", _OPEN_WHEN_UP, health_url, url],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def cmd_report(args) -> int:
    from search.report import refresh_study
    from search.storage import resolve_storage
    from search.tracking import resolve_tracking_uri

    report = refresh_study(args.study, resolve_storage(args.storage, None),
                           resolve_tracking_uri(args.tracking_uri, None), args.out)
    out.print(report.description, markup=False, soft_wrap=True)
    where = f"study run {report.run_id}" if report.run_id else "no study run (never run here)"
    drawn = ", ".join(report.plots) or "none"
    out.print(f"refreshed {where}: description, tags and plots ({drawn})", soft_wrap=True)
    if args.out is not None:
        out.print(f"wrote {args.out / 'description.md'} and {args.out / 'plots'}/")
    return EXIT_OK


def cmd_dashboard(args) -> int:
    from search.storage import mask_url, resolve_storage

    try:
        import optuna_dashboard
    except ImportError:
        raise InputError("optuna-dashboard is not installed (a dependency of fer-search): "
                         "pip install -c constraints.txt -e .") from None
    url = resolve_storage(args.storage, None)
    # The URL comes by flag or $FER_SEARCH_STORAGE (compose), never on optuna-dashboard's own
    # command line, where `ps` would show its password.
    with _storage(url, read_only=True) as storage:
        out.print(f"optuna-dashboard on http://{args.host}:{args.port} for {mask_url(url)} "
                  f"(Ctrl-C to stop)")
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return EXIT_OK


def cmd_data_check(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    import trainer
    from search.data import report_lines

    config = trainer.DataConfig(root=args.root, label_file=args.label_file,
                                image_dir=args.image_dir, strict=args.strict,
                                cache_dir=args.cache_dir)
    # Every image is decoded: a bar on stderr (gone when done) says how far it is.
    columns = (TextColumn("checking images"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)
        report = trainer.inspect_dataset(
            config, on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
        return EXIT_OK
    from search.progress import data_report_table

    table = data_report_table(report)
    table.caption = None  # the footer is printed below, unwrapped, whatever the width
    out.print(table)
    for line in report_lines(report):
        out.print(line, markup=False, soft_wrap=True)
    return EXIT_OK


def cmd_data_synth(args) -> int:
    import trainer

    if args.faces < 7:
        raise InputError(f"--faces: expected an integer >= 7 (a face per class), but got "
                         f"{args.faces}")
    root = trainer.generate_synthetic_expw(args.out, args.faces, args.seed,
                                           imbalance=args.imbalance)
    out.print(f"wrote {args.faces} faces in ExpW's layout to {root}")
    return EXIT_OK


# ------------------------------------------------------------------------------------ helpers


def _start_tensorflow(threads: int | None) -> None:
    from trainer.runtime import load_tensorflow, set_threads

    load_tensorflow(threads=threads)
    set_threads(threads)  # TensorFlow was already loaded (tests): the same value, or an error


def _storage(url: str, read_only: bool = False):
    """The storage at `url` for a `with` block, closed after (a one-shot command: no retries;
    `read_only`: it must exist, nothing is created)."""
    from search.storage import storage_session

    return storage_session(url, read_only=read_only)


def _require_stores(storage_url: str | None, tracking_uri: str) -> None:
    """One-shot commands: each store exists and answers, else one line within seconds."""
    from search.storage import require_tracking_store, storage_session

    if storage_url is not None:
        with storage_session(storage_url, read_only=True):
            pass
    require_tracking_store(tracking_uri)


def _load_study(name: str, storage):
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    if name not in names:
        raise InputError(f"no study named {name!r} in the storage; studies there: "
                         f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


if __name__ == "__main__":
    sys.exit(main())
