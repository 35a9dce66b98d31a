"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine.

No Docker engine runs here, so the compose file is parsed (with the variables of .env.example
substituted the way compose does) and held to what the deployment promises: the services,
health checks, volumes, each port on 127.0.0.1 by its own setting, credentials from .env only
and as files (compose `secrets:`), a check that refuses the examples' passwords, a database role
per component, hardened containers, and every command it runs a real command: `fer-search ...`
by the project's own parser, `mlflow server` by MLflow's. The same topology runs natively in
test_distributed.py; the scripts the containers run are run here (tests/deploy).
"""

from __future__ import annotations

import re
import shlex
import subprocess
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


PASSWORD_SETTINGS = ("POSTGRES_PASSWORD", "FER_WORKER_DB_PASSWORD", "FER_MLFLOW_DB_PASSWORD",
                     "FER_DASHBOARD_DB_PASSWORD", "PGBOUNCER_ADMIN_PASSWORD",
                     "MLFLOW_ADMIN_PASSWORD", "MLFLOW_WORKER_PASSWORD", "MLFLOW_SECRET_KEY")
ROLES = {"worker": "fer_worker", "pgbouncer": "fer_worker", "mlflow": "fer_mlflow",
         "dashboard": "fer_dashboard"}
CHECK = ROOT / "deploy" / "compose" / "check-secrets.sh"
# "${MLFLOW_BIND:-127.0.0.1}:${MLFLOW_PORT:-5000}:5000": an address and a port per service.
PUBLISHED = re.compile(r"\$\{(?P<bind>[A-Z_]+_BIND):-127\.0\.0\.1\}:\$\{[A-Z_]+_PORT:-\d+\}:\d+")


def test_each_published_port_has_its_own_bind_address_defaulting_to_localhost(compose, raw):
    published = {name: service.get("ports", []) for name, service in raw["services"].items()}
    assert "ports" not in compose["services"]["worker"]  # workers only call out
    assert "ports" not in compose["services"]["check-secrets"]
    settings = {}
    for name, ports in published.items():
        for port in ports:
            match = PUBLISHED.fullmatch(str(port))
            assert match, f"{name}: {port} (expected ${{X_BIND:-127.0.0.1}}:${{X_PORT:-N}}:N)"
            settings[name] = match["bind"]
    assert settings == {"postgres": "POSTGRES_BIND", "pgbouncer": "PGBOUNCER_BIND",
                        "mlflow": "MLFLOW_BIND", "dashboard": "DASHBOARD_BIND"}
    assert "BIND_ADDRESS" not in (ROOT / "docker-compose.yml").read_text()
    # With .env.example, and without a .env at all, every port listens on 127.0.0.1.
    for model in (compose, _interpolate(raw, {})):
        for name, service in model["services"].items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), (name, port)
    # Moving one does not move the others.
    moved = _interpolate(raw, {"MLFLOW_BIND": "10.0.0.5"})
    assert moved["services"]["mlflow"]["ports"][0].startswith("10.0.0.5:")
    assert moved["services"]["dashboard"]["ports"][0].startswith("127.0.0.1:")


def test_passwords_come_from_env_as_files_never_as_values(raw, example_env):
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = raw["secrets"]
    assert {entry["environment"] for entry in secrets.values()} == set(PASSWORD_SETTINGS)
    for setting in PASSWORD_SETTINGS:
        assert example_env[setting] == "change-me"
        # Named only as a secret's source: never interpolated into the model.
        assert "${" + setting not in text, setting
    used = {m["name"] for m in _VARIABLE.finditer(text)}
    assert used <= set(example_env), f"not in .env.example: {used - set(example_env)}"
    for name, service in raw["services"].items():
        line = " ".join(_command(service))
        assert "PASSWORD" not in line and "postgresql" not in line, name
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            assert not re.search(r"://[^/@\s:]+:[^/@\s]*@", value), f"{name}: {key}"
            if re.search(r"PASSWORD|SECRET|_KEY", key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret's value"
                granted = [s if isinstance(s, str) else s["source"]
                           for s in service.get("secrets", [])]
                assert value.startswith("/run/secrets/")
                assert value.rsplit("/", 1)[1] in granted, f"{name}: {key} -> {value}"


def test_each_component_logs_in_as_its_own_role(compose):
    services = compose["services"]
    storage = {name: services[name]["environment"].get("FER_SEARCH_STORAGE", "")
               for name in ("worker", "dashboard")}
    assert storage["worker"].startswith("postgresql+psycopg2://fer_worker@pgbouncer:6432/")
    assert storage["dashboard"].startswith("postgresql+psycopg2://fer_dashboard@postgres:5432/")
    mlflow = services["mlflow"]["environment"]
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        assert mlflow[key].startswith("postgresql+psycopg2://fer_mlflow@postgres:5432/")
    bouncer = services["pgbouncer"]["environment"]
    assert bouncer["POSTGRES_USER"] == "fer_worker"
    assert bouncer["PGBOUNCER_ADMIN_USER"] not in ("fer_worker", "postgres")
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    for name, service in services.items():
        if name in ("postgres", "check-secrets"):
            continue
        for value in (service.get("environment") or {}).values():
            assert f"://{superuser}@" not in str(value) and f"://{superuser}:" not in str(value)
    assert superuser not in ROLES.values()
    roles = (ROOT / "deploy" / "postgres" / "10-roles.sql").read_text()
    assert services["postgres"]["configs"][0]["target"].startswith("/docker-entrypoint-initdb.d/")
    assert compose["configs"]["postgres-roles"]["file"] == "./deploy/postgres/10-roles.sql"
    for role in set(ROLES.values()):
        assert f"ALTER ROLE {role} LOGIN NOSUPERUSER" in roles


def test_every_container_is_hardened(compose):
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert "/tmp" in service.get("tmpfs", []), name
        assert not service.get("privileged"), name
        assert service.get("user", "") not in ("root", "0", "0:0"), name
    assert compose["services"]["postgres"]["user"] == "999:999"


def check_secrets(tmp_path: Path, values: dict[str, str]) -> subprocess.CompletedProcess:
    folder = tmp_path / "secrets"
    folder.mkdir(exist_ok=True)
    names = dict(re.findall(r"(?m)^(?:names=\")?([a-z-]+):([A-Z_]+)\"?$", CHECK.read_text()))
    assert set(names.values()) == set(PASSWORD_SETTINGS)
    for file, setting in names.items():
        path = folder / file
        path.unlink(missing_ok=True)
        if values.get(setting) is not None:
            path.write_text(values[setting] + "\n")
    return subprocess.run(["sh", str(CHECK)],
                          env={"SECRETS_DIR": str(folder), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)


def test_the_stack_refuses_to_start_with_the_examples_passwords(tmp_path, compose):
    # Every other service waits for check-secrets to exit 0 (directly or through another).
    services = compose["services"]
    check = services["check-secrets"]
    assert check["entrypoint"] == ["sh", "/check-secrets.sh"]
    assert compose["configs"]["check-secrets"]["file"] == "./deploy/compose/check-secrets.sh"
    assert {s for s in check["secrets"]} == set(compose["secrets"])

    def waits(name: str) -> bool:
        needs = services[name].get("depends_on", {})
        if needs.get("check-secrets", {}).get("condition") == "service_completed_successfully":
            return True
        return any(waits(other) for other in needs)

    assert all(waits(name) for name in services if name != "check-secrets")

    good = {setting: f"{index}-a-long-random-password" for index, setting in
            enumerate(PASSWORD_SETTINGS)}
    done = check_secrets(tmp_path, good)
    assert done.returncode == 0, done.stderr
    for bad, why in (("change-me", "change-me"), ("", "not set or empty"),
                     (None, "not set or empty"), ("short", "shorter than 12")):
        done = check_secrets(tmp_path, {**good, "MLFLOW_ADMIN_PASSWORD": bad})
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "MLFLOW_ADMIN_PASSWORD" in lines[0] and why in lines[0], lines
        assert "POSTGRES_PASSWORD" not in lines[0]
    done = check_secrets(tmp_path, {**good, "MLFLOW_SECRET_KEY": good["POSTGRES_PASSWORD"]})
    assert done.returncode == 1 and "the same as another" in done.stderr
    # .env.example as .env: one line naming every setting, no value printed.
    done = subprocess.run(["sh", str(CHECK), "--env", str(ROOT / ".env.example")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(setting in lines[0] for setting in PASSWORD_SETTINGS), lines
    assert "change-me" in lines[0]


def test_env_example_holds_no_real_password(example_env):
    assert {example_env[setting] for setting in PASSWORD_SETTINGS} == {"change-me"}
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
    assert worker.command == "worker"
    dashboard = parser.parse_args(_command(compose["services"]["dashboard"]))
    assert dashboard.command == "dashboard"


def test_workers_find_the_shared_storage_and_tracking_server(compose):
    env = compose["services"]["worker"]["environment"]
    # Through PgBouncer: PostgreSQL sees its pool, not every worker's connections.
    assert env["FER_SEARCH_STORAGE"].startswith("postgresql+psycopg2://fer_worker@pgbouncer:6432/")
    assert env["FER_SEARCH_DB_PASSWORD_FILE"] == "/run/secrets/worker-db-password"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLFLOW_TRACKING_USERNAME"] == "fer-worker"
    assert env["MLFLOW_TRACKING_PASSWORD_FILE"] == "/run/secrets/mlflow-worker-password"
    assert compose["services"]["mlflow"]["environment"]["FER_MLFLOW_WORKER_USERNAME"] == \
        env["MLFLOW_TRACKING_USERNAME"]


def test_mlflow_runs_a_real_mlflow_server_on_postgres_with_its_login(compose):
    from mlflow.cli import cli

    service = compose["services"]["mlflow"]
    # fer-mlflow-server execs `mlflow server --app-name basic-auth` + the command's options.
    assert service["entrypoint"] == ["fer-search-secrets", "fer-mlflow-server"]
    server = (ROOT / "deploy" / "mlflow" / "fer-mlflow-server.py").read_text()
    assert '["mlflow", "server", "--app-name", "basic-auth", *argv]' in server
    command = _command(service)
    options = {opt for param in cli.commands["server"].params for opt in param.opts}
    flags = {arg for arg in command if arg.startswith("-")}
    assert flags <= options, f"not options of `mlflow server`: {flags - options}"
    backend = service["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql+psycopg2://") and backend.endswith("/mlflow")
    hosts = command[command.index("--allowed-hosts") + 1].split(",")
    assert "mlflow:*" in hosts  # the workers' Host header
    roles = (ROOT / "deploy" / "postgres" / "10-roles.sql").read_text()
    assert "CREATE DATABASE mlflow" in roles and "CREATE DATABASE mlflow_auth" in roles
    env = service["environment"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD_FILE", "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE",
                "FER_MLFLOW_WORKER_PASSWORD_FILE"):
        assert env[key].startswith("/run/secrets/"), key


def _instructions(path: Path) -> list[list[str]]:
    return [line.split(None, 1) for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#") and line[:1].isupper()]


def test_dockerfile_builds_the_project_with_its_pins():
    text = (ROOT / "Dockerfile").read_text()
    instructions = _instructions(ROOT / "Dockerfile")
    # A patch release, not a floating tag (the digest: deploy/README.md, "Pinned images").
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?",
                        instructions[0][1])
    assert re.search(r"pip install -c constraints\.txt .*\"mlflow\[auth\]\"", text)
    assert "COPY pyproject.toml constraints.txt" in text
    assert ["ENTRYPOINT", '["fer-search-secrets", "fer-search"]'] in instructions
    users = [arg for op, arg in instructions if op == "USER"]
    # Numeric, so that Kubernetes' runAsNonRoot can check it.
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    pgbouncer = _instructions(ROOT / "deploy" / "pgbouncer" / "Dockerfile")
    assert re.fullmatch(r"debian:\d+\.\d+-slim(@sha256:[0-9a-f]{64})?", pgbouncer[0][1])
    users = [arg for op, arg in pgbouncer if op == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])


def test_a_worker_that_exits_for_a_stuck_trial_is_restarted(compose):
    """The watchdog ends a worker whose trial is stuck inside an epoch with exit 75
    (search.trial.deadline); compose must start a fresh one, and leave a finished one (exit 0)
    down."""
    from search.contracts import EXIT_TRIAL_STUCK

    assert EXIT_TRIAL_STUCK != 0
    assert compose["services"]["worker"]["restart"] == "on-failure"


def test_pgbouncer_pools_transactions_with_the_password_from_a_file(compose):
    service = compose["services"]["pgbouncer"]
    assert service["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/worker-db-password"
    assert "POSTGRES_PASSWORD" not in service["environment"]
    assert "command" not in service  # nothing on a command line
    entrypoint = (ROOT / "deploy" / "pgbouncer" / "entrypoint.sh").read_text()
    settings = dict(line.split(" = ", 1) for line in entrypoint.splitlines() if " = " in line)
    assert settings["pool_mode"] == "transaction"  # what search.storage.locks works through
    assert settings["max_db_connections"] == "${PGBOUNCER_POOL:-40}"
    assert int(service["environment"]["PGBOUNCER_POOL"]) <= 50


def test_the_tls_override_makes_every_client_verify_postgresql(compose):
    """deploy/compose/postgres-tls.yml (docker compose -f docker-compose.yml -f ...): TLS on in
    PostgreSQL, verify-full in every client of it, TLS from PgBouncer to the workers."""
    override = yaml.safe_load((ROOT / "deploy" / "compose" / "postgres-tls.yml").read_text())
    services = override["services"]
    assert set(services) <= set(compose["services"])
    assert "ssl=on" in services["postgres"]["command"]
    for client in ("mlflow", "worker", "dashboard"):
        env = services[client]["environment"]
        assert env["PGSSLMODE"] == "verify-full", client
        assert env["PGSSLROOTCERT"] == "/run/secrets/postgres-tls-ca", client
    bouncer = services["pgbouncer"]["environment"]
    assert bouncer["PGBOUNCER_SERVER_TLS_SSLMODE"] == "verify-full"
    assert bouncer["PGBOUNCER_CLIENT_TLS_SSLMODE"] == "require"
    for name, service in services.items():
        for secret in service.get("secrets", []):
            assert secret in override["secrets"] or secret in compose["secrets"], (name, secret)
        for key, value in (service.get("environment") or {}).items():
            if key.endswith("_FILE") or key == "PGSSLROOTCERT":
                assert value.rsplit("/", 1)[1] in service["secrets"], (name, key)
