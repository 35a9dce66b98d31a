# The two commands of the README. Both set up .venv first (scripts/setup.sh is idempotent).
.PHONY: quickstart test test-fast test-newest-optuna scan lint bench-smoke

quickstart:
	scripts/quickstart.sh

test:
	scripts/setup.sh dev,bench
	.venv/bin/ruff check trainer search tests benchmarks
	.venv/bin/lint-imports --no-cache
	.venv/bin/python -m pytest

# The storage and study tests against the newest Optuna that pyproject.toml allows (CI runs it).
test-newest-optuna:
	scripts/test-newest-optuna.sh

# checkov (deploy/, docker-compose.yml, Dockerfile) and bandit (search/, trainer/), pinned in
# constraints-scan.txt, in .venv-scan (CI runs it; the skip list with its reasons: .checkov.yaml).
scan:
	scripts/scan.sh

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
