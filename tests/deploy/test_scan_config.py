"""scripts/scan.sh's inputs, offline (the scan itself installs checkov and bandit, so it runs
apart from the tests): every scanner and package is pinned, and every check the skip list skips
says why."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_scanners_and_everything_they_need_are_pinned():
    lines = [line.strip() for line in (REPO / "constraints-scan.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+(\[[a-z,]+\])?==[A-Za-z0-9.+!-]+", line)
               for line in lines), [line for line in lines if "==" not in line]
    names = {line.split("==")[0].lower() for line in lines}
    assert {"checkov", "bandit"} <= names
    script = (REPO / "scripts" / "scan.sh").read_text()
    assert "--no-deps -r \"$pins\"" in script  # exactly the pinned set, nothing resolved


def test_every_skipped_check_says_why():
    text = (REPO / ".checkov.yaml").read_text()
    settings = yaml.safe_load(text)
    skipped = settings.get("skip-check", [])
    assert len(skipped) <= 5, "a short skip list"
    lines = text.splitlines()
    for check in skipped:
        index = lines.index(f"  - {check}")
        reason = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            reason.append(line)
        assert len(" ".join(reason)) > 60, f"{check}: no reason given above it"
