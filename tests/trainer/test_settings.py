"""trainer.settings: every FER_SEARCH_* knob listed once, read at use, one clear error for a
malformed value, overridable in-process; docs/settings.md is its table; nothing else in search/
or trainer/ reads a FER_SEARCH_ variable from the environment."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from trainer import settings
from trainer.errors import ConfigError
from trainer.settings import SettingError

ROOT = Path(__file__).resolve().parents[2]


def test_docs_settings_md_holds_the_generated_table():
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    table = "".join(line + "\n" for line in text.splitlines() if line.startswith("|"))
    assert table == settings.markdown_table(), (
        "docs/settings.md is out of date: paste settings.markdown_table() into it")


def test_every_knob_says_what_it_is_for():
    for knob in settings.KNOBS.values():
        assert knob.name.startswith("FER_SEARCH_") and knob.meaning and knob.kind
        assert knob.audience in (settings.USER, settings.TESTS)


def test_every_fer_search_name_in_the_project_is_a_listed_knob():
    """A variable named in code, compose, the Dockerfile, scripts or docs is in the table."""
    folders = ["search", "trainer", "benchmarks", "tests", "scripts", "docs"]
    files = [p for folder in folders for p in (ROOT / folder).rglob("*")
             if p.is_file() and p.suffix in (".py", ".sh", ".md", ".yml", ".yaml", "")]
    files += [ROOT / name for name in ("docker-compose.yml", "Dockerfile", ".env.example",
                                      "README.md", "ARCHITECTURE.md", "Makefile")]
    named = set()
    for path in files:
        if path.is_file() and "results" not in path.parts and path != Path(__file__).resolve():
            named |= set(re.findall(r"FER_SEARCH_[A-Z0-9_]*[A-Z0-9]",
                                    path.read_text(encoding="utf-8", errors="replace")))
    assert named - set(settings.KNOBS) == set()


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


def test_only_the_settings_module_reads_fer_search_variables():
    offenders = []
    for folder in ("search", "trainer"):
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
    assert settings.db_retry_s() == 300.0
    monkeypatch.setenv("FER_SEARCH_DB_RETRY_S", "2.5")
    assert settings.db_retry_s() == 2.5
    monkeypatch.setenv("FER_SEARCH_DB_RETRY_S", "  ")  # empty: the default
    assert settings.db_retry_s() == 300.0


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("FER_SEARCH_DB_RETRY_S", "five", "seconds (a number >= 0)"),
    ("FER_SEARCH_DB_RETRY_S", "-1", "seconds (a number >= 0)"),
    ("FER_SEARCH_GRACE_S", "2.5", "whole seconds (>= 1)"),
    ("FER_SEARCH_MAX_GROUP", "0", "a whole number (>= 1)"),
    ("FER_SEARCH_TF_LOGS", "maybe", "0 or 1"),
    ("FER_SEARCH_HEAD_JIT", "xla", "0, step or epoch"),
    ("FER_SEARCH_DISK_LIMIT_BYTES", "1e9", "bytes (a whole number >= 0)"),
])
def test_a_malformed_value_is_one_error_naming_variable_expected_and_found(
        monkeypatch, name, text, expected):
    monkeypatch.setenv(name, text)
    with pytest.raises(SettingError) as caught:
        settings.get(name)
    assert isinstance(caught.value, ConfigError)  # bad input: the CLI's one line, exit 2
    assert str(caught.value) == (
        f"environment variable {name}: expected {expected}, but got {text!r}")


def test_override_wins_over_the_environment_and_is_undone(monkeypatch):
    monkeypatch.setenv("FER_SEARCH_GRACE_S", "30")
    with settings.override(FER_SEARCH_GRACE_S=2, FER_SEARCH_DISK_LIMIT_BYTES=7):
        assert (settings.grace_s(), settings.disk_limit_bytes()) == (2, 7)
        with settings.override(FER_SEARCH_GRACE_S=None):  # None: unset, whatever the env says
            assert settings.grace_s() == 60
        assert settings.grace_s() == 2
    assert (settings.grace_s(), settings.disk_limit_bytes()) == (30, None)
    with pytest.raises(KeyError, match="FER_SEARCH_GRACE"):
        with settings.override(FER_SEARCH_GRACES=1):
            pass
    with settings.override(FER_SEARCH_HEAD_JIT="xla"), pytest.raises(SettingError):
        settings.head_jit()
