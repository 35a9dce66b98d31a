"""A registered model behind MLflow's scoring server: `fer-search serve NAME@ALIAS`.

The reference is resolved to one version first (errors name what the registry holds, and an
alias moved later does not change the model being served), the pyfunc model is loaded once, and
MLflow's own scoring app (`mlflow.pyfunc.scoring_server.init`: ``POST /invocations``,
``GET /ping``, ``/health``, ``/version``) runs in this process under uvicorn, as
``mlflow models serve --env-manager local`` would, minus a second process and a model copy.

Request: ``{"inputs": [face, ...]}``, each face an S x S x 3 nested list of RGB numbers in
0..255 (integers or floats). Response: ``{"predictions": [{"angry": p, ..., "expression":
"happy"}, ...]}``. Needs no Optuna.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from search.errors import InputError
from search.registry.refs import registry_tracker, resolve_version

DEFAULT_PORT = 5001  # `fer-search ui` takes 5000


def load_served_model(model_ref: str, *, tracking_uri: str):
    """(the resolved `ModelVersion`, its loaded pyfunc model)."""
    import mlflow.pyfunc

    tracker = registry_tracker(tracking_uri)
    version = resolve_version(tracker.client, model_ref, tracking_uri)
    return version, mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")


def serve(
    model_ref: str,
    *,
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    on_ready: Callable[[object, str], None] | None = None,
) -> None:
    """Serves the model until interrupted (Ctrl-C or SIGTERM end it cleanly).

    Args:
        model_ref: NAME, NAME@ALIAS or NAME/VERSION (plain NAME = NAME@champion).
        tracking_uri: the MLflow registry.
        host, port: where to listen.
        on_ready: called with (the served `ModelVersion`, the base URL) once the model is
            loaded, before the server starts listening.

    Raises:
        InputError: bad or unknown reference, or the port is taken.
    """
    _check_port_free(host, port)  # before the slow model load
    version, model = load_served_model(model_ref, tracking_uri=tracking_uri)
    import uvicorn
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(model)
    if on_ready is not None:
        on_ready(version, f"http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_port_free(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise InputError(f"--port: expected 1..65535, but got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InputError(f"--host: cannot resolve {host!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise InputError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from None
