"""Runs the four interleaving tests of test_exactly_once.py on the code before issue 18: each
must fail there (and pass at the commit they come from). Not collected by pytest; a check to
run by hand:

    .venv/bin/python tests/search/red_on_old_code.py [--old 7b88516]

The tests are taken as of `--tests-from` (8c1f32a): since issue 31 this file's tests read the
queue's own table, which the old code lacks; 8c1f32a's read Optuna's trials, as the old code
kept its queue there, and force the same four interleavings. It checks the old commit out into
a temporary git worktree, ports the tests' imports to the old flat module paths (nothing else:
the pauses, hooks and assertions are the tests'), runs them with
this virtual environment on SQLite and on a throwaway PostgreSQL, and prints each test's outcome.
Exit 0 when every ported test failed on its exactly-once assertion, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = "tests/search/test_exactly_once.py"
OLD = "7b88516"  # the commit issue 18 was filed against
TESTS_FROM = "8c1f32a"  # the last commit whose tests kept the queue in Optuna's trials, as 7b88516
# The new module paths and what they were called before the restructure (issue 17).
PORT = {
    "from search.spec.loader import load_spec": "from search.spec import load_spec",
    "from search.storage.locks import study_lock": "from search.locks import study_lock",
    "from search.storage.sessions import open_storage": "from search.storage import open_storage",
    "from search.study import grid_queue": "from search import grid_queue",
    "from search.study import loop as loop_module": "from search import study as loop_module",
    '"search.storage.retry.time.sleep"': '"search.storage_retry.time.sleep"',
    "from search import settings\n": "import search.storage as storage_module\n",
    # The old code read the heartbeat settings into module constants at import.
    "    with settings.override(FER_SEARCH_HEARTBEAT_S=1, FER_SEARCH_GRACE_S=1):\n        yield":
        "    storage_module.HEARTBEAT_S, storage_module.GRACE_S = 1, 1\n    yield",
}
SECTION_AFTER = "# " + "-" * 67 + " around the table"  # where the interleavings end


def ported(tests_from: str) -> str:
    """test_exactly_once.py as of `tests_from`, up to its four interleavings, imports moved to
    the old paths."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{tests_from}:{TESTS}"],
                          check=True, capture_output=True, text=True).stdout
    text = text.split(SECTION_AFTER)[0]
    for new, old in PORT.items():
        if new not in text:
            raise SystemExit(f"{TESTS}: expected to find {new!r} to port; the tests changed")
        text = text.replace(new, old)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default=OLD, help="the commit to run the tests on")
    parser.add_argument("--tests-from", default=TESTS_FROM, help="the commit of the tests")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="red-on-old-") as tmp:
        tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                        args.old], check=True, capture_output=True)
        try:
            (tree / "tests" / "search" / "test_exactly_once_ported.py").write_text(
                ported(args.tests_from))
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "tests/search/test_exactly_once_ported.py",
                 "-p", "no:cacheprovider", "-q", "-rA", "--tb=line"],
                cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                capture_output=True, text=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)
    outcomes = re.findall(r"^(PASSED|FAILED|ERROR) \S+::(\S+)", run.stdout, re.M)
    reasons = re.findall(r"^\S+test_exactly_once_ported\.py:\d+: (.*)$", run.stdout, re.M)
    for outcome, name in outcomes:
        print(f"{outcome:7} {name}")
    for reason in reasons:
        print(f"  why: {reason[:160]}")
    red = [o for o, _ in outcomes if o == "FAILED"]
    # Red for the right reason: every failure is the exactly-once assertion, not an import error
    # or a hook that never fired.
    right = len(reasons) == len(red) and all(
        r.startswith(("AssertionError", "assert ")) and "never" not in r for r in reasons)
    print(f"{len(red)} of {len(outcomes)} red on {args.old}"
          + ("" if right else "; some not on the exactly-once assertion (see above)"))
    return 0 if outcomes and len(red) == len(outcomes) and right else 1


if __name__ == "__main__":
    sys.exit(main())
