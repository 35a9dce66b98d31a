"""`trainer` never imports optuna, mlflow or search (ARCHITECTURE.md: search -> trainer only)."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys, trainer\n"
    "for name in trainer.__all__: getattr(trainer, name)\n"  # load every lazy export
    "import trainer.train, trainer.network.features, trainer.data.loading, trainer.data.synthetic\n"
    "{extra}\n"
    "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'mlflow', 'search'))\n"
    "print(','.join(bad))\n"
)


def _forbidden_modules(extra: str = "") -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(extra=extra)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_trainer_imports_neither_optuna_nor_mlflow_nor_search():
    assert _forbidden_modules() == ""


def test_the_layering_probe_sees_a_forbidden_import():
    assert "optuna" in _forbidden_modules("import optuna").split(",")
