"""The knobs: every FER_SEARCH_* variable declared once, in the settings module of the package
that reads it (trainer/settings.py, search/settings.py, tests/infra/settings.py), read at use,
one clear error for a malformed value, overridable in-process; docs/settings.md is the table of
all three; nothing else in search/ or trainer/ reads a FER_SEARCH_ variable from the
environment."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from search import settings as search_settings
from tests.infra import settings as test_settings
from trainer import settings
from trainer.errors import ConfigError
from trainer.settings import SettingError

ROOT = Path(__file__).resolve().parents[2]
HOMES = {"trainer/settings.py": settings.KNOBS, "search/settings.py": search_settings.KNOBS,
         "tests/infra/settings.py": test_settings.KNOBS}
ALL = [knob for home in HOMES.values() for knob in home]


def test_docs_settings_md_holds_the_generated_table():
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    table = "".join(line + "\n" for line in text.splitlines() if line.startswith("|"))
    assert table == test_settings.docs_table(), (
        "docs/settings.md is out of date: paste `python -m tests.infra.settings` into it")
    assert test_settings.HOMES == tuple(HOMES.values())


def test_every_knob_says_what_it_is_for_and_is_declared_once():
    for knob in ALL:
        assert knob.name.startswith("FER_SEARCH_") and knob.meaning and knob.kind
        assert knob.audience in (settings.USER, settings.TESTS)
    names = [knob.name for knob in ALL]
    assert len(names) == len(set(names)), "a knob declared in two homes"
    for path, home in HOMES.items():
        assert home.home == path and (ROOT / path).is_file()


def test_each_package_declares_the_knobs_it_reads():
    """A knob's home is the package whose code reads it: the trainer's accessors are read in
    trainer/, search's in search/, the tests' nowhere in the product."""
    def accessor_reads(folder: str, home: str) -> set[str]:
        found = set()
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "settings.py" and path.parent == ROOT / folder:
                continue
            found |= set(re.findall(rf"\b{home}\.([a-z_]+)\(", path.read_text(encoding="utf-8")))
        return found

    def accessors(module) -> set[str]:
        return {name for name, value in vars(module).items()
                if inspect.isfunction(value) and value.__module__ == module.__name__
                and "get" in value.__code__.co_names}  # an accessor: it reads its knob

    assert accessors(settings) <= accessor_reads("trainer", "settings")
    assert accessors(search_settings) <= accessor_reads("search", "settings")
    product = (ROOT / "trainer", ROOT / "search")
    for path in (p for folder in product for p in folder.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        imported = [alias.name if isinstance(node, ast.Import) else node.module or ""
                    for node in ast.walk(ast.parse(text))
                    if isinstance(node, ast.Import | ast.ImportFrom)
                    for alias in (node.names if isinstance(node, ast.Import) else [None])]
        assert not [name for name in imported if name.split(".")[0] == "tests"], path
        for knob in test_settings.KNOBS:
            assert knob.name not in text, f"{path} names the tests' knob {knob.name}"


def test_every_fer_search_name_in_the_project_is_a_listed_knob():
    """A variable named in code, compose, the Dockerfile, scripts or docs is in the table."""
    folders = ["search", "trainer", "benchmarks", "tests", "scripts", "docs"]
    files = [p for folder in folders for p in (ROOT / folder).rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh", ".md", ".yml", ".yaml", "")]
    files += [ROOT / name for name in ("docker-compose.yml", "Dockerfile", ".env.example",
                                      "README.md", "ARCHITECTURE.md", "Makefile")]
    named = set()
    for path in files:
        scratch = "results" in path.parts or ROOT / "benchmarks" / "work" in path.parents
        if path.is_file() and not scratch and path != Path(__file__).resolve():
            named |= set(re.findall(r"FER_SEARCH_[A-Z0-9_]*[A-Z0-9]",
                                    path.read_text(encoding="utf-8", errors="replace")))
    assert named - {knob.name for knob in ALL} == set()


def _environ_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each read of one environment variable whose name is a FER_SEARCH_
    literal or not a literal at all: os.environ.get(x), os.environ[x], os.getenv(x)."""

    def is_environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ"
                and isinstance(node.value, ast.Name) and node.value.id == "os")

    def suspect(arg: ast.AST) -> bool:
        return not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    and not arg.value.startswith("FER_SEARCH_"))

    found = []
    for node in ast.walk(tree):
        arg = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and (
                (func.attr in ("get", "pop") and is_environ(func.value))
                or (func.attr == "getenv" and isinstance(func.value, ast.Name)
                    and func.value.id == "os")):
                arg = node.args[0]
        elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
              and is_environ(node.value)):
            arg = node.slice
        if arg is not None and suspect(arg):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_only_the_settings_machinery_reads_fer_search_variables():
    """trainer.settings reads the environment for every home; nothing else in search/,
    trainer/ or tests/infra/ does (search's and the tests' declarations go through it)."""
    offenders = []
    for folder in ("search", "trainer", "tests/infra"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "trainer" / "settings.py":
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(ROOT)}:{line}: {what}"
                          for line, what in _environ_reads(ast.parse(text))]
    assert offenders == []


def test_the_scan_sees_a_read():
    reads = _environ_reads(ast.parse(
        "import os\nA = os.environ.get('FER_SEARCH_X', '1')\nB = os.environ[NAME]\n"
        "C = os.getenv('FER_SEARCH_Y')\nD = os.environ.get('HOME')\n"
        "os.environ['FER_SEARCH_Z'] = '1'"))
    assert [line for line, _ in reads] == [2, 3, 4]


def test_knobs_are_read_when_used(monkeypatch):
    monkeypatch.delenv("FER_SEARCH_DB_RETRY_S", raising=False)
    assert search_settings.db_retry_s() == 300.0
    monkeypatch.setenv("FER_SEARCH_DB_RETRY_S", "2.5")
    assert search_settings.db_retry_s() == 2.5
    monkeypatch.setenv("FER_SEARCH_DB_RETRY_S", "  ")  # empty: the default
    assert search_settings.db_retry_s() == 300.0
    monkeypatch.setenv("FER_SEARCH_CHECKPOINT_S", "3")
    assert settings.checkpoint_s() == 3.0


@pytest.mark.parametrize(("home", "name", "text", "expected"), [
    (search_settings, "FER_SEARCH_DB_RETRY_S", "five", "seconds (a number >= 0)"),
    (search_settings, "FER_SEARCH_DB_RETRY_S", "-1", "seconds (a number >= 0)"),
    (search_settings, "FER_SEARCH_GRACE_S", "2.5", "whole seconds (>= 1)"),
    (search_settings, "FER_SEARCH_MAX_GROUP", "0", "a whole number (>= 1)"),
    (settings, "FER_SEARCH_TF_LOGS", "maybe", "0 or 1"),
    (settings, "FER_SEARCH_HEAD_JIT", "xla", "0, step or epoch"),
    (test_settings, "FER_SEARCH_TEST_DISK_LIMIT_BYTES", "1e9", "bytes (a whole number >= 0)"),
])
def test_a_malformed_value_is_one_error_naming_variable_expected_and_found(
        monkeypatch, home, name, text, expected):
    monkeypatch.setenv(name, text)
    with pytest.raises(SettingError) as caught:
        home.get(name)
    assert isinstance(caught.value, ConfigError)  # bad input: the CLI's one line, exit 2
    assert str(caught.value) == (
        f"environment variable {name}: expected {expected}, but got {text!r}")


def test_override_wins_over_the_environment_and_is_undone(monkeypatch):
    monkeypatch.setenv("FER_SEARCH_GRACE_S", "30")
    with search_settings.override(FER_SEARCH_GRACE_S=2, FER_SEARCH_MAX_GROUP=7):
        assert (search_settings.grace_s(), search_settings.max_group()) == (2, 7)
        with search_settings.override(FER_SEARCH_GRACE_S=None):  # None: unset, whatever the env
            assert search_settings.grace_s() == 60
        assert search_settings.grace_s() == 2
    assert (search_settings.grace_s(), search_settings.max_group()) == (30, 8)
    with pytest.raises(KeyError, match="FER_SEARCH_GRACE"):
        with search_settings.override(FER_SEARCH_GRACES=1):
            pass
    with settings.override(FER_SEARCH_HEAD_JIT="xla"), pytest.raises(SettingError):
        settings.head_jit()


def test_a_home_overrides_only_its_own_knobs():
    with pytest.raises(KeyError, match="no knob named 'FER_SEARCH_GRACE_S' in trainer/settings.py"):
        with settings.override(FER_SEARCH_GRACE_S=1):
            pass
    with pytest.raises(KeyError, match="in search/settings.py"):
        with search_settings.override(FER_SEARCH_CHECKPOINT_S=1):
            pass
