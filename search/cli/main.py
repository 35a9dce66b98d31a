"""`fer-search`: the command line, grouped by noun; each command body calls the library.

Exit codes (search.contracts): 0 success, 2 bad input (one line on stderr), 1 runtime failure,
130 interrupted (`run`; a `worker` stopped by SIGINT or SIGTERM records its trial and exits 0).
`--debug` shows tracebacks. What each signal does to each command: search.study.signals.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import trainer
from search.cli.common import err, one_line
from search.contracts import (
    CHAMPION_ALIAS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_MB,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MODEL_NAME,
    DEFAULT_PROMOTION_RULE,
    EXIT_BAD_INPUT,
    EXIT_FAILED_TRIALS,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROMOTION_RULES,
)
from search.errors import FailureBudgetSpent, InputError, SearchError, SpecError


def entry() -> None:
    """The `fer-search` program (and `python -m search.cli`): `main`, then the exit.

    Python's last garbage collections at exit walk every object that TensorFlow, MLflow and
    matplotlib made: about 1 s after a study's work is all done (0.8 s for TensorFlow's import
    alone, 0.08 s frozen). Frozen, those objects are skipped; by then every file and store a
    command wrote is closed (`with` blocks, disposed engines), and `atexit` hooks still run.
    Not in `main`: a test calls it many times in one process, which must keep collecting."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _handler(args.handler)(args) or EXIT_OK
    except KeyboardInterrupt:
        if getattr(args, "trials_started", False):
            err.print("interrupted: the running trial was recorded as failed and will be retried")
        else:
            err.print("interrupted before any trial started: nothing was recorded")
        # A worker is stopped on purpose (Ctrl-C twice, or a stop before any trial started):
        # its trial is recorded, so that is a clean exit for whoever supervises it.
        return EXIT_OK if args.command == "worker" else EXIT_INTERRUPTED
    except Exception as error:  # one line, unless --debug
        code = exit_code_of(error)
        if args.debug:
            raise
        err.print(f"error: {one_line(error)}", markup=False, soft_wrap=True)
        if code == EXIT_FAILURE and not _explained(error):
            err.print("(run with --debug for the traceback)")
        return code


def exit_code_of(error: BaseException) -> int:
    """2 for input the user can fix (spec, data, weights, names), 3 when the study's failure
    budget is spent (`max_failed_trials`), 1 for everything else."""
    if isinstance(error, FailureBudgetSpent):
        return EXIT_FAILED_TRIALS

    bad_input = (SpecError, InputError, trainer.ConfigError, trainer.DataError,
                 trainer.WeightsError)
    return EXIT_BAD_INPUT if isinstance(error, bad_input) else EXIT_FAILURE


def _explained(error: BaseException) -> bool:
    """Errors raised on purpose say all there is to say; no traceback hint after them."""
    return isinstance(error, SearchError | trainer.TrainerError)


def _handler(name: str) -> Callable[[argparse.Namespace], int | None]:
    """The command's function, named "module:function" by the parser, its module imported now:
    the CLI's one lazy import point (as MLflow's own CLI does). Each command module imports what
    it needs at its top, so a command pays for its own libraries only: measured here, importing
    every command module takes ~5.5 s (MLflow ~2.3 s, Optuna with SQLAlchemy ~1 s, matplotlib,
    uvicorn, ...), where `fer-search --help` takes ~0.2 s, `studies` and `status` ~2 s (Optuna)
    and `data synth` no Optuna, MLflow or TensorFlow at all."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


# ------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fer-search",
        description="Hyperparameter search for facial-expression recognition (VGG16 on ExpW).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(metavar="COMMAND")

    run = _command(commands, "run", "search.cli.study_commands:cmd_run",
                   "run (or resume) a study from its spec")
    _study_options(run)
    run.add_argument("--promote", action="store_true",
                     help="promote the best trial to the model registry at the end")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="run the study in N local worker processes (default 1: this one); "
                     "each gets cores/N TensorFlow threads unless --threads says otherwise")
    run.add_argument("--gpus", metavar="0,1,...",
                     help="GPU indices: each worker sees one (CUDA_VISIBLE_DEVICES), worker i the "
                     "i-th, round-robin when workers outnumber GPUs")

    worker = _command(commands, "worker", "search.cli.study_commands:cmd_worker",
                      "run trials of a shared study until it is done (one of many workers)")
    _study_options(worker)

    promote = _command(commands, "promote", "search.cli.study_commands:cmd_promote",
                       "register the best trial's model; champion if it beats the champion")
    promote.add_argument("study", help="the study's name")
    _storage_options(promote)
    promote.add_argument("--force", action="store_true", help="make it champion regardless")
    promote.add_argument("--model-name", help="registered model name (default: the spec's)")
    promote.add_argument("--trial", type=int, metavar="N",
                         help="promote complete trial N instead of the best one")
    promote.add_argument(
        "--rule", choices=PROMOTION_RULES, default=DEFAULT_PROMOTION_RULE,
        help="which trial is the best: best-feasible (default), the best by the study's first "
        "objective (or its metric) among the trials that meet every constraint of its spec; "
        "best, the best by it, constraints ignored. The version's description says which rule "
        "chose it and what it traded")

    fetch = _command(commands, "fetch", "search.cli.model_commands:cmd_fetch",
                     "download a registered model")
    fetch.add_argument("model", help="NAME, NAME@ALIAS or NAME/VERSION (default alias champion)")
    fetch.add_argument("--out", required=True, type=Path, help="folder to write the model into")
    fetch.add_argument("--force", action="store_true", help="replace a model.keras already there")
    _tracking_option(fetch)

    history = _command(commands, "history", "search.cli.model_commands:cmd_history",
                       "the alias moves of a registered model (who was champion when)")
    history.add_argument("model", help="the registered model's name")
    _tracking_option(history)

    serve = _command(commands, "serve", "search.cli.model_commands:cmd_serve",
                     "serve a registered model over HTTP (/invocations, /ping)")
    serve.add_argument("model", help="NAME, NAME@ALIAS or NAME/VERSION (default alias champion)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5001, help="default 5001 (the UI has 5000)")
    _serve_options(serve)
    _tracking_option(serve)

    predict = _command(commands, "predict", "search.cli.model_commands:cmd_predict",
                       "predict the expression of face images")
    default_model = f"{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"
    predict.add_argument("--model", default=default_model,
                         help=f"NAME@ALIAS or NAME/VERSION (default {default_model})")
    predict.add_argument("images", nargs="+", type=Path, help="image files")
    predict.add_argument("--box", help="crop first: top,left,right,bottom (ExpW's order)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per face, every probability at full precision")
    _trust_option(predict)
    _tracking_option(predict)

    status = _command(commands, "status", "search.cli.inspect_commands:cmd_status",
                      "the trials of a study")
    status.add_argument("study", help="the study's name")
    _storage_option(status)

    studies = _command(commands, "studies", "search.cli.inspect_commands:cmd_studies",
                       "the studies in the storage")
    _storage_option(studies)

    ui = _command(commands, "ui", "search.cli.tool_commands:cmd_ui", "start the MLflow UI on the "
                  "project's store and print the URL of a study's runs")
    _tracking_option(ui)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--study", help="the study whose runs to show (default: the most recent)")
    ui.add_argument("--open", action="store_true", help="open the URL in a web browser")

    report = _command(commands, "report", "search.cli.study_commands:cmd_report", "refresh a study "
                      "run's description and plots (works on a study in progress)")
    report.add_argument("study", help="the study's name")
    _storage_options(report)
    report.add_argument("--out", type=Path, help="also write description.md and plots/ here")

    dashboard = _command(commands, "dashboard", "search.cli.tool_commands:cmd_dashboard",
                         "start optuna-dashboard on the Optuna storage")
    _storage_option(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)

    data = commands.add_parser("data", help="datasets: check a real one, make a synthetic one")
    data_commands = data.add_subparsers(metavar="COMMAND")
    check = _command(data_commands, "check", "search.cli.data_commands:cmd_data_check",
                     "report what the reader sees")
    check.add_argument("root", type=Path, help="the ExpW folder (holding label.lst)")
    check.add_argument("--label-file", type=Path)
    check.add_argument("--image-dir", type=Path)
    check.add_argument("--strict", action="store_true", help="unreadable images are errors")
    check.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    synth = _command(data_commands, "synth", "search.cli.data_commands:cmd_data_synth",
                     "write a synthetic ExpW dataset")
    synth.add_argument("out", type=Path)
    synth.add_argument("--faces", type=int, default=1400)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--imbalance", action="store_true", help="ExpW's class frequencies")
    return parser


def _command(group, name: str, handler: str, help_text: str) -> argparse.ArgumentParser:
    """A command's parser; `handler` names its function, "module:function" (see `_handler`)."""
    parser = group.add_parser(name, help=help_text, description=help_text)
    # `command`: the command's words ("run", "data check"), as `main` compares them.
    parser.set_defaults(handler=handler, command=parser.prog.removeprefix("fer-search "))
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
    parser.add_argument("--warm-start", metavar="STUDY",
                        help="start from an earlier study (the spec's warm_start.study, or a new "
                        "warm_start with top 5 in this study's storage): its best configurations "
                        "that fit the space run first; a TPE study learns from its trials")


TRUST_HELP = ("load the model by running the code stored with it in the tracking server "
              "(MLflow's loader), not fer-search's installed code: only if you trust everyone "
              "who can write to that server")


def _trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-stored-code`` (predict, serve)."""
    parser.add_argument("--trust-stored-code", action="store_true", help=TRUST_HELP)


def _serve_options(parser: argparse.ArgumentParser) -> None:
    """What `serve` accepts: body size, batch size, requests at once; and the trust flag."""
    parser.add_argument("--max-body-mb", type=_positive_float, default=DEFAULT_MAX_BODY_MB,
                        metavar="MB", help=f"larger request bodies get 413 before they are read "
                        f"(default {DEFAULT_MAX_BODY_MB:g} MB)")
    parser.add_argument("--max-batch", type=_positive_int, default=DEFAULT_MAX_BATCH,
                        metavar="N", help=f"most faces per request (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-concurrency", type=_positive_int,
                        default=DEFAULT_MAX_CONCURRENCY, metavar="N",
                        help=f"requests read and predicted at once; others wait, then get 503 "
                        f"(default {DEFAULT_MAX_CONCURRENCY})")
    _trust_option(parser)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, but got {text!r}")
    return value


if __name__ == "__main__":
    entry()
