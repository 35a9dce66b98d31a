"""deploy/slurm/fer-search-array.sbatch, run with bash as one array task would be (the #SBATCH
lines are comments to bash): its settings come from a chmod-600 file, its worker trains in the
shared study, its data and caches land in the shared folder, and exit 75 requeues the task."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.infra import pgbouncer
from tests.infra.fixtures import unavailable
from tests.infra.pgcluster import USER, ClusterUnavailable, free_port, run_as
from tests.search.studyhelp import write_spec

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "slurm" / "fer-search-array.sbatch"
PGBOUNCER_SCRIPT = REPO / "deploy" / "slurm" / "fer-search-pgbouncer.sbatch"
# A 2-point grid on 140 synthetic faces of 32 px, no pretrained weights, one epoch.
TINY_SPACE = {"learning_rate": [1.0e-2], "batch_size": [32], "epochs": [1], "head_width": [16, 32]}


def slurm_env(tmp_path: Path, settings: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment Slurm gives array task 1 of job 4242, plus the settings file."""
    env_file = tmp_path / "fer-search.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    env_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FER_SEARCH_STORAGE", "MLFLOW_TRACKING_URI", "CUDA_VISIBLE_DEVICES")}
    env.update({
        "FER_SLURM_ENV_FILE": str(env_file),
        "SLURM_JOB_ID": "4243",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(tmp_path / "submit"),
        "SLURM_RESTART_COUNT": "0",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "FER_SLURM_CMD": f"{sys.executable} -m search.cli",
        **extra,
    })
    return env


def run_task(tmp_path: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path / "submit", env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.postgres
@pytest.mark.slow
def test_an_array_task_runs_trials_of_the_shared_study(tmp_path, pg_cluster):
    import optuna

    name = f"slurm-{uuid.uuid4().hex[:8]}"
    (tmp_path / "submit").mkdir()
    spec = write_spec(tmp_path / "submit", name=name, space=TINY_SPACE)
    shared = tmp_path / "shared"
    settings = {
        "FER_SEARCH_STORAGE": pg_cluster.url("optuna"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        "FER_SLURM_SHARED": str(shared),
        "FER_SLURM_SPEC": str(spec.relative_to(tmp_path / "submit")),
    }
    result = run_task(tmp_path, slurm_env(tmp_path, settings))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "task 1" in result.stdout and "1 threads" in result.stdout
    assert pg_cluster.password not in result.stdout + result.stderr

    storage = optuna.storages.RDBStorage(pg_cluster.url("optuna"))
    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    finally:
        storage.engine.dispose()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [t.state for t in trials]
    # The data and its caches are in the shared folder, not in the submit folder.
    assert any((shared / "data").iterdir()) and (shared / ".cache").is_dir()
    assert not (tmp_path / "submit" / "data").exists()


def _fake_tools(tmp_path: Path, exit_code: int) -> tuple[Path, Path]:
    """A `fer-search` that records its arguments and exits with `exit_code`, and an `scontrol`
    that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    # fer-search also records where its storage URL points (after the password's "@").
    where = 'echo "storage ${FER_SEARCH_STORAGE#*@}" >> "' + str(calls) + '"\n'
    for tool, code in (("fer-search", exit_code), ("scontrol", 0)):
        path = bin_dir / tool
        path.write_text(f'#!/bin/bash\necho "{tool} $*" >> "{calls}"\n'
                        f'{where if tool == "fer-search" else ""}exit {code}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir, calls


SETTINGS = {
    "FER_SEARCH_STORAGE": "postgresql+psycopg2://fer:pw-not-on-cmdline@db:5432/optuna",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "FER_SLURM_SPEC": "studies/s.yaml",
}


@pytest.mark.parametrize("exit_code, requeued, script_exit", [(75, True, 0), (0, False, 0),
                                                                (1, False, 1)])
def test_exit_75_requeues_the_task_and_nothing_else_does(tmp_path, exit_code, requeued,
                                                         script_exit):
    (tmp_path / "submit").mkdir()
    bin_dir, calls = _fake_tools(tmp_path, exit_code)
    env = slurm_env(tmp_path, {**SETTINGS, "FER_SLURM_SHARED": str(tmp_path / "shared")},
                    FER_SLURM_CMD="fer-search", SLURM_CPUS_PER_TASK="3")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = run_task(tmp_path, env, timeout=60)
    assert result.returncode == script_exit, result.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == f"fer-search worker {tmp_path}/submit/studies/s.yaml --threads 3"
    assert ("scontrol requeue 4242_1" in lines) is requeued
    assert "pw-not-on-cmdline" not in calls.read_text()


def test_a_settings_file_others_can_read_is_refused(tmp_path):
    (tmp_path / "submit").mkdir()
    bin_dir, calls = _fake_tools(tmp_path, 0)
    env = slurm_env(tmp_path, {**SETTINGS, "FER_SLURM_SHARED": str(tmp_path / "shared")},
                    FER_SLURM_CMD="fer-search")
    Path(env["FER_SLURM_ENV_FILE"]).chmod(0o644)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = run_task(tmp_path, env, timeout=60)
    assert result.returncode == 2 and "chmod 600" in result.stderr
    assert not calls.exists()


# ------------------------------------------------------------------------------------ PgBouncer


def test_a_task_told_to_use_pgbouncer_connects_to_the_address_it_published(tmp_path):
    (tmp_path / "submit").mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "pgbouncer.address").write_text("node7:6432\n")
    bin_dir, calls = _fake_tools(tmp_path, 0)
    env = slurm_env(tmp_path, {**SETTINGS, "FER_SLURM_SHARED": str(shared),
                               "FER_SLURM_PGBOUNCER": "1"}, FER_SLURM_CMD="fer-search")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = run_task(tmp_path, env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "storage node7:6432/optuna" in calls.read_text().splitlines()
    assert "storage through PgBouncer at node7:6432" in result.stdout
    assert "pw-not-on-cmdline" not in result.stdout + result.stderr


def test_a_task_told_to_use_pgbouncer_without_one_running_stops_with_one_line(tmp_path):
    (tmp_path / "submit").mkdir()
    bin_dir, calls = _fake_tools(tmp_path, 0)
    env = slurm_env(tmp_path, {**SETTINGS, "FER_SLURM_SHARED": str(tmp_path / "shared"),
                               "FER_SLURM_PGBOUNCER": "1", "FER_SLURM_PGBOUNCER_WAIT_S": "1"},
                    FER_SLURM_CMD="fer-search")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = run_task(tmp_path, env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pgbouncer.address" in result.stderr and "fer-search-pgbouncer.sbatch" in result.stderr
    assert not calls.exists()


def test_the_pgbouncer_job_refuses_a_storage_that_is_not_postgresql(tmp_path):
    env = slurm_env(tmp_path, {"FER_SEARCH_STORAGE": "sqlite:///studies/optuna.db",
                               "FER_SLURM_SHARED": str(tmp_path / "shared")})
    result = subprocess.run(["bash", str(PGBOUNCER_SCRIPT)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fer-search-pgbouncer: FER_SEARCH_STORAGE in {tmp_path}/fer-search.env: expected "
        "postgresql://user:password@host[:port]/database"]


@pytest.mark.postgres
@pytest.mark.slow
def test_array_tasks_reach_postgresql_through_the_pgbouncer_job(tmp_path, pg_cluster):
    """The PgBouncer job publishes its address; a task with FER_SLURM_PGBOUNCER=1 runs its
    trials through it (PgBouncer counts its transactions); scancel's SIGTERM ends the job and
    takes the address back."""
    import optuna
    import psycopg2

    try:
        program = Path(pgbouncer.binary())  # /usr/sbin on Debian: not on every user's PATH
        as_postgres = "--user=postgres" if run_as() else ""  # PgBouncer refuses root
    except ClusterUnavailable as error:
        unavailable(str(error))
    name = f"slurm-pgb-{uuid.uuid4().hex[:8]}"
    (tmp_path / "submit").mkdir()
    spec = write_spec(tmp_path / "submit", name=name, space=TINY_SPACE)
    shared = tmp_path / "shared"
    port = free_port()
    settings = {
        "FER_SEARCH_STORAGE": pg_cluster.url("optuna"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        "FER_SLURM_SHARED": str(shared),
        "FER_SLURM_SPEC": str(spec.relative_to(tmp_path / "submit")),
        "FER_SLURM_PGBOUNCER": "1",
        "FER_SLURM_PGBOUNCER_PORT": str(port),
        "FER_SLURM_PGBOUNCER_POOL": "4",
        "FER_SLURM_PGBOUNCER_OPTIONS": as_postgres,
        "FER_SLURM_REPO": str(REPO),
    }
    env = slurm_env(tmp_path, settings)
    env["PATH"] = f"{program.parent}:{env['PATH']}"
    address_file = shared / "pgbouncer.address"
    job = subprocess.Popen(["bash", str(PGBOUNCER_SCRIPT)], cwd=tmp_path / "submit",
                           env={**env, "SLURM_JOB_ID": "4241"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not address_file.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not address_file.exists():
            job.terminate()
            pytest.fail(f"the PgBouncer job never published its address: {job.communicate()[0]}")
        host, published = address_file.read_text().strip().rsplit(":", 1)
        assert int(published) == port

        result = run_task(tmp_path, env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert f"storage through PgBouncer at {host}:{port}" in result.stdout

        console = psycopg2.connect(host="127.0.0.1", port=port, dbname="pgbouncer",
                                   user=USER, password=pg_cluster.password)
        console.autocommit = True
        try:
            with console.cursor() as cursor:
                cursor.execute("SHOW STATS")
                names = [column.name for column in cursor.description]
                stats = {row[0]: dict(zip(names, row, strict=True)) for row in cursor}
        finally:
            console.close()
        assert stats["optuna"]["total_xact_count"] > 10, stats.get("optuna")
    finally:
        job.terminate()  # scancel's SIGTERM
        output, _ = job.communicate(timeout=30)
    assert job.returncode == 0, output
    assert not address_file.exists(), output
    assert pg_cluster.password not in output + result.stdout + result.stderr

    storage = optuna.storages.RDBStorage(pg_cluster.url("optuna"))
    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    finally:
        storage.engine.dispose()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2


@pytest.mark.parametrize("change, says", [
    ("group-writable", "its mode 664 lets others write it (chmod go-w)"),
    ("world-writable", "its mode 646 lets others write it (chmod go-w)"),
    ("someone else's", "it belongs to uid 4321, not to you"),
    ("a symbolic link", "it is a symbolic link"),
    ("not an address", "expected host:port, found 'evil@attacker:1/x?'"),
])
def test_a_task_refuses_a_pgbouncer_address_someone_else_could_have_written(tmp_path, change,
                                                                           says):
    """Anyone who can write pgbouncer.address sends the workers, and their password, where
    they like (issue 30, finding 7): the task checks its owner and mode as it checks the
    settings file's, and stops with one line, before any worker starts."""
    (tmp_path / "submit").mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    address_file = shared / "pgbouncer.address"
    address_file.write_text("node7:6432\n")
    address_file.chmod(0o644)
    if change == "group-writable":
        address_file.chmod(0o664)
    elif change == "world-writable":
        address_file.chmod(0o646)
    elif change == "someone else's":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(address_file, 4321, 4321)
    elif change == "a symbolic link":
        elsewhere = tmp_path / "elsewhere.address"
        address_file.rename(elsewhere)
        address_file.symlink_to(elsewhere)
    else:
        address_file.write_text("evil@attacker:1/x?\n")
    bin_dir, calls = _fake_tools(tmp_path, 0)
    env = slurm_env(tmp_path, {**SETTINGS, "FER_SLURM_SHARED": str(shared),
                               "FER_SLURM_PGBOUNCER": "1", "FER_SLURM_PGBOUNCER_WAIT_S": "1"},
                    FER_SLURM_CMD="fer-search")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = run_task(tmp_path, env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fer-search-array: refusing {address_file}: {says}")
    assert line.endswith("; it must be a file you own that no one else can write (your "
                         "fer-search-pgbouncer.sbatch job writes it so)")
    assert not calls.exists()
    assert "pw-not-on-cmdline" not in result.stdout + result.stderr
