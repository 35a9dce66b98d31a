"""tests/infra's own rules: it stands below the benchmarks (they take their throwaway cluster from
it, never the other way), each test hook puts its fake in place for the block only, and a wait
says what it waited for and why it ended."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.infra import hooks, waiting
from tests.infra.pgcluster import free_port
from trainer.files import cache_lock, disk_space

INFRA = Path(__file__).resolve().parent


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_infra_never_imports_the_benchmarks():
    found = {path.name: name for path in INFRA.glob("*.py") for name in _imported(path)
             if name.split(".")[0] == "benchmarks"}
    assert found == {}
    assert _imported(Path(__file__)) & {"tests.infra"}  # the scan sees imports at all


def test_a_hook_is_in_place_for_its_block_only(tmp_path):
    lock, free = cache_lock.file_lock, disk_space.free_bytes(tmp_path)
    with hooks.unlocked_cache_files(), hooks.disk_limit(7):
        assert cache_lock.file_lock is not lock
        assert disk_space.free_bytes(tmp_path) == 7
    assert cache_lock.file_lock is lock and disk_space.free_bytes(tmp_path) > 7
    log = tmp_path / "builds.log"
    with hooks.build_log(log):
        cache_lock.record_build("crops", "abc")
    cache_lock.record_build("crops", "after")  # nobody listens any more
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [["crops", "abc"]]
    assert free > 7


def test_a_wait_that_runs_out_names_what_it_saw_and_the_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("FATAL: the reason it never came up\n")
    polls = iter([ValueError("not yet"), 0])

    def condition():
        seen = next(polls, 0)
        if isinstance(seen, Exception):
            raise seen
        return seen

    assert waiting.wait_for(lambda: "ready", 5, "something") == "ready"
    with pytest.raises(AssertionError) as raised:
        waiting.wait_for(condition, 0, "the server", interval=0, log=log)
    said = str(raised.value)
    assert said.startswith("timed out after 0 s waiting for the server; last seen: ")
    assert "the reason it never came up" in said


def test_a_wait_ends_at_once_when_a_watched_process_exits(tmp_path):
    log = tmp_path / "dies.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", "print('bad config'); exit(3)"],
                                   stdout=sink, stderr=subprocess.STDOUT)
    process.wait()
    watched = SimpleNamespace(process=process, log=log)
    # Ended by the exit, not the timeout (whose message would not match).
    with pytest.raises(AssertionError, match=r"(?s)dies exited with 3.*bad config"):
        waiting.wait_for(lambda: False, 60, "the server", watch=[watched])
    assert not waiting.port_open(free_port())
    assert not waiting.http_ok(f"http://127.0.0.1:{free_port()}/health")
