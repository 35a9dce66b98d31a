"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

No Docker engine runs here, so the compose file is parsed (with the variables of .env.example
substituted the way compose does) and held to what the deployment promises: the four services,
health checks, volumes, ports on 127.0.0.1, credentials from .env only, and every command it
runs a real command: `fer-search ...` by the project's own parser, `mlflow server` by MLflow's.
The same topology runs natively in test_distributed.py.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from search.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _dotenv(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _interpolate(value, env: dict[str, str]):
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`, over a parsed file."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        found = env.get(name)
        if op and op.endswith("?") and not found:
            raise KeyError(f"{name} is required: {arg}")
        if op and op.endswith("-") and not found:
            return arg
        return found or ""

    return _VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return _dotenv(ROOT / ".env.example")


@pytest.fixture(scope="module")
def compose(raw, example_env) -> dict:
    """The compose file as `docker compose config` would see it with .env.example as .env."""
    return _interpolate(raw, example_env)


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_the_five_services_are_there(compose):
    assert {"postgres", "pgbouncer", "mlflow", "worker", "dashboard"} <= set(compose["services"])


def test_postgres_and_mlflow_have_health_checks_and_the_rest_waits_for_them(compose):
    services = compose["services"]
    for name in ("postgres", "pgbouncer", "mlflow"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    worker = services["worker"]["depends_on"]
    assert worker["pgbouncer"]["condition"] == "service_healthy"
    assert worker["mlflow"]["condition"] == "service_healthy"
    assert services["pgbouncer"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_state_lives_on_volumes(compose):
    volumes = set(compose["volumes"])
    mounts = {name: [m.split(":")[:2] for m in service.get("volumes", [])]
              for name, service in compose["services"].items()}
    assert ["pgdata", "/var/lib/postgresql/data"] in mounts["postgres"]
    command = _command(compose["services"]["mlflow"])
    artifacts = command[command.index("--artifacts-destination") + 1]
    assert ["mlartifacts", artifacts] in mounts["mlflow"]
    assert ["cache", "/app/.cache"] in mounts["worker"]  # caches shared by the workers
    assert ["data", "/app/data"] in mounts["worker"]
    named = {source for service in mounts.values() for source, _ in service
             if not source.startswith((".", "/"))}
    assert named <= volumes, f"undeclared volumes: {named - volumes}"


def test_ports_are_bound_to_localhost_by_default(compose, raw):
    published = [p for service in compose["services"].values() for p in service.get("ports", [])]
    assert published, "nothing published"
    assert all(str(p).startswith("127.0.0.1:") for p in published), published
    assert "ports" not in compose["services"]["worker"]  # workers only call out
    # ... and without a .env at all, the defaults in the file itself say 127.0.0.1 too.
    defaults = _interpolate(raw, {"POSTGRES_PASSWORD": "x"})
    assert all(str(p).startswith("127.0.0.1:") for service in defaults["services"].values()
               for p in service.get("ports", []))


def test_credentials_come_from_env_only(raw, example_env):
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text, "the password must be required from .env"
    assert example_env["POSTGRES_PASSWORD"] not in text
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _interpolate(raw, {})  # no .env: compose refuses to start
    used = {m["name"] for m in _VARIABLE.finditer(text)}
    assert used <= set(example_env), f"not in .env.example: {used - set(example_env)}"
    # Nothing is passed on a command line that `ps` would show with the password in it.
    for name, service in raw["services"].items():
        assert "POSTGRES_PASSWORD" not in " ".join(_command(service)), name


def test_env_example_holds_no_real_password(example_env):
    assert example_env["POSTGRES_PASSWORD"] == "change-me"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_every_fer_search_command_is_a_real_command(compose):
    parser = build_parser()
    checked = 0
    for name, service in compose["services"].items():
        if service.get("image") != "fer-search:latest" or "entrypoint" in service:
            continue  # the image's entrypoint is fer-search; others say what they run
        args = parser.parse_args(_command(service))  # SystemExit on an unknown command or flag
        assert getattr(args, "handler", None), f"{name}: not a fer-search command"
        if getattr(args, "spec", None) is not None:
            assert (ROOT / args.spec).is_file(), f"{name}: no spec {args.spec}"
        checked += 1
    assert checked >= 2
    worker = parser.parse_args(_command(compose["services"]["worker"]))
    assert worker.handler.__name__ == "cmd_worker"
    dashboard = parser.parse_args(_command(compose["services"]["dashboard"]))
    assert dashboard.handler.__name__ == "cmd_dashboard"


def test_workers_find_the_shared_storage_and_tracking_server(compose):
    env = compose["services"]["worker"]["environment"]
    # Through PgBouncer: PostgreSQL sees its pool, not every worker's connections.
    assert env["FER_SEARCH_STORAGE"].startswith("postgresql+psycopg2://fer:change-me@pgbouncer:6432/")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert compose["services"]["dashboard"]["environment"]["FER_SEARCH_STORAGE"] == \
        env["FER_SEARCH_STORAGE"]


def test_mlflow_runs_a_real_mlflow_server_on_postgres(compose):
    from mlflow.cli import cli

    service = compose["services"]["mlflow"]
    assert service["entrypoint"] == ["mlflow"]
    command = _command(service)
    assert command[0] == "server"
    options = {opt for param in cli.commands["server"].params for opt in param.opts}
    flags = {arg for arg in command if arg.startswith("-")}
    assert flags <= options, f"not options of `mlflow server`: {flags - options}"
    backend = service["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("/mlflow")
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:*" in hosts  # the workers' Host header
    init = compose["configs"]["mlflow-database"]["content"]
    assert "CREATE DATABASE mlflow" in init


def test_dockerfile_builds_the_project_with_its_pins():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#")
                    and line[:1].isupper()]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    assert re.search(r"pip install -c constraints\.txt", text)
    assert "COPY pyproject.toml constraints.txt" in text
    assert ["ENTRYPOINT", '["fer-search"]'] in instructions
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")


def test_a_worker_that_exits_for_a_stuck_trial_is_restarted(compose):
    """The watchdog ends a worker whose trial is stuck inside an epoch with exit 75
    (search.study.deadline); compose must start a fresh one, and leave a finished one (exit 0)
    down."""
    from search.contracts import EXIT_TRIAL_STUCK

    assert EXIT_TRIAL_STUCK != 0
    assert compose["services"]["worker"]["restart"] == "on-failure"


def test_pgbouncer_pools_transactions_with_the_password_from_env_only(compose):
    service = compose["services"]["pgbouncer"]
    assert service["environment"]["POSTGRES_PASSWORD"] == "change-me"  # from .env
    assert "command" not in service  # nothing on a command line
    entrypoint = (ROOT / "deploy" / "pgbouncer" / "entrypoint.sh").read_text()
    settings = dict(line.split(" = ", 1) for line in entrypoint.splitlines() if " = " in line)
    assert settings["pool_mode"] == "transaction"  # what search.storage.locks works through
    assert settings["max_db_connections"] == "${PGBOUNCER_POOL:-40}"
    assert int(service["environment"]["PGBOUNCER_POOL"]) <= 50
