"""A registered model over HTTP: `fer-search serve NAME@ALIAS`.

The reference is resolved to one version first (errors name what the registry holds, and an
alias moved later does not change the model being served) and loaded once, through installed
code only (`search.registry.loading`; ``--trust-stored-code`` runs the code stored with it). The
server is a small ASGI app of its own under uvicorn, not MLflow's scoring server, so that it can
refuse what would sink it before paying for it:

- a body over ``max_body_bytes`` (default 10 MB): 413, from its Content-Length before a byte of
  it is read, or once a chunked body passes the limit; the connection is then closed;
- faces not S x S x 3 for the model's S, or more than ``max_batch`` of them: 400;
- at most ``max_concurrency`` requests are read, decoded and predicted at once (the others wait
  for a slot, up to `SLOT_WAIT_S`, then 503), predictions run one at a time in a worker thread,
  and uvicorn answers 503 at once past `connection_limit` open connections;
- every error is one line of JSON, ``{"error_code": ..., "message": ...}``: no stack trace and
  no file path (an unexpected failure is logged on the server's stderr, not sent).

Loading writes nothing into the artifact store: the model is copied into a temporary folder.

Request (as MLflow's scoring server took it): ``POST /invocations``, ``Content-Type:
application/json``, ``{"inputs": [face, ...]}`` (or ``"instances"``), each face an S x S x 3
nested list of RGB numbers in 0..255 (integers or floats). Response: ``{"predictions":
[{"angry": p, ..., "expression": "happy"}, ...]}``. ``GET /ping`` and ``/health`` answer 200
once the model is loaded; ``GET /version`` names the served version. Needs no Optuna.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn

from search.contracts import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_MB, DEFAULT_MAX_CONCURRENCY
from search.errors import InputError
from search.registry.loading import load_version
from search.registry.pyfunc_model import as_batch

DEFAULT_PORT = 5001  # `fer-search ui` takes 5000
SLOT_WAIT_S = 30.0  # a request waits this long for a slot, then gets 503
BODY_READ_S = 60.0  # a body must arrive within this (a client trickling bytes holds a slot)
_JSON = "application/json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one server accepts.

    Attributes:
        max_body_bytes: the largest request body read (``--max-body-mb``, 10 MB by default).
        max_batch: the most faces in one request (``--max-batch``).
        max_concurrency: requests read, decoded and predicted at once (``--max-concurrency``).
    """

    max_body_bytes: int = int(DEFAULT_MAX_BODY_MB * 1_000_000)
    max_batch: int = DEFAULT_MAX_BATCH
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_concurrency"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"serve limits: {name}: expected an integer >= 1, but got "
                                 f"{getattr(self, name)!r}")

    @property
    def connection_limit(self) -> int:
        """Open connections past which uvicorn answers 503 at once (waiting ones included)."""
        return max(16, 4 * self.max_concurrency)


def serve(
    model_ref: str,
    *,
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    limits: Limits | None = None,
    trust_stored_code: bool = False,
    on_ready: Callable[[object, str], None] | None = None,
) -> None:
    """Serves the model until interrupted (Ctrl-C or SIGTERM end it cleanly).

    Args:
        model_ref: NAME, NAME@ALIAS or NAME/VERSION (plain NAME = NAME@champion).
        tracking_uri: the MLflow registry.
        host, port: where to listen.
        limits: what a request may be (default `Limits()`).
        trust_stored_code: load the model by running the code stored with it.
        on_ready: called with (the served `LoadedModel`, the base URL) once the model is
            loaded, before the server starts listening.

    Raises:
        InputError: bad or unknown reference, bad limits, or the port is taken.
    """
    limits = limits or Limits()
    _check_port_free(host, port)  # before the slow model load
    model = load_version(model_ref, tracking_uri=tracking_uri,
                         trust_stored_code=trust_stored_code)
    app = ScoringApp(model, limits)
    if on_ready is not None:
        on_ready(model, f"http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                lifespan="off", server_header=False,
                limit_concurrency=limits.connection_limit)


class HTTPError(Exception):
    """A refusal: its status and the one-line message the client gets."""

    def __init__(self, status: int, code: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.close = status, code, message, close


class ScoringApp:
    """The ASGI app: ``/invocations``, ``/ping``, ``/health``, ``/version``.

    Args:
        model: a `search.registry.loading.LoadedModel` (anything with ``name``, ``version``,
            ``image_size`` and ``predict``).
        limits: what a request may be.
    """

    def __init__(self, model: Any, limits: Limits) -> None:
        self.model = model
        self.limits = limits
        self._slots = None  # an asyncio.Semaphore, made in the server's event loop
        # One prediction at a time: TensorFlow already spreads one over the cores.
        self._predicting = threading.Lock()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        try:
            status, payload = await self._route(scope, receive)
            await _respond(send, status, payload)
        except HTTPError as refusal:
            await _respond(send, refusal.status,
                           {"error_code": refusal.code, "message": refusal.message},
                           close=refusal.close)
        except _Disconnected:
            return
        except Exception:  # the client gets one line; the traceback stays in the server's log
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            await _respond(send, 500, {"error_code": "INTERNAL_ERROR",
                                       "message": "the server failed to answer; see its log"})

    async def _route(self, scope: dict, receive: Callable) -> tuple[int, Any]:
        path, method = scope["path"], scope["method"]
        if path in ("/ping", "/health"):
            _allow(method, ("GET", "HEAD"))
            return 200, {"status": "ok"}
        if path == "/version":
            _allow(method, ("GET", "HEAD"))
            return 200, {"model": self.model.name, "version": self.model.version,
                         "image_size": self.model.image_size}
        if path == "/invocations":
            _allow(method, ("POST",))
            return 200, await self._invocations(scope, receive)
        raise HTTPError(404, "NOT_FOUND", "no such endpoint: this server has POST "
                        "/invocations, GET /ping, /health and /version")

    async def _invocations(self, scope: dict, receive: Callable) -> dict:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != _JSON:
            raise HTTPError(415, "UNSUPPORTED_MEDIA_TYPE",
                            f"expected Content-Type {_JSON}, but got {kind[:100]!r}")
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise HTTPError(400, "BAD_REQUEST", "Content-Length is not a number", close=True)
            if int(declared) > self.limits.max_body_bytes:
                raise self._too_large()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrency)
        try:
            await asyncio.wait_for(self._slots.acquire(), SLOT_WAIT_S)
        except TimeoutError:
            raise HTTPError(503, "BUSY", f"the server is busy ({self.limits.max_concurrency} "
                            f"requests at once); try again") from None
        try:
            try:
                body = await asyncio.wait_for(self._read_body(receive), BODY_READ_S)
            except TimeoutError:
                raise HTTPError(408, "REQUEST_TIMEOUT", f"the body did not arrive within "
                                f"{BODY_READ_S:.0f} s", close=True) from None
            return await asyncio.to_thread(self._score, body)
        finally:
            self._slots.release()

    async def _read_body(self, receive: Callable) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body += message.get("body", b"")
            if len(body) > self.limits.max_body_bytes:
                raise self._too_large()
            if not message.get("more_body", False):
                return bytes(body)

    def _too_large(self) -> HTTPError:
        mb = self.limits.max_body_bytes / 1_000_000
        return HTTPError(413, "REQUEST_TOO_LARGE",
                         f"the request body is over the server's limit of {mb:g} MB "
                         f"(--max-body-mb): send fewer faces per request", close=True)

    def _score(self, body: bytes) -> dict:
        """Decodes, checks and predicts (in a worker thread: it may take a while)."""
        images = self._faces(_decode_json(body))
        with self._predicting:
            frame = self.model.predict(images)
        return {"predictions": frame.to_dict(orient="records")}

    def _faces(self, payload: Any):
        size = self.model.image_size
        expected = (f"{{\"inputs\": [face, ...]}}, each face {size}x{size}x3 RGB numbers "
                    f"in 0..255")
        keys = [k for k in ("inputs", "instances") if isinstance(payload, dict) and k in payload]
        if len(keys) != 1:
            found = (f"keys {sorted(map(str, payload))[:5]}" if isinstance(payload, dict)
                     else f"a JSON {type(payload).__name__}")
            raise HTTPError(400, "BAD_REQUEST", f"expected {expected}, but got {found}")
        faces = payload[keys[0]]
        if not isinstance(faces, list) or not faces:
            raise HTTPError(400, "BAD_REQUEST", f"expected {expected}, but got "
                            f"{'no faces' if faces == [] else type(faces).__name__}")
        try:
            array = np.asarray(faces)
        except (ValueError, TypeError, RecursionError, OverflowError):  # ragged, deep
            raise HTTPError(400, "BAD_REQUEST", f"expected {expected}, but the faces are not "
                            f"equally shaped arrays of numbers") from None
        if array.ndim == 3:
            array = array[np.newaxis]  # one face
        if array.ndim != 4 or array.shape[1:] != (size, size, 3):
            found = (f"an array shaped {tuple(array.shape)}" if array.ndim <= 6
                     else f"an array with {array.ndim} axes")
            raise HTTPError(400, "BAD_REQUEST", f"expected faces of {size}x{size}x3 RGB pixels "
                            f"(the model's input size), but got {found}")
        if len(array) > self.limits.max_batch:
            raise HTTPError(400, "BAD_REQUEST",
                            f"expected at most {self.limits.max_batch} faces per request "
                            f"(--max-batch), but got {len(array)}")
        try:
            return as_batch(array)
        except (ValueError, TypeError) as exc:
            raise HTTPError(400, "BAD_REQUEST", str(exc)[:300]) from None


class _Disconnected(Exception):
    """The client went away mid-request: nothing to answer."""


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise HTTPError(400, "BAD_REQUEST", "the body is not usable JSON: nested too deeply "
                        "(a batch of faces is 4 levels deep)") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer with too many digits
        raise HTTPError(400, "BAD_REQUEST",
                        f"the body is not valid JSON: {' '.join(str(exc).split())[:200]}") from None


def _allow(method: str, allowed: tuple[str, ...]) -> None:
    if method not in allowed:
        raise HTTPError(405, "METHOD_NOT_ALLOWED",
                        f"expected {' or '.join(allowed)}, but got {method[:20]}")


async def _respond(send: Callable, status: int, payload: Any, close: bool = False) -> None:
    body = json.dumps(payload, allow_nan=False).encode()
    headers = [(b"content-type", _JSON.encode()), (b"content-length", str(len(body)).encode())]
    if close:  # an unread body follows: close rather than read it to reuse the connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
