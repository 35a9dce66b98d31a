"""Issue 30, findings 1 and the Low ones: loading a registered model runs only installed code,
artifact paths stay inside the model, and a face image cannot declare gigabytes of pixels.

The registered model here is made cheaply (no study): a random `weights: none` VGG16 at 32 px,
logged and registered by `log_and_register` exactly as a promotion does. The tests then change
what the store holds, as anyone who can write to a tracking server could: the stored
``pyfunc_model.py`` and ``code/trainer`` write a marker file when they run, and ``MLmodel``
points its ``.keras`` artifact outside the model's folder.

`registered` and `tamper` are used by test_serve_limits.py too.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import yaml
from PIL import Image

import trainer
from search.cli.main import main
from search.errors import InputError
from search.registry.loading import load_version
from search.registry.predict import load_images
from search.registry.refs import check_inside_path, fetch

MODEL_NAME = "expw-vgg16"
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Registered:
    """A registered version (1, alias champion) in a local store.

    Attributes:
        folder: the project folder (MLflow's artifact root is under it).
        tracking_uri: the sqlite store.
        model_dir: the version's files in the artifact store (MLmodel, model.keras, code/...).
        face: a small photo to predict on.
    """

    folder: Path
    tracking_uri: str
    model_dir: Path
    face: Path

    @property
    def ref(self) -> str:
        return f"{MODEL_NAME}@champion"


def make_registered(folder: Path) -> Registered:
    """Logs and registers a random-weights model; call it with `folder` as the working folder."""
    from search.registry.registration import Source, log_and_register
    from search.tracking.runs import Tracker
    from trainer.network.model import build_network

    trainer.load_tensorflow()
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    tracker = Tracker(uri)
    run_id = tracker.client.create_run(tracker.experiment_id("security")).info.run_id
    tracker.client.set_terminated(run_id)
    config = trainer.TrainConfig(image_size=IMAGE_SIZE, weights="none", head_width=8)
    version = log_and_register(
        tracker, run_id, build_network(config).full, name=MODEL_NAME,
        source=Source(study="security", trial_number=0, run_id=run_id,
                      experiment_id=tracker.experiment_id("security"), study_run_id=None,
                      dataset=("expw-48px", "0" * 32)),
        image_size=IMAGE_SIZE,
        tags={"image_size": IMAGE_SIZE}, description="a random model for the security tests",
        test_metrics={},
    )
    tracker.client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    uri_of_files = tracker.client.get_model_version_download_uri(MODEL_NAME, version.version)
    model_dir = Path(unquote(urlparse(uri_of_files).path))
    assert (model_dir / "MLmodel").is_file() and (model_dir / "pyfunc_model.py").is_file()
    face = folder / "face.png"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(face)
    return Registered(folder, uri, model_dir, face)


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Registered:
    folder = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow's local artifact root, mlruns/artifacts, is relative
        yield make_registered(folder)


@dataclass(frozen=True)
class Tampered:
    """Markers that the stored code writes when it runs."""

    pyfunc_marker: Path
    trainer_marker: Path

    def ran(self) -> list[str]:
        return [p.name for p in (self.pyfunc_marker, self.trainer_marker) if p.exists()]

    def clear(self) -> None:
        for marker in (self.pyfunc_marker, self.trainer_marker):
            marker.unlink(missing_ok=True)


def tamper_stored_code(registered: Registered, markers: Path) -> Tampered:
    """Appends two lines that write a marker to the stored pyfunc_model.py and to the stored
    code/trainer/__init__.py: the model still loads and predicts as before (the review's
    finding: "the prediction still looked normal")."""
    markers.mkdir(parents=True, exist_ok=True)
    tampered = Tampered(markers / "pyfunc_model-ran", markers / "trainer-ran")
    for stored, marker in ((registered.model_dir / "pyfunc_model.py", tampered.pyfunc_marker),
                           (registered.model_dir / "code" / "trainer" / "__init__.py",
                            tampered.trainer_marker)):
        assert stored.is_file(), stored
        if "-ran" not in stored.read_text():
            stored.write_text(stored.read_text() + "\nimport pathlib as _tampered\n"
                              f"_tampered.Path({str(marker)!r}).write_text('ran')\n")
    return tampered


@pytest.fixture(scope="module")
def tamper(registered, tmp_path_factory) -> Tampered:
    return tamper_stored_code(registered, tmp_path_factory.mktemp("markers"))


# ---------------------------------------------------------------- stored code does not run


def test_predict_does_not_run_the_code_stored_with_the_model(registered, tamper, capsys):
    tamper.clear()
    code = main(["predict", "--model", registered.ref, "--tracking-uri",
                 registered.tracking_uri, "--json", str(registered.face)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 1
    got = json.loads(lines[0])
    assert got["expression"] in trainer.CLASS_NAMES
    assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert tamper.ran() == []


def test_the_installed_loader_predicts_what_the_keras_file_does(registered, tamper, tmp_path):
    tamper.clear()
    model = load_version(registered.ref, tracking_uri=registered.tracking_uri)
    assert (model.name, model.version, model.image_size, model.stored_code) == (
        MODEL_NAME, 1, IMAGE_SIZE, False)
    faces = load_images([registered.face], IMAGE_SIZE)
    frame = model.predict(faces)
    keras_model = trainer.load_model(
        fetch(registered.ref, tmp_path, tracking_uri=registered.tracking_uri) / "model.keras")
    np.testing.assert_allclose(frame[list(trainer.CLASS_NAMES)].to_numpy(),
                               trainer.predict_proba(keras_model, faces), atol=1e-6)
    with pytest.raises(ValueError, match="expected faces of 32x32x3"):
        model.predict(np.zeros((1, 40, 40, 3), dtype=np.uint8))
    assert tamper.ran() == []


def test_loading_writes_nothing_into_the_artifact_store(registered, tamper):
    before = _listing(registered.model_dir.parent)
    load_version(registered.ref, tracking_uri=registered.tracking_uri)
    assert _listing(registered.model_dir.parent) == before


def test_trust_stored_code_runs_it(registered, tamper, capsys):
    tamper.clear()
    code = main(["predict", "--model", registered.ref, "--tracking-uri",
                 registered.tracking_uri, "--json", "--trust-stored-code", str(registered.face)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.strip())["expression"] in trainer.CLASS_NAMES
    # MLflow runs the stored file; the stored trainer copy is imported only in a process that
    # has not imported trainer yet (this one has), so only the first marker is certain here.
    assert "pyfunc_model-ran" in tamper.ran()


# ------------------------------------------------------------- artifact paths stay inside


@pytest.mark.parametrize("path", ["../secret.keras", "artifacts/../../secret.keras",
                                  "/etc/passwd", "file:///etc/passwd", "C:/secret.keras",
                                  "artifacts\\..\\..\\secret.keras", "./model.keras", "", None,
                                  "artifacts/%2e%2e/secret.keras", 7])
def test_an_artifact_path_leaving_the_model_is_refused(path):
    with pytest.raises(InputError, match="expected a relative path inside the model's folder"):
        check_inside_path(path, "the .keras artifact path")


def test_inside_paths_pass():
    assert check_inside_path("artifacts/model.keras", "x") == "artifacts/model.keras"
    assert check_inside_path("model.keras", "x") == "model.keras"


@pytest.fixture
def climbing_mlmodel(registered):
    """The stored MLmodel's .keras path rewritten to ``../secret.keras``, a file that exists
    beside the model's folder; restored afterwards."""
    mlmodel = registered.model_dir / "MLmodel"
    original = mlmodel.read_text()
    secret = registered.model_dir.parent / "secret.keras"
    shutil.copy(registered.model_dir / "artifacts" / "model.keras", secret)
    data = yaml.safe_load(original)
    data["flavors"]["python_function"]["artifacts"]["keras_model"]["path"] = "../secret.keras"
    mlmodel.write_text(yaml.safe_dump(data))
    try:
        yield secret
    finally:
        mlmodel.write_text(original)
        secret.unlink()


def test_fetch_refuses_an_mlmodel_that_climbs_out_of_the_model(registered, climbing_mlmodel,
                                                                tmp_path):
    out = tmp_path / "model"
    with pytest.raises(InputError, match=r"version 1: its MLmodel's \.keras artifact path: "
                                         r"expected a relative path inside the model's folder, "
                                         r"but got '\.\./secret\.keras'"):
        fetch(registered.ref, out, tracking_uri=registered.tracking_uri)
    assert not (out / "model.keras").exists()


def test_predict_and_fetch_exit_2_on_a_climbing_mlmodel(registered, climbing_mlmodel, tmp_path,
                                                        capsys):
    for argv in (["fetch", registered.ref, "--out", str(tmp_path / "m")],
                 ["predict", "--model", registered.ref, str(registered.face)]):
        assert main([*argv, "--tracking-uri", registered.tracking_uri]) == 2
        err = capsys.readouterr().err
        assert "inside the model's folder" in err and "Traceback" not in err


# --------------------------------------------------------------------- huge face images


def huge_png(path: Path, width: int = 13000, height: int = 13000) -> Path:
    """A 1-bit black PNG of width x height pixels: about 20 KB on disk, 169 M pixels (half a
    GB as RGB), written without ever holding its pixels."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path):
    png = huge_png(tmp_path / "bomb.png")
    assert png.stat().st_size < 100_000
    with pytest.raises(trainer.UnreadableImage, match=r"13000x13000 = 169,000,000 pixels, "
                                                      r"more than the 50,000,000") as caught:
        trainer.read_image(png)
    assert caught.value.kind == "corrupt"
    with pytest.raises(InputError, match=r"bomb\.png: not a readable image .*13000x13000"):
        load_images([png], 32)


def test_an_image_at_the_pixel_limit_still_reads(tmp_path):
    from trainer.data.faces import MAX_PIXELS, image_size

    side = 7071  # 7071^2 = 49,999,041 pixels: just under
    assert side * side <= MAX_PIXELS
    assert image_size(huge_png(tmp_path / "big.png", side, side)) == (side, side)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}
