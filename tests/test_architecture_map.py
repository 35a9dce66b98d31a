"""ARCHITECTURE.md's map matches the tree: every product folder has its section with a one-line
job, every module sits in its folder's table, the table names no module that is gone, and no
folder outgrows about a dozen modules."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "trainer")
MAX_MODULES = 13  # "about a dozen": past it, a folder holds more than one idea


def folders() -> list[Path]:
    return sorted(p.parent for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py"))


def modules(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.py")}


def sections(text: str) -> dict[str, str]:
    """Each folder's part of the map: from its heading (`### search/...` or
    ``**`search/spec/`**: job``) to the next one."""
    heading = re.compile(r"^(?:### (\w+)/|\*\*`([\w/]+)/`\*\*)", re.M)
    found = list(heading.finditer(text))
    parts = {}
    for i, match in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        parts[match.group(1) or match.group(2)] = text[match.start():end]
    return parts


def named_modules(section: str) -> set[str]:
    """The modules a folder's table names in its first column."""
    names = set()
    for row in re.findall(r"^\| ([^|]+) \|", section, re.M):
        names.update(re.findall(r"`([\w]+\.py)`", row))
    return names


def test_every_folder_has_its_section_and_table_rows() -> None:
    parts = sections((ROOT / "ARCHITECTURE.md").read_text())
    problems = []
    for folder in folders():
        name = folder.relative_to(ROOT).as_posix()
        if name not in parts:
            problems.append(f"{name}/: no section in ARCHITECTURE.md")
            continue
        named = named_modules(parts[name])
        on_disk = modules(folder) - {"__init__.py", "__main__.py"}
        problems += [f"{name}/{m}: not in its table" for m in sorted(on_disk - named)]
        problems += [f"{name}/{m}: in the table, not on disk"
                     for m in sorted(named - modules(folder))]
    assert problems == []


def test_every_sub_package_states_its_job_in_one_line() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    for folder in folders():
        name = folder.relative_to(ROOT).as_posix()
        if "/" not in name:
            continue
        line = re.search(rf"^\*\*`{re.escape(name)}/`\*\*: (.+)$", text, re.M)
        assert line is not None, f"{name}/: no '**`{name}/`**: job' line"
        assert len(line.group(1).split()) >= 3, line.group(0)


def test_no_folder_outgrows_a_dozen_modules() -> None:
    sizes = {f.relative_to(ROOT).as_posix(): len(modules(f) - {"__init__.py"}) for f in folders()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULES} == {}


def test_the_map_reads_its_own_format() -> None:
    """The parser above finds a planted mismatch, so a green run means something."""
    text = "**`search/x/`**: a job here.\n\n| module | job |\n|---|---|\n| `a.py`, `b.py` | j |\n"
    assert named_modules(sections(text)["search/x"]) == {"a.py", "b.py"}


LONG_FILE_LINES = 400  # ARCHITECTURE.md's "## Files over 400 lines"


def long_files(root: Path = ROOT) -> set[str]:
    """The .py files of the packages over LONG_FILE_LINES lines, as repository paths."""
    return {p.relative_to(root).as_posix() for pkg in PACKAGES for p in (root / pkg).rglob("*.py")
            if len(p.read_text(encoding="utf-8").splitlines()) > LONG_FILE_LINES}


def listed_long_files(text: str) -> set[str]:
    """The package files that ARCHITECTURE.md's "## Files over 400 lines" lists: the path that
    opens each of its bullets (a path named further on in a bullet is not listed)."""
    match = re.search(r"^## Files over 400 lines\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match is not None, "ARCHITECTURE.md has no '## Files over 400 lines' section"
    pattern = rf"^- `((?:{'|'.join(PACKAGES)})/[\w/]+\.py)`"
    return set(re.findall(pattern, match.group(1), re.M))


def long_file_problems(on_disk: set[str], listed: set[str]) -> list[str]:
    add = [f"add {name} (over {LONG_FILE_LINES} lines, not listed)"
           for name in sorted(on_disk - listed)]
    remove = [f"remove {name} (listed, now {LONG_FILE_LINES} lines or fewer, or gone)"
              for name in sorted(listed - on_disk)]
    return add + remove


def test_files_over_400_lines_are_exactly_the_listed_ones() -> None:
    problems = long_file_problems(long_files(), listed_long_files(
        (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")))
    assert problems == [], (
        "ARCHITECTURE.md's '## Files over 400 lines' is out of date: " + "; ".join(problems))


def test_the_long_file_check_sees_a_planted_file(tmp_path: Path) -> None:
    """A file just over the line count is found, one at it is not, and the message names both
    ways a list can be wrong."""
    (tmp_path / "search" / "x").mkdir(parents=True)
    (tmp_path / "trainer").mkdir()
    (tmp_path / "search" / "x" / "long.py").write_text("a = 1\n" * (LONG_FILE_LINES + 1))
    (tmp_path / "trainer" / "short.py").write_text("a = 1\n" * LONG_FILE_LINES)
    assert long_files(tmp_path) == {"search/x/long.py"}
    text = ("## Files over 400 lines\n\n- `trainer/short.py`: why, beside `trainer/b.py`.\n"
            "- `search/a.py`: due to be split.\n\n## Next\n\n- `search/x/long.py`\n")
    assert listed_long_files(text) == {"trainer/short.py", "search/a.py"}
    assert long_file_problems({"search/x/long.py"}, listed_long_files(text)) == [
        "add search/x/long.py (over 400 lines, not listed)",
        "remove search/a.py (listed, now 400 lines or fewer, or gone)",
        "remove trainer/short.py (listed, now 400 lines or fewer, or gone)"]
