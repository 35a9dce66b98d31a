"""Takes the README's screenshots of a study in the MLflow UI (docs/runs-view.png and
docs/study-plots.png), with Playwright driving Debian's chromium as the browser tests do.

    .venv/bin/fer-search ui --study quickstart &      # prints the URL of the study's runs
    .venv/bin/python docs/screenshots.py URL

URL is the one `fer-search ui` printed. Needs the `dev` extra (playwright) and chromium.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.browser.conftest import CHROMIUM_ARGS, chromium_path  # noqa: E402

PLOT = "param_importances.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the URL `fer-search ui` printed")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                             args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 760})
        page.set_default_timeout(120_000)
        page.goto(args.url)
        study = page.locator('[data-component-id$="runnamecellrenderer.tsx_46"]').first
        study.wait_for()
        _close_assistant(page)
        study.click()  # unfold the trials under the study run
        page.get_by_role("link", name=re.compile(r"^trial-\d+$")).first.wait_for()
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out / "runs-view.png")

        run_link = page.locator('a[href*="/runs/"]').filter(has_not_text="trial-").first
        href = run_link.get_attribute("href") or ""
        base = args.url.split("#")[0]
        run_path = href.split("#")[-1].split("?")[0]
        page.goto(f"{base}#{run_path}/artifacts/plots/{PLOT}?workflowType=machine_learning")
        page.locator(f"img[alt='plots/{PLOT}']").first.wait_for()
        _close_assistant(page)
        page.wait_for_timeout(1000)
        page.screenshot(path=args.out / "study-plots.png")
        browser.close()
    print(f"wrote {args.out / 'runs-view.png'} and {args.out / 'study-plots.png'}")
    return 0


def _close_assistant(page) -> None:
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


if __name__ == "__main__":
    sys.exit(main())
