"""Browser tests: Playwright (from PyPI) driving Debian's `chromium` (no browser download exists
here, so Playwright is pointed at the system executable).

Where Playwright or Chromium is missing the tests skip, unless FER_SEARCH_REQUIRE_BROWSER=1
(`.ci/run` sets it and installs chromium), which turns the skip into a failure. The screenshots
they take are kept in `.artifacts/screenshots/` (FER_SEARCH_SCREENSHOTS chooses another folder),
printed at the end of the test session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.infra import settings

# Headless in a container: no sandbox (root), no GPU, and nothing fetched from outside.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"
_shots: list[Path] = []


def unavailable(reason: str) -> None:
    """Skips the test, or fails it where CI requires the browser tests to run."""
    if settings.require_browser():
        pytest.fail(f"{reason} (FER_SEARCH_REQUIRE_BROWSER=1 requires the browser tests)")
    pytest.skip(reason)


def chromium_path() -> str | None:
    for candidate in (settings.chromium(), shutil.which("chromium"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -c constraints.txt -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        unavailable("chromium is not installed (apt-get install chromium; .ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder the screenshots go to (printed at the end of the session); a fixed place, so
    that they outlive pytest's rotation of its temporary folders."""
    chosen = settings.screenshots()
    folder = Path(chosen) if chosen else SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    _shots.append(folder)
    return folder


@pytest.fixture
def page(browser):
    """A fresh page (1400 x 900), closed after the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)  # a first load on a busy 2-core machine
    yield page
    context.close()


def pytest_terminal_summary(terminalreporter) -> None:
    for folder in _shots:
        terminalreporter.write_line(f"browser screenshots: {folder}")
