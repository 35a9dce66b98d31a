"""The CLI: exit codes, one-line errors, and the commands on a tiny real study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import pytest

from search.cli.main import main
from tests.infra.pgcluster import free_port
from tests.infra.waiting import wait_for
from tests.search.studyhelp import urls, write_spec


def fer_search(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# What each command loads before its work: the parser imports no command module (the handler's
# module is imported when its command runs), and no command module imports a heavy neighbour's
# libraries. One fresh interpreter per entry; the heavy libraries are those seen loaded.
IMPORTS = """
import importlib, sys
for name in sys.argv[1].split(","):
    if name:
        importlib.import_module(name)
if sys.argv[2]:
    from search.cli.main import build_parser
    build_parser().parse_args(sys.argv[2].split())
heavy = ("optuna", "mlflow", "tensorflow", "keras", "matplotlib", "search.cli.")
print(",".join(sorted({m.split(".")[0] if not m.startswith("search.cli.") else m
                       for m in sys.modules if m.startswith(heavy)})))
"""


@pytest.mark.parametrize(
    "modules, argv, loaded",
    [
        ("search.cli.main", "run s.yaml", "search.cli.common,search.cli.main"),
        ("search.cli.main", "predict a.png", "search.cli.common,search.cli.main"),
        ("search.cli.inspect_commands", "", "optuna,search.cli.common,search.cli.inspect_commands,"
         "search.cli.objective_tables,search.cli.progress,search.cli.stores"),
        ("search.cli.data_commands", "", "search.cli.common,search.cli.data_commands"),
    ],
)
def test_a_command_imports_only_its_own_module(modules, argv, loaded):
    done = subprocess.run([sys.executable, "-c", IMPORTS, modules, argv], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == loaded


def test_the_model_commands_import_no_optuna():
    done = subprocess.run([sys.executable, "-c", IMPORTS, "search.cli.model_commands", ""],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "optuna" not in done.stdout.strip().split(","), done.stdout


def test_bad_spec_is_one_line_on_stderr_with_exit_code_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "sampler: grid\nspace:\n  batch_size: [0, 32]\ndata: {synthetic: {faces: 70}}\n"
    )
    result = fer_search("run", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bad.yaml" in lines[0] and "space.batch_size[0]" in lines[0] and "0" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "studies").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.yaml"], "missing.yaml"),
        (["data", "check", "no-such-root"], "no-such-root"),
        (["data", "synth", "out", "--faces", "3"], "--faces"),
        (["predict", "--model", "x@champion", "img.jpg", "--box", "1,2,3"], "--box"),
        (["run", "spec.yaml", "--n-trials", "0"], "--n-trials"),
    ],
)
def test_bad_input_exits_2_naming_the_culprit(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert _exit_code(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def _exit_code(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exit_:  # argparse reports malformed flags itself, also with code 2
        return exit_.code


def test_unknown_study_lists_the_known_ones(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    import optuna

    optuna.create_study(study_name="known", storage=storage)
    assert main(["status", "nope", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "known" in err


def test_data_synth_then_check(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", str(out), "--faces", "70", "--seed", "1"]) == 0
    assert (out / "label.lst").is_file()
    assert main(["data", "check", str(out), "--json"]) == 0
    report = capsys.readouterr().out
    assert '"faces": 70' in report and '"split_sizes"' in report


def test_run_status_and_studies_on_a_tiny_grid(tmp_path):
    spec = write_spec(tmp_path)
    where = urls(tmp_path)
    run = fer_search("run", str(spec), "--storage", where["storage_url"],
                     "--tracking-uri", where["tracking_uri"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "leaderboard: tiny" in run.stdout
    assert "study complete: 4 trials run now" in run.stderr
    assert "Traceback" not in run.stderr
    # The program exits with its objects frozen (search.cli.main.entry), skipping the last
    # garbage collections: everything it wrote is there and whole.
    import mlflow

    client = mlflow.MlflowClient(where["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    kinds = sorted((r.data.tags.get("fer_search.kind"), r.info.status) for r in runs)
    assert kinds == [("study", "FINISHED")] + [("trial", "FINISHED")] * 4
    parent = next(r for r in runs if r.data.tags.get("fer_search.kind") == "study")
    assert "best_trial_number" in parent.data.tags  # the report, refreshed last

    status = fer_search("status", "tiny", "--storage", where["storage_url"], cwd=tmp_path)
    assert status.returncode == 0
    assert status.stdout.count("COMPLETE") == 4
    studies = fer_search("studies", "--storage", where["storage_url"], cwd=tmp_path)
    assert "tiny" in studies.stdout


def test_ui_serves_the_project_store(tmp_path):
    from search.tracking.runs import Tracker

    tracking = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    Tracker(tracking).experiment_id("shown")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = tmp_path / "ui.log"  # its stderr, shown if it dies before it answers
    with open(log, "wb") as errors:
        ui = subprocess.Popen(
            [sys.executable, "-m", "search.cli", "ui", "--port", str(port), "--tracking-uri",
             tracking],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
            start_new_session=True,  # the UI's server processes are stopped with it below
        )
    try:
        assert f"http://127.0.0.1:{port}" in ui.stdout.readline()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
            data=b'{"max_results": 10}', headers={"Content-Type": "application/json"},
        )

        def answer() -> str:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.read().decode()

        body = wait_for(answer, 90, "the UI's experiments/search", interval=1,
                        watch=[SimpleNamespace(process=ui, log=log)])
        assert '"name": "shown"' in body or '"name":"shown"' in body
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
