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
