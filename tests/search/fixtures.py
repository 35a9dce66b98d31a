"""A tiny real study, run once per test module: the ground for registry, fetch and predict tests.

`tiny_study` copies ``studies/quickstart.yaml``, shrinks it (140 synthetic faces at 32x32, a
2-point grid of 2 epochs, a random frozen VGG16 base) and runs it with `run_study` in a temporary
project folder, which stays the working directory for the module's tests: the synthetic dataset
(``data/``) and MLflow's local artifact root (``mlruns/artifacts/``) are relative to it.

Use it from another test module with::

    from tests.search.fixtures import tiny_study  # noqa: F401  (a pytest fixture)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.yaml"
STUDY_NAME = "tiny"
MODEL_NAME = "expw-vgg16"


@dataclass(frozen=True)
class TinyStudy:
    """Where the tiny study lives.

    Attributes:
        folder: the project folder (the working directory while the fixture is active).
        spec_path: its spec file.
        name: the study's name.
        model_name: the registered model its spec names.
        storage_url, tracking_uri: absolute sqlite URLs of the Optuna and MLflow stores.
    """

    folder: Path
    spec_path: Path
    name: str
    model_name: str
    storage_url: str
    tracking_uri: str

    @property
    def urls(self) -> dict[str, str]:
        return {"storage_url": self.storage_url, "tracking_uri": self.tracking_uri}


def write_tiny_spec(folder: Path, name: str = STUDY_NAME) -> Path:
    """The quickstart spec, shrunk to two quick trials on 140 faces, under `folder`/studies."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(
        name=name,
        space={
            "learning_rate": [1.0e-3, 1.0e-2],
            "batch_size": [32],
            "epochs": [2],
            "head_width": [16],
        },
        storage=f"sqlite:///{folder}/studies/optuna.db",
        tracking_uri=f"sqlite:///{folder}/mlruns/mlflow.db",
    )
    spec["train"].update(image_size=32, weights="none")
    spec["data"].update(synthetic={"faces": 140, "seed": 0}, cache_dir=str(folder / ".cache"))
    spec["registry"] = {"model_name": MODEL_NAME}
    path = folder / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_tiny_study(folder: Path) -> TinyStudy:
    """Writes and runs the tiny study; call it with `folder` as the working directory."""
    from search.spec.loader import load_spec
    from search.study.loop import run_study
    from trainer.runtime import load_tensorflow

    load_tensorflow()
    spec_path = write_tiny_spec(folder)
    spec = load_spec(spec_path)
    summary = run_study(spec, storage_url=spec.storage, tracking_uri=spec.tracking_uri)
    assert summary.best is not None, summary.stopped_because
    return TinyStudy(folder, spec_path, spec.name, spec.model_name, spec.storage,
                     spec.tracking_uri)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> TinyStudy:
    """The tiny study, run once per module, with its folder as the working directory."""
    folder = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield run_tiny_study(folder)
