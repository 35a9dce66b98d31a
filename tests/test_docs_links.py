"""The Markdown's citations of benchmark results hold: every `benchmarks/results/...` file a page
names exists (README, benchmarks/README, ARCHITECTURE, docs/, deploy/, ...), every file in
benchmarks/results/ is named by some page or listed in its HISTORY.md, and every relative link
of the user's pages (README.md, docs/) reaches a file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HISTORY = RESULTS / "HISTORY.md"
SKIPPED = {"node_modules", "work", "data", "mlruns"}  # generated or downloaded, not the docs

# `benchmarks/results/x.md`, or `results/x.md` as benchmarks/README and the docs shorten it; not
# `work/smoke/results/` (another folder). Braces (`x.{json,md}`) and globs (`x*.md`) allowed.
CITED = re.compile(r"(?<![\w/.-])(?:benchmarks/)?results/([\w.*{},-]*[\w*}])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def markdown_pages(root: Path = ROOT) -> list[Path]:
    """The repository's Markdown, outside hidden and generated folders and the results folder
    itself (its pages are the records, HISTORY.md names files that are gone on purpose)."""
    pages = []
    for path in sorted(root.rglob("*.md")):
        parts = path.relative_to(root).parts
        if any(p.startswith(".") or p in SKIPPED for p in parts[:-1]):
            continue
        if parts[:2] == ("benchmarks", "results"):
            continue
        pages.append(path)
    return pages


def expand(name: str) -> list[str]:
    """`a.{json,md}` -> `a.json`, `a.md` (one level of braces is all the docs use)."""
    match = re.search(r"\{([^{}]*)\}", name)
    if match is None:
        return [name]
    return [name[:match.start()] + choice + name[match.end():]
            for choice in match.group(1).split(",")]


def citations(text: str) -> set[str]:
    """The results files (or glob patterns of them) a page names."""
    return {name for raw in CITED.findall(text) for name in expand(raw.rstrip("."))}


def stem(name: str) -> str:
    return name.split(".", 1)[0]


def missing(cited: set[str], results: Path = RESULTS) -> list[str]:
    """Cited names that match no file (a glob must match at least one)."""
    return sorted(name for name in cited if not list(results.glob(name)))


def uncited(results: Path, cited: set[str], history_text: str) -> list[str]:
    """Results files neither cited (by their own name, a glob, or their pair's: `x.md` cites
    `x.json`) nor named in HISTORY.md."""
    cited_stems = {stem(p.name) for name in cited for p in results.glob(name)}
    named = set(re.findall(r"`([\w.-]+)`", history_text))
    return sorted(p.name for p in results.iterdir()
                  if p.is_file() and p.name != "HISTORY.md" and stem(p.name) not in cited_stems
                  and p.name not in named and stem(p.name) not in named)


def all_citations() -> dict[Path, set[str]]:
    return {page: citations(page.read_text(encoding="utf-8")) for page in markdown_pages()}


def test_every_cited_results_file_exists() -> None:
    problems = [f"{page.relative_to(ROOT)}: benchmarks/results/{name} does not exist"
                f" (removed? cite results/HISTORY.md instead)"
                for page, cited in all_citations().items() for name in missing(cited)]
    assert problems == []


def test_every_results_file_is_cited_or_in_history() -> None:
    cited = set().union(*all_citations().values())
    left = uncited(RESULTS, cited, HISTORY.read_text(encoding="utf-8"))
    assert left == [], (f"benchmarks/results/: {left} are cited by no Markdown page: cite them "
                        "(benchmarks/README.md, 'The results folder') or list them in HISTORY.md")


def test_relative_links_of_the_user_pages_reach_a_file() -> None:
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
    problems = []
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            if not (page.parent / target).exists():
                problems.append(f"{page.relative_to(ROOT)}: link to {target} reaches nothing")
    assert problems == []


def test_the_checks_find_planted_problems(tmp_path: Path) -> None:
    """A green run means something: a missing file, an uncited one and a brace are all seen."""
    for name in ("a.md", "a.json", "b.md", "b.json", "c.md", "d-1.md"):
        (tmp_path / name).write_text("x")
    text = ("See `benchmarks/results/a.{json,md}`, results/gone.md and `results/d-*.md`; "
            "not work/smoke/results/b.md.")
    cited = citations(text)
    assert cited == {"a.json", "a.md", "gone.md", "d-*.md"}
    assert missing(cited, tmp_path) == ["gone.md"]
    assert uncited(tmp_path, cited, "| `c` | ... |") == ["b.json", "b.md"]
    assert citations("the table (results/x.md).") == {"x.md"}
