"""The house's import rules (pyproject.toml's [tool.importlinter] contracts) hold, and they are
not a check that cannot fail: an upward import and a circle, added to a copy of the code, each
break one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).with_name("lint-imports")  # installed beside this Python
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run([str(executable), "--no-cache"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in ("search", "trainer"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_code_keeps_every_import_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def test_the_trainer_importing_the_search_breaks_a_contract(copy: Path):
    _append(copy / "trainer" / "labels.py", "import search.spec.loader  # noqa")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "search uses trainer, never the other way BROKEN" in result.stdout


def test_a_lower_floor_of_search_importing_a_higher_one_breaks_a_contract(copy: Path):
    _append(copy / "search" / "storage" / "locks.py", "import search.study.loop  # noqa")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "search's floors point down BROKEN" in result.stdout


def test_a_circle_inside_a_package_breaks_a_contract(copy: Path):
    # loop imports grid_queue; grid_queue importing loop closes a circle inside search.study.
    _append(copy / "search" / "study" / "grid_queue.py", "import search.study.loop  # noqa")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "no circles inside any package BROKEN" in result.stdout
