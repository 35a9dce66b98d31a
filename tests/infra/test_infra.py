"""tests/infra's own rules: it stands below the benchmarks (they take their throwaway cluster from
it, never the other way), and each test hook puts its fake in place for the block only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.infra import hooks
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
