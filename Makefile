# The two commands of the README. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: quickstart test lint bench-smoke

quickstart:
	scripts/quickstart.sh

test:
	scripts/setup.sh dev
	.venv/bin/python -m pytest

lint:
	scripts/setup.sh dev
	.venv/bin/ruff check trainer search tests benchmarks
