"""`fer-search fetch`, `history`, `serve`, `predict`: the commands about registered models.
MLflow and (serve, predict) TensorFlow; never Optuna."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from search.cli.common import err, in_use, out, start_tensorflow
from search.contracts import EXIT_OK
from search.errors import InputError
from search.registry.aliases import alias_history, history_table
from search.registry.refs import (
    KERAS_FILE,
    check_model_name,
    fetch,
    parse_model_ref,
    registered_model,
    registry_tracker,
)
from search.tracking.runs import resolve_tracking_uri
from search.tracking.store_check import require_tracking_store

# `predict` and `serve` load a model through search.registry.loading, which imports MLflow
# (~2.3 s here): they import it once their input is checked, so a bad reference, box or store
# fails at once, before MLflow and TensorFlow (tests/search/test_faults.py). `fetch` and
# `history` reach MLflow through refs, which imports it where first used.


def cmd_fetch(args) -> int:
    parse_model_ref(args.model)  # a bad reference fails before MLflow is reached
    if (args.out / KERAS_FILE).exists() and not args.force:
        raise InputError(f"--out: {args.out / KERAS_FILE} already exists; pass --force to "
                         f"replace it")
    tracking_uri = _tracking_store(args)
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
    name = check_model_name(args.model)
    uri = _tracking_store(args)
    client = registry_tracker(uri).client
    registered = registered_model(client, name, uri)
    out.print(history_table(name, alias_history(client, name), registered.aliases))
    return EXIT_OK


def cmd_serve(args) -> int:
    parse_model_ref(args.model)
    tracking_uri = _tracking_store(args)
    from search.registry.serve import Limits, serve

    limits = Limits(max_body_bytes=int(args.max_body_mb * 1_000_000), max_batch=args.max_batch,
                    max_concurrency=args.max_concurrency)

    def ready(model, url: str) -> None:
        code = "the code stored with it (--trust-stored-code)" if model.stored_code else \
            "installed code"
        out.print(f"serving {model.name} version {model.version} ({args.model}) on "
                  f"{url}: POST {url}/invocations, GET {url}/ping (Ctrl-C to stop); loaded "
                  f"with {code}", markup=False)
        sys.stdout.flush()

    start_tensorflow(None)
    serve(args.model, tracking_uri=tracking_uri, host=args.host, port=args.port, limits=limits,
          trust_stored_code=args.trust_stored_code, on_ready=ready)
    return EXIT_OK


def cmd_predict(args) -> int:
    parse_model_ref(args.model)  # bad input fails in a blink, before TensorFlow loads
    box = _parse_box(args.box)
    tracking_uri = _tracking_store(args)
    from search.registry.predict import predict_images

    start_tensorflow(None)
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


def _tracking_store(args) -> str:
    """The command's tracking URI, checked: it exists and answers, else one line in seconds."""
    uri = resolve_tracking_uri(args.tracking_uri, None)
    in_use(uri)
    require_tracking_store(uri)
    return uri


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` that do not exist yet, deepest first."""
    missing = []
    path = path.absolute()
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


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
