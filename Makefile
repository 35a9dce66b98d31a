# The two commands of the README. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: quickstart test test-fast lint bench-smoke

quickstart:
	scripts/quickstart.sh

test:
	scripts/setup.sh dev,bench
	.venv/bin/ruff check trainer search tests benchmarks
	.venv/bin/lint-imports --no-cache
	.venv/bin/python -m pytest

# The inner loop: everything but the slow, postgres and browser tests.
test-fast:
	scripts/setup.sh dev,bench
	.venv/bin/python -m pytest -m "not slow and not postgres and not browser"

lint:
	scripts/setup.sh dev,bench
	.venv/bin/ruff check trainer search tests benchmarks
	.venv/bin/lint-imports --no-cache

# The peers benchmark at a tiny size (< 1 minute): keeps the harness from rotting; CI runs it.
bench-smoke:
	scripts/setup.sh dev,bench
	.venv/bin/python benchmarks/compare_peers.py --smoke
