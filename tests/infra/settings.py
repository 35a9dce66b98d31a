"""The tests' own `FER_SEARCH_*` knobs: CI's demands (PostgreSQL, a browser), where the browser
tests find Chromium and keep their screenshots, and the hooks a test sets in a worker's
environment (tests/infra/hooks.py installs them; the product never reads them).

Declared with the trainer's machinery (`trainer.settings.Knob`), like search/settings.py.
`python -m tests.infra.settings` prints docs/settings.md's table: the trainer's, search's and
these knobs (tests/trainer/test_settings.py checks that the file holds it).
"""

from __future__ import annotations

from search import settings as search_settings
from trainer import settings as trainer_settings
from trainer.settings import TESTS, Knob, Knobs, flag, number, text

KNOBS = Knobs("tests/infra/settings.py", [
    Knob("FER_SEARCH_REQUIRE_POSTGRES", False, "0 or 1", flag,
         "1 turns the skip of the `postgres` tests (no initdb/pg_ctl here) into a failure (CI).",
         TESTS),
    Knob("FER_SEARCH_REQUIRE_BROWSER", False, "0 or 1", flag,
         "1 turns the skip of the `browser` tests (no Playwright or Chromium) into a failure "
         "(CI).", TESTS),
    Knob("FER_SEARCH_CHROMIUM", None, "a file", text,
         "The Chromium executable the `browser` tests drive (default: found on PATH).", TESTS),
    Knob("FER_SEARCH_SCREENSHOTS", None, "a folder", text,
         "Where the `browser` tests keep their screenshots (default: .artifacts/screenshots/).",
         TESTS),
    # The hooks of a worker started by tests/infra/workers.spawn_worker (tests/infra/hooks.py).
    Knob("FER_SEARCH_TEST_KILL_AT_EPOCH", 0, "a whole number (>= 0)", number(int, 0),
         "A test's worker SIGKILLs itself right after reporting this epoch of a trial (0: "
         "never): a machine lost mid-training at a known point.", TESTS),
    Knob("FER_SEARCH_TEST_BUILD_LOG", None, "a file", text,
         "A test's worker appends one line (`crops KEY PID` or `features NAME PID`) to this file "
         "for every crop cache or feature set it builds: tests count builds across workers.",
         TESTS),
    Knob("FER_SEARCH_TEST_CACHE_UNLOCKED", False, "0 or 1", flag,
         "1: a test's worker takes no file lock on a cache entry, as between machines sharing "
         "the cache folder over NFS; only a lock handed in by `search` (held by the storage) "
         "then serialises its builders.", TESTS),
    Knob("FER_SEARCH_TEST_DISK_LIMIT_BYTES", None, "bytes (a whole number >= 0)",
         number(int, 0),
         "Caps the free disk space a test's worker sees for its caches: a full disk, simulated.",
         TESTS),
])
get = KNOBS.get
override = KNOBS.override

HOMES = (trainer_settings.KNOBS, search_settings.KNOBS, KNOBS)
"""Every home of a knob, in the order of docs/settings.md's table."""


def require_postgres() -> bool:
    return get("FER_SEARCH_REQUIRE_POSTGRES")


def require_browser() -> bool:
    return get("FER_SEARCH_REQUIRE_BROWSER")


def chromium() -> str | None:
    return get("FER_SEARCH_CHROMIUM")


def screenshots() -> str | None:
    return get("FER_SEARCH_SCREENSHOTS")


def kill_at_epoch() -> int:
    return get("FER_SEARCH_TEST_KILL_AT_EPOCH")


def build_log() -> str | None:
    return get("FER_SEARCH_TEST_BUILD_LOG")


def cache_unlocked() -> bool:
    return get("FER_SEARCH_TEST_CACHE_UNLOCKED")


def disk_limit_bytes() -> int | None:
    return get("FER_SEARCH_TEST_DISK_LIMIT_BYTES")


def docs_table() -> str:
    """docs/settings.md's table: every home's knobs."""
    return trainer_settings.markdown_table(*HOMES)


if __name__ == "__main__":
    print(docs_table(), end="")
