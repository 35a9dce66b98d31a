"""`fer-search promote`, `fetch`, `history`, `serve`, `predict`: the commands about registered
models."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from search.cli.common import err, one_line, out, require_stores, start_tensorflow
from search.contracts import EXIT_OK
from search.errors import InputError


def cmd_promote(args) -> int:
    from search.storage.sessions import resolve_storage
    from search.tracking.runs import resolve_tracking_uri

    urls = (resolve_storage(args.storage, None), resolve_tracking_uri(args.tracking_uri, None))
    require_stores(*urls)  # in seconds, before TensorFlow loads
    start_tensorflow(None)
    print_promotion(promote_study(args.study, urls, force=args.force, model_name=args.model_name,
                              trial_number=args.trial))
    return EXIT_OK


def promote_study(study_name: str, urls: tuple[str, str], force: bool, model_name: str | None,
             data=None, trial_number: int | None = None):
    from search.registry.promotion import promote

    storage_url, tracking_uri = urls
    result = promote(study_name, storage_url=storage_url, tracking_uri=tracking_uri, force=force,
                     model_name=model_name, data=data, trial_number=trial_number)
    _refresh_report(study_name, urls)  # the study run names the version registered
    return result


def _refresh_report(study_name: str, urls: tuple[str, str]) -> None:
    from search.tracking.report import refresh_study

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
    out.print(f"load it: mlflow.pyfunc.load_model('models:/{result.model_name}@{result.alias}')")


def cmd_fetch(args) -> int:
    from search.registry.refs import KERAS_FILE, fetch, parse_model_ref
    from search.tracking.runs import resolve_tracking_uri

    parse_model_ref(args.model)  # a bad reference fails before MLflow is even imported
    if (args.out / KERAS_FILE).exists() and not args.force:
        raise InputError(f"--out: {args.out / KERAS_FILE} already exists; pass --force to "
                         f"replace it")
    tracking_uri = resolve_tracking_uri(args.tracking_uri, None)
    require_stores(None, tracking_uri)
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
    from search.registry.aliases import alias_history, history_table
    from search.registry.refs import check_model_name, registered_model, registry_tracker
    from search.tracking.runs import resolve_tracking_uri

    name = check_model_name(args.model)
    uri = resolve_tracking_uri(args.tracking_uri, None)
    require_stores(None, uri)
    client = registry_tracker(uri).client
    registered = registered_model(client, name, uri)
    out.print(history_table(name, alias_history(client, name), registered.aliases))
    return EXIT_OK


TRUST_HELP = ("load the model by running the code stored with it in the tracking server "
              "(MLflow's loader), not fer-search's installed code: only if you trust everyone "
              "who can write to that server")


def add_trust_option(parser: argparse.ArgumentParser) -> None:
    """``--trust-stored-code`` (predict, serve)."""
    parser.add_argument("--trust-stored-code", action="store_true", help=TRUST_HELP)


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """What `serve` accepts: body size, batch size, requests at once; and the trust flag."""
    from search.registry.serve import (
        DEFAULT_MAX_BATCH,
        DEFAULT_MAX_BODY_MB,
        DEFAULT_MAX_CONCURRENCY,
    )

    parser.add_argument("--max-body-mb", type=_positive_float, default=DEFAULT_MAX_BODY_MB,
                        metavar="MB", help=f"larger request bodies get 413 before they are read "
                        f"(default {DEFAULT_MAX_BODY_MB:g} MB)")
    parser.add_argument("--max-batch", type=_positive_int, default=DEFAULT_MAX_BATCH,
                        metavar="N", help=f"most faces per request (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--max-concurrency", type=_positive_int,
                        default=DEFAULT_MAX_CONCURRENCY, metavar="N",
                        help=f"requests read and predicted at once; others wait, then get 503 "
                        f"(default {DEFAULT_MAX_CONCURRENCY})")
    add_trust_option(parser)


def cmd_serve(args) -> int:
    from search.registry.serve import Limits, serve
    from search.tracking.runs import resolve_tracking_uri

    limits = Limits(max_body_bytes=int(args.max_body_mb * 1_000_000), max_batch=args.max_batch,
                    max_concurrency=args.max_concurrency)

    def ready(model, url: str) -> None:
        code = "the code stored with it (--trust-stored-code)" if model.stored_code else \
            "installed code"
        out.print(f"serving {model.name} version {model.version} ({args.model}) on "
                  f"{url}: POST {url}/invocations, GET {url}/ping (Ctrl-C to stop); loaded "
                  f"with {code}", markup=False)
        sys.stdout.flush()

    tracking_uri = resolve_tracking_uri(args.tracking_uri, None)
    require_stores(None, tracking_uri)
    start_tensorflow(None)
    serve(args.model, tracking_uri=tracking_uri, host=args.host, port=args.port, limits=limits,
          trust_stored_code=args.trust_stored_code, on_ready=ready)
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
    from search.registry.refs import parse_model_ref
    from search.tracking.runs import resolve_tracking_uri

    parse_model_ref(args.model)  # bad input fails in a blink, before TensorFlow loads
    box = _parse_box(args.box)
    tracking_uri = resolve_tracking_uri(args.tracking_uri, None)
    require_stores(None, tracking_uri)
    start_tensorflow(None)
    from search.registry.predict import predict_images

    predictions = predict_images(
        args.model, args.images, box=box, warn=lambda text: err.print(
            f"warning: {text}", markup=False, soft_wrap=True),
        tracking_uri=tracking_uri, trust_stored_code=args.trust_stored_code)
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, but got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, but got {text!r}")
    return value
