"""The package's public surface: `import search` is cheap, and every name in `__all__` exists."""

from __future__ import annotations

import subprocess
import sys

import search


def test_import_search_loads_no_heavy_library():
    code = ("import sys, search; search.load_spec; "
            "print(sorted(m for m in ('optuna', 'mlflow', 'tensorflow', 'keras') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in search.__all__:
        assert getattr(search, name) is not None, name
    assert search.load_spec.__module__ == "search.spec.loader"
    assert set(search.__all__) <= set(dir(search))
