#!/usr/bin/env bash
# The storage and study tests again, against the newest Optuna that pyproject.toml allows (not the
# pinned one): the claims, the point table and the queue reach into Optuna's storage, so the day a
# release allowed by the range breaks them, CI says so (test_optuna_private.py names each private
# name they rely on). Only Optuna is swapped (installed with
# --no-deps into .optuna-newest, ahead of .venv on PYTHONPATH, which worker subprocesses inherit);
# everything else stays pinned. Prints the version it tested.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev,bench
requirement=$(.venv/bin/python -c '
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if re.match(r"optuna\s*[<>=!~]", d)))')
rm -rf .optuna-newest
.venv/bin/python -m pip install -q --no-deps --target .optuna-newest "$requirement"
export PYTHONPATH="$PWD/.optuna-newest${PYTHONPATH:+:$PYTHONPATH}"
version=$(.venv/bin/python -c 'import optuna; print(optuna.__version__)')
pinned=$(grep -i '^optuna==' constraints.txt | cut -d= -f3)
echo "storage and study tests against optuna $version (newest allowed by \"$requirement\"; pinned: $pinned)"
.venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not browser" \
  tests/search/test_claims.py tests/search/test_exactly_once.py tests/search/test_groups.py \
  tests/search/test_ask_batch.py tests/search/test_study.py tests/search/test_store_faults.py \
  tests/search/test_optuna_private.py
