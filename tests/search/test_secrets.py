"""A password in the storage URL is shown nowhere: not in MLflow, Optuna's attributes, the CLI's
output, the workers' output or any log; only masked (`***`).

The `postgres` run uses the throwaway PostgreSQL cluster (whose password is random and
distinctive) and a real MLflow server; the password is given every way a user would: in the
spec, on the command line and in the environment of `run --workers 2`, and in URLs that fail.
The others (issue 30) need no server: a spec whose URLs hold passwords with a space, quotes or
'<', or in the query, overridden by --storage, run on SQLite; and the one-line errors of URLs
that cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.infra.pgcluster import free_port
from tests.search.studyhelp import stores_fixture, urls, write_spec  # noqa: F401 (fixture)

SPACE = {"learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [2],
         "head_width": [16]}


def _cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("FER_SEARCH_STORAGE", "MLFLOW_TRACKING_URI")}
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=folder, capture_output=True, text=True,
        env={**base, "PYTHONUNBUFFERED": "1", "FER_SEARCH_DB_RETRY_S": "3", **(env or {})},
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


def _mlflow_texts(tracking_uri: str, experiment_name: str) -> list[str]:
    """Every param, tag, metric name and text artifact of every run, and the experiment's."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    texts = [json.dumps(experiment.tags), experiment.artifact_location]
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags),
                  json.dumps(sorted(run.data.metrics)), run.info.run_name or ""]
        texts += _text_artifacts(client, run.info.run_id)
    return texts


def _text_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    texts = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            texts += _text_artifacts(client, run_id, item.path)
        elif item.path.endswith((".yaml", ".json", ".txt")):
            texts.append(Path(client.download_artifacts(run_id, item.path)).read_text())
    return texts


def _optuna_texts(storage, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=storage)
    system_attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(name))
    texts = [json.dumps(study.user_attrs), json.dumps(system_attrs, default=str)]
    for trial in study.get_trials():
        texts += [json.dumps(trial.user_attrs, default=str),
                  json.dumps(trial.system_attrs, default=str)]
    return texts


@pytest.mark.postgres
def test_the_storage_password_appears_nowhere(pg_cluster, mlflow_server, tmp_path,
                                              monkeypatch, stores):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    password = pg_cluster.password
    url = pg_cluster.url()
    spec = write_spec(tmp_path, name="pg-secret", space=SPACE, storage=url)  # in the spec too
    outputs = []

    code, text = _cli(tmp_path, "run", str(spec), "--storage", url,
                      "--tracking-uri", mlflow_server.uri, "--n-trials", "1")
    outputs.append(text)
    assert code == 0, text[-3000:].replace(password, "<password>")
    code, text = _cli(tmp_path, "run", str(spec), "--workers", "2",  # the URL from the spec
                      "--tracking-uri", mlflow_server.uri)
    outputs.append(text)
    assert code == 0, text[-3000:].replace(password, "<password>")
    for args in (("status", "pg-secret"), ("studies",), ("status", "no-such-study")):
        outputs.append(_cli(tmp_path, *args, "--storage", url)[1])
    # Failing URLs: a wrong password, and a server that is not there (a one-shot command: not
    # retried, the cause in one line).
    wrong = url.replace(password, password + "-wrong")
    code, text = _cli(tmp_path, "studies", "--storage", wrong)
    assert code == 1 and "password authentication failed" in text
    outputs.append(text)
    gone = url.replace(f":{pg_cluster.port}/", f":{_closed_port()}/")
    code, text = _cli(tmp_path, "status", "pg-secret", "--storage", gone)
    assert code == 1 and "Connection refused" in text and "database unavailable" not in text
    outputs.append(text)

    texts = {"cli": outputs}
    texts["mlflow"] = _mlflow_texts(mlflow_server.uri, "pg-secret")
    texts["optuna"] = _optuna_texts(stores.get(url), "pg-secret")
    texts["logs"] = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
    texts["logs"].append(mlflow_server.log.read_text(errors="replace"))
    for where, found in texts.items():
        leaks = [t for t in found if t and password in t]
        assert not leaks, f"the password leaked into {where}"

    # The masked form is there: the checks above looked at the right places.
    assert any("fer:***@127.0.0.1" in t for t in texts["mlflow"])
    assert "fer:***@127.0.0.1" in outputs[0]
    assert any("***" in t for t in texts["optuna"])  # the spec kept on the study


def _closed_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


# ---------------------------------------------------------------------------- issue 30, no server

ODD_PASSWORD = "S3c retD'\"<q>"  # a space, both quotes, '<': the old pattern stopped at each
QUERY_PASSWORD = "Qu3ry pass"


def test_a_spec_password_with_a_space_never_reaches_the_stored_spec(tmp_path, monkeypatch,
                                                                     stores):
    """The spec names a PostgreSQL storage and an MLflow server whose passwords hold a space
    (and quotes, '<', or sit in the query); --storage and --tracking-uri override both, as the
    issue's reproduction did. After a one-trial run neither the Optuna study's `spec_yaml`
    (which optuna-dashboard serves) nor the MLflow artifact `spec/study.yaml`, nor anything
    else either store holds, shows a password; the stored spec is still the spec, masked."""
    from search.cli.main import main
    from search.contracts import PARENT_RUN_ATTR, SPEC_ATTR

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.delenv("FER_SEARCH_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage = f"postgresql://fer:{ODD_PASSWORD}@db.invalid:5432/optuna"
    tracking = f"http://fer@mlflow.invalid:5000/?password={QUERY_PASSWORD}"
    spec_path = write_spec(tmp_path, name="odd-secret", space={**SPACE, "learning_rate": [1e-2]},
                           storage=storage, tracking_uri=tracking)
    spec_path.write_text(f"# was: storage: {storage}\n" + spec_path.read_text())
    where = urls(tmp_path)

    code = main(["run", str(spec_path), "--storage", where["storage_url"],
                 "--tracking-uri", where["tracking_uri"], "--n-trials", "1"])
    assert code == 0

    study = stores.study(where["storage_url"], "odd-secret")
    stored = study.user_attrs[SPEC_ATTR]
    client = MlflowClient(where["tracking_uri"])
    parent = client.get_run(study.user_attrs[PARENT_RUN_ATTR])
    artifact = Path(client.download_artifacts(parent.info.run_id, "spec/study.yaml")).read_text()
    texts = {"optuna": _optuna_texts(stores.get(where["storage_url"]), "odd-secret"),
             "mlflow": _mlflow_texts(where["tracking_uri"], "odd-secret")}
    for secret in (ODD_PASSWORD, "S3c ret", QUERY_PASSWORD):
        assert secret not in stored and secret not in artifact
        for place, found in texts.items():
            assert not [t for t in found if t and secret in t], f"{secret!r} leaked into {place}"
    from search.spec.loader import spec_from_text

    for text in (stored, artifact):
        masked = spec_from_text(text, spec_path)
        assert masked.storage == "postgresql://fer:***@db.invalid:5432/optuna"
        assert masked.tracking_uri == "http://fer@mlflow.invalid:5000/?password=***"
        assert text.startswith("# was: storage: postgresql://fer:***@db.invalid:5432/optuna\n")


@pytest.mark.parametrize("args", [
    ("studies", "--storage", "postgresql://fer@127.0.0.1:{port}/db?password=S3cretQ"),
    ("studies", "--storage",
     "postgresql://fer@127.0.0.1:{port}/db?sslmode=disable&password=S3c%20retQ"),
    ("studies", "--storage", "postgresql://fer:S3c retQ'\"<@127.0.0.1:{port}/db"),
    ("ui", "--tracking-uri", "postgresql://fer@127.0.0.1:{port}/db?password=S3cretQ"),
    ("ui", "--tracking-uri", "http://127.0.0.1:{port}/?token=S3cretQ"),
], ids=["storage-query", "storage-later-query", "storage-odd-userinfo", "tracking-query",
        "tracking-token"])
def test_an_unreachable_url_is_named_in_one_line_without_its_password(args, capsys):
    """The CLI's one-line error for a store it cannot reach names the URL, masked: the old
    mask left a query's password in it (`storage: cannot open ...?password=S3cretQ: ...`)."""
    from search.cli.main import main

    args = [arg.format(port=_closed_port()) for arg in args]
    assert main(list(args)) == 1
    said = capsys.readouterr()
    shown = said.out + said.err
    assert "S3c" not in shown and "retQ" not in shown, shown
    assert "***" in shown and "Connection refused" in shown, shown


def test_ui_gives_mlflow_the_store_by_environment_not_command_line(tmp_path, monkeypatch):
    """`fer-search ui` on a PostgreSQL tracking store becomes `mlflow ui`: the store's URI,
    password and all, is in the new program's environment (MLFLOW_BACKEND_STORE_URI, which
    `mlflow server`/`ui` read for --backend-store-uri), and no argument of it, nor of the
    browser-opener it starts with --open, holds the password (`ps` shows arguments to every
    user). The stores are not reached: their checks are stubbed."""
    import subprocess as subprocess_module

    import search.cli.tool_commands as tool_commands
    from search.cli.main import main

    uri = f"postgresql+psycopg2://fer:{ODD_PASSWORD}@db.example.org:5432/mlflow"
    started: list[tuple[str, list[str], dict[str, str]]] = []

    class Became(Exception):
        pass

    def execve(path, argv, env):
        started.append((path, list(argv), dict(env)))
        raise Became

    def popen(argv, **kwargs):
        started.append((argv[0], list(argv), dict(kwargs.get("env") or os.environ)))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tool_commands, "require_stores", lambda storage, tracking: None)
    monkeypatch.setattr(tool_commands, "Tracker", lambda uri: type("T", (), {"client": None})())
    monkeypatch.setattr(tool_commands, "pick_experiment", lambda client, study: None)
    monkeypatch.setattr(tool_commands.os, "execve", execve)
    monkeypatch.setattr(subprocess_module, "Popen", popen)
    main(["ui", "--tracking-uri", uri, "--open", "--port", "5123"])

    assert [argv[1:4] for _, argv, _ in started] == [["-c", tool_commands._OPEN_WHEN_UP,
                                                     "http://127.0.0.1:5123/health"],
                                                    ["-m", "mlflow", "ui"]]
    for _, argv, _ in started:
        assert not [arg for arg in argv if "S3c" in arg or "retD" in arg], argv
    _, argv, env = started[-1]
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"].startswith("file://")
    assert "--backend-store-uri" not in argv and "--port" in argv


def test_a_command_error_quoting_a_store_url_masks_a_password_with_a_space(tmp_path,
                                                                           monkeypatch):
    """Any error of a command (a library's, say) that quotes a store's URL shows it masked,
    even where a pattern alone cannot tell where the password ends: the URLs the command
    opened or checked, and the environment's, are masked whole."""
    from search.cli import common, stores

    storage = f"postgresql://fer:{ODD_PASSWORD}@127.0.0.1:{_closed_port()}/db"
    tracking = "http://fer:Tr4ck pass@mlflow.example.org:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setattr(common, "_URLS_IN_USE", [])
    with pytest.raises(Exception) as raised:  # refused: the URL is now one the command used
        with stores.storage_for(storage, read_only=True):
            pass
    assert "S3c" not in common.one_line(raised.value)
    error = RuntimeError(f"cannot reach {storage} nor\n{tracking} (tried twice)")
    shown = common.one_line(error)
    assert "S3c" not in shown and "retD" not in shown and "Tr4ck" not in shown, shown
    assert shown == ("cannot reach postgresql://fer:***@127.0.0.1:"
                     f"{storage.rsplit(':', 1)[1]} nor http://fer:***@mlflow.example.org:5000 "
                     "(tried twice)")
