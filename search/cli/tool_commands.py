"""`fer-search ui`, `dashboard`: the viewers (the MLflow UI, optuna-dashboard)."""

from __future__ import annotations

import os
import subprocess
import sys
import webbrowser
from urllib.parse import urlsplit, urlunsplit

from search.cli.common import out
from search.cli.stores import require_stores, storage_for
from search.contracts import EXIT_OK
from search.errors import InputError
from search.storage.sessions import resolve_storage
from search.tracking.runs import (
    DEFAULT_ARTIFACT_ROOT,
    Tracker,
    pick_experiment,
    resolve_tracking_uri,
    runs_url,
)
from search.urls import mask_url

# optuna_dashboard is imported by `dashboard` alone, which says how to install it when it is
# missing: `ui` shares this module, and that import costs ~2.5 s here.


def cmd_ui(args) -> int:
    """Prints the URL of the study's runs in the model-training view (MLflow 3 would open its
    GenAI view), then becomes the MLflow UI; on a tracking server, that server is the UI."""
    uri = resolve_tracking_uri(args.tracking_uri, None)
    require_stores(None, uri)
    on_server = uri.startswith(("http://", "https://"))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = _without_userinfo(uri) if on_server else f"http://{host}:{args.port}"
    experiment = pick_experiment(Tracker(uri).client, args.study)
    url = runs_url(base, experiment.experiment_id) if experiment is not None else base
    what = f"study {experiment.name!r}" if experiment is not None else "no study yet"
    if on_server:
        out.print(f"{what}: {url}", soft_wrap=True)
        if args.open:
            webbrowser.open(url)
        return EXIT_OK
    DEFAULT_ARTIFACT_ROOT.mkdir(parents=True, exist_ok=True)
    command, env = mlflow_ui_command(uri, DEFAULT_ARTIFACT_ROOT.resolve().as_uri(), args.host,
                                     args.port)
    out.print(f"MLflow UI on {base} (Ctrl-C to stop); {what}: {url}", soft_wrap=True)
    sys.stdout.flush()
    if args.open:
        _open_when_up(f"{base}/health", url)
    # Become the UI process: Ctrl-C and kill reach MLflow itself, and no server outlives us.
    os.execve(sys.executable, command, env)
    return EXIT_OK  # not reached


def mlflow_ui_command(uri: str, artifact_root: str, host: str,
                      port: int) -> tuple[list[str], dict[str, str]]:
    """The `mlflow ui` command line and its environment. The store's URI, password and all,
    goes in the environment (``MLFLOW_BACKEND_STORE_URI``, which `mlflow server`/`ui` read
    for --backend-store-uri, and pass on to their workers the same way), never on the command
    line, which `ps` shows to every user of the machine."""
    command = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port),
               "--workers", "1"]
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_BACKEND_STORE_URI": uri,
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": artifact_root,
    }
    return command, env


def _without_userinfo(url: str) -> str:
    """`url` without `user:password@`: for printing and for a browser (which asks itself)."""
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
    the server, so a small detached process waits for it). Both are the local UI's
    ``http://host:port/...`` addresses: no store URI or password is on its command line."""
    subprocess.Popen([sys.executable, "-c", _OPEN_WHEN_UP, health_url, url],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def cmd_dashboard(args) -> int:
    try:
        import optuna_dashboard
    except ImportError:
        raise InputError("optuna-dashboard is not installed (a dependency of fer-search): "
                         "pip install -c constraints.txt -e .") from None
    url = resolve_storage(args.storage, None)
    # The URL comes by flag or $FER_SEARCH_STORAGE (compose), never on optuna-dashboard's own
    # command line, where `ps` would show its password.
    with storage_for(url, read_only=True) as storage:
        out.print(f"optuna-dashboard on http://{args.host}:{args.port} for {mask_url(url)} "
                  f"(Ctrl-C to stop)")
        optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return EXIT_OK
