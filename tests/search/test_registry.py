"""Promotion to the MLflow registry, fetching and predicting, on a tiny real study.

The study (tests/search/fixtures.py) runs once for the module; each test that needs its own alias
history promotes into its own registered model name, so the tests do not depend on their order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from PIL import Image

import trainer
from search.data import DataProvider
from search.errors import InputError
from search.predict import load_images, predict_images
from search.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    check_reproduced,
    fetch,
    models_uri,
    parse_model_ref,
    promote,
)
from search.spec import load_spec
from tests.search.fixtures import tiny_study  # noqa: F401  (a module-scoped fixture)

FILES = {"model.keras", "class_names.json", "metadata.json"}


@pytest.fixture(scope="module")
def champion(tiny_study):  # noqa: F811
    """The tiny study's best trial, promoted once: version 1 of the spec's model, champion."""
    return promote(tiny_study.name, **tiny_study.urls)


@pytest.fixture(scope="module")
def client(tiny_study):  # noqa: F811
    return MlflowClient(tiny_study.tracking_uri, registry_uri=tiny_study.tracking_uri)


@pytest.fixture(scope="module")
def faces(tiny_study):  # noqa: F811
    """A few real test-split faces of the tiny dataset (from the crop cache the study built)."""
    data = DataProvider(load_spec(tiny_study.spec_path)).get(32)
    return np.asarray(data.test.images[:4])


def _best(tiny_study):  # noqa: F811
    return optuna.load_study(study_name=tiny_study.name,
                             storage=tiny_study.storage_url).best_trial


# ------------------------------------------------------------------------------------ promote


def test_first_promotion_is_champion_with_its_provenance_in_tags(tiny_study, champion, client):  # noqa: F811
    best = _best(tiny_study)
    assert (champion.model_name, champion.version, champion.alias) == ("expw-vgg16", 1, CHAMPION)
    assert champion.previous_champion_version is None
    assert champion.trial_number == best.number
    assert champion.run_id == best.user_attrs["mlflow_run_id"]
    assert champion.score_name == "test_accuracy"
    assert set(champion.test_metrics) == {"test_accuracy", "test_macro_f1", "test_loss"}

    version = client.get_model_version_by_alias("expw-vgg16", CHAMPION)
    assert int(version.version) == 1
    tags = version.tags
    assert tags["study"] == tiny_study.name
    assert tags["trial_number"] == str(best.number)
    assert tags["metric"] == "val_accuracy"
    config = load_spec(tiny_study.spec_path).train_config(best.params)
    for key, value in config.to_dict().items():  # every TrainConfig field, searched or not
        assert tags[key] == str(value), key
    assert float(tags["val_accuracy"]) == pytest.approx(best.value, abs=1e-6)
    for key in ("test_accuracy", "test_macro_f1"):
        assert float(tags[key]) == champion.test_metrics[key]
    parent = client.get_run(optuna.load_study(
        study_name=tiny_study.name, storage=tiny_study.storage_url
    ).user_attrs["mlflow_parent_run_id"])
    assert tags["data_fingerprint"] == parent.data.params["data_fingerprint"]


def test_promotion_leaves_the_trial_run_finished_with_test_scores(tiny_study, champion, client):  # noqa: F811
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == champion.test_metrics["test_accuracy"]
    logged = {a.path for a in client.list_artifacts(champion.run_id, "test")}
    assert {"test/evaluation.json", "test/confusion_matrix.png"} <= logged
    assert client.get_model_version("expw-vgg16", "1").run_id == champion.run_id


def test_champion_moves_only_for_a_better_test_score_or_when_forced(tiny_study, client):  # noqa: F811
    name = "expw-aliases"
    run_id = _best(tiny_study).user_attrs["mlflow_run_id"]
    ended = client.get_run(run_id).info
    first = promote(tiny_study.name, **tiny_study.urls, model_name=name)
    assert (first.version, first.alias) == (1, CHAMPION)
    # The trial's run was reopened to log the model and closed as it was.
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (ended.status, ended.end_time)

    same = promote(tiny_study.name, **tiny_study.urls, model_name=name)
    assert (same.version, same.alias) == (2, CHALLENGER)  # equal is not better
    assert (same.previous_champion_version, same.previous_champion_score) == (1, first.score)

    # The champion looks worse than the same model promoted again: the new version wins.
    client.set_model_version_tag(name, "1", "test_accuracy", str(first.score - 0.5))
    better = promote(tiny_study.name, **tiny_study.urls, model_name=name)
    assert (better.version, better.alias, better.previous_champion_version) == (3, CHAMPION, 1)

    # An unbeatable champion, replaced anyway by force.
    client.set_model_version_tag(name, "3", "test_accuracy", "2.0")
    forced = promote(tiny_study.name, **tiny_study.urls, model_name=name, force=True)
    assert (forced.version, forced.alias, forced.previous_champion_score) == (4, CHAMPION, 2.0)
    aliases = client.get_registered_model(name).aliases
    assert {alias: int(v) for alias, v in aliases.items()} == {CHAMPION: 4, CHALLENGER: 2}


def test_a_model_that_cannot_serve_is_not_registered(tiny_study, client, monkeypatch):  # noqa: F811
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this op")

    # Only the pyfunc model calls trainer.predict_proba; evaluation has its own reference.
    monkeypatch.setattr(trainer, "predict_proba", broken)
    with pytest.raises(RegistryError, match="cannot load or predict.*no kernel for this op"):
        promote(tiny_study.name, **tiny_study.urls, model_name="expw-broken")
    assert not client.search_registered_models("name='expw-broken'")


def test_promote_names_the_storage_and_the_studies_there(tiny_study):  # noqa: F811
    with pytest.raises(InputError, match=r"no study named 'nope' in sqlite:///.*; studies there: "
                                         r".*tiny"):
        promote("nope", **tiny_study.urls)


def test_promote_needs_a_complete_trial(tiny_study):  # noqa: F811
    optuna.create_study(study_name="empty", storage=tiny_study.storage_url)
    with pytest.raises(InputError, match="study 'empty' .* has no complete trial"):
        promote("empty", **tiny_study.urls)


def test_promote_refuses_a_study_fer_search_did_not_make(tiny_study):  # noqa: F811
    study = optuna.create_study(study_name="foreign", storage=tiny_study.storage_url)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(InputError, match="'foreign' was not created by fer-search"):
        promote("foreign", **tiny_study.urls)


def test_promote_rejects_a_model_name_unfit_for_a_reference(tiny_study):  # noqa: F811
    with pytest.raises(InputError, match="model name"):
        promote(tiny_study.name, **tiny_study.urls, model_name="bad/name")


def test_a_rebuilt_model_that_scores_otherwise_is_not_registered():
    trial = optuna.trial.create_trial(value=0.5, params={}, distributions={})
    evaluation = trainer.Evaluation(accuracy=0.25, macro_f1=0.2, loss=1.0, per_class={},
                                    confusion=[])
    with pytest.raises(RegistryError, match=r"0\.250000 .* recorded 0\.500000.*fingerprint now "
                                            r"abc; at study time def"):
        check_reproduced(trial, "val_accuracy", evaluation, "abc", "def")
    close = trainer.Evaluation(accuracy=0.5 + 1e-9, macro_f1=0.2, loss=1.0, per_class={},
                               confusion=[])
    check_reproduced(trial, "val_accuracy", close, "abc")


# ------------------------------------------------------------------------- references, fetch


@pytest.mark.parametrize(
    ("ref", "parsed", "uri"),
    [
        ("expw-vgg16", ("expw-vgg16", "champion", None), "models:/expw-vgg16@champion"),
        ("expw-vgg16@challenger", ("expw-vgg16", "challenger", None),
         "models:/expw-vgg16@challenger"),
        ("expw-vgg16/12", ("expw-vgg16", None, 12), "models:/expw-vgg16/12"),
        ("models:/m.v2@champion", ("m.v2", "champion", None), "models:/m.v2@champion"),
    ],
)
def test_model_references(ref, parsed, uri):
    assert parse_model_ref(ref) == parsed
    assert models_uri(ref) == uri


@pytest.mark.parametrize("ref", ["", "@champion", "name@", "name/", "name/0", "name/x",
                                 "name/1/2", "a@b@c", "na me", "name@al ias"])
def test_malformed_model_references(ref):
    with pytest.raises(InputError, match="expected NAME, NAME@ALIAS or NAME/VERSION"):
        parse_model_ref(ref)


@pytest.mark.parametrize("ref", ["expw-vgg16@champion", "expw-vgg16/1", "expw-vgg16"])
def test_fetch_writes_the_model_and_its_description(tiny_study, champion, tmp_path, ref):  # noqa: F811
    out = fetch(ref, tmp_path / "model", tracking_uri=tiny_study.tracking_uri)
    assert {p.name for p in out.iterdir()} == FILES  # nothing else, no staging folder left
    assert json.loads((out / "class_names.json").read_text()) == list(trainer.CLASS_NAMES)
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["name"], meta["version"], meta["image_size"]) == ("expw-vgg16", 1, 32)
    assert CHAMPION in meta["aliases"]
    assert meta["run_id"] == champion.run_id
    assert meta["tags"]["test_accuracy"] == repr(champion.test_metrics["test_accuracy"])
    assert meta["source"] and meta["created"]


def test_fetched_model_predicts_like_the_registered_pyfunc(tiny_study, champion, faces, tmp_path):  # noqa: F811
    import mlflow.pyfunc

    out = fetch("expw-vgg16/1", tmp_path, tracking_uri=tiny_study.tracking_uri)
    keras_model = trainer.load_model(out / "model.keras")
    pyfunc = mlflow.pyfunc.load_model("models:/expw-vgg16@champion")
    frame = pyfunc.predict(faces)
    assert list(frame.columns) == [*trainer.CLASS_NAMES, "expression"]
    expected = trainer.predict_proba(keras_model, faces)
    np.testing.assert_allclose(frame[list(trainer.CLASS_NAMES)].to_numpy(), expected, atol=1e-6)
    assert list(frame["expression"]) == [trainer.CLASS_NAMES[i] for i in expected.argmax(1)]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("expw-vgg16@nope", r"no alias 'nope'; its aliases: champion \(version 1\)"),
        ("expw-vgg16/99", r"has no version 99; its versions: 1"),
        ("no-such-model", r"no registered model named 'no-such-model' in sqlite:///.*; "
                          r"registered models: .*expw-vgg16"),
        ("bad ref", r"model reference: expected NAME"),
    ],
)
def test_fetch_of_a_bad_reference_writes_nothing(tiny_study, champion, tmp_path, ref, message):  # noqa: F811
    out = tmp_path / "model"
    with pytest.raises(InputError, match=message):
        fetch(ref, out, tracking_uri=tiny_study.tracking_uri)
    assert not out.exists()


def test_a_failed_download_leaves_the_folder_as_it_was(tiny_study, champion, tmp_path,  # noqa: F811
                                                         monkeypatch):
    import mlflow.artifacts

    (tmp_path / "model.keras").write_text("the old model")
    real = mlflow.artifacts.download_artifacts
    calls = []

    def flaky(*args, **kwargs):  # MLmodel downloads, then the .keras file fails
        calls.append(kwargs.get("artifact_uri"))
        if len(calls) > 1:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", flaky)
    with pytest.raises(RegistryError, match="cannot download expw-vgg16 version 1.*disk full"):
        fetch("expw-vgg16", tmp_path, tracking_uri=tiny_study.tracking_uri)
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    assert (tmp_path / "model.keras").read_text() == "the old model"


# ------------------------------------------------------------------------------------ predict


def _first_face(folder):
    """An original synthetic photo and its first face's box (top, left, right, bottom)."""
    root = folder / "data" / "synthetic-140-0"
    fields = (root / "label.lst").read_text().splitlines()[0].split()
    return root / "image" / "origin" / fields[0], tuple(int(v) for v in fields[2:6])


def test_predict_images_on_a_face_in_a_photo(tiny_study, champion):  # noqa: F811
    photo, box = _first_face(tiny_study.folder)
    predictions = predict_images("expw-vgg16", [photo, photo], box=box,
                                 tracking_uri=tiny_study.tracking_uri)
    assert len(predictions) == 2
    first = predictions[0]
    assert first.file == photo
    assert first.expression in trainer.CLASS_NAMES
    assert list(first.probabilities) == list(trainer.CLASS_NAMES)
    assert sum(first.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert first.expression == max(first.probabilities, key=first.probabilities.get)
    assert predictions[1] == first


def test_predict_images_reports_bad_input(tiny_study, champion, tmp_path):  # noqa: F811
    with pytest.raises(InputError, match="no images given"):
        predict_images("expw-vgg16", [], tracking_uri=tiny_study.tracking_uri)
    with pytest.raises(InputError, match="no alias 'best'"):
        predict_images("expw-vgg16@best", [tmp_path / "x.jpg"],
                       tracking_uri=tiny_study.tracking_uri)


def test_load_images_crops_like_expw_and_clips_the_box(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)

    whole = load_images([path], 32)
    assert whole.shape == (1, 32, 32, 3) and whole.dtype == np.uint8
    # (top, left, right, bottom) running past the right and bottom edges: clipped to rows 10:30,
    # columns 20:40, then resized in one bilinear pass, as the trainer's crop cache does.
    block = load_images([path], 32, box=(10, 20, 90, 70))
    expected = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR,
                                              box=(20, 10, 40, 30))
    np.testing.assert_array_equal(block[0], np.asarray(expected))
    assert load_images([], 32).shape == (0, 32, 32, 3)


def test_load_images_names_the_bad_file(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="missing.jpg: no such image file"):
        load_images([good, tmp_path / "missing.jpg"], 32)
    with pytest.raises(InputError, match="corrupt.jpg: not a readable image"):
        load_images([corrupt], 32)
    with pytest.raises(InputError, match="lies outside the 8x8 image"):
        load_images([good], 32, box=(20, 20, 30, 30))
    with pytest.raises(InputError, match="right > left"):
        load_images([good], 32, box=(0, 5, 5, 8))


# ------------------------------------------------------------------------- a fresh process

FRESH = """
import json, sys
import numpy as np
import mlflow.pyfunc
model = mlflow.pyfunc.load_model("models:/expw-vgg16@champion")
frame = model.predict(np.load(sys.argv[1]))
import trainer
print(json.dumps({"probs": frame.drop(columns="expression").to_numpy().tolist(),
                  "expression": list(frame["expression"]), "trainer": trainer.__file__}))
"""


def test_the_champion_loads_as_pyfunc_in_a_fresh_process(tiny_study, champion, faces, tmp_path):  # noqa: F811
    import mlflow.pyfunc

    np.save(tmp_path / "faces.npy", faces)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tiny_study.tracking_uri,
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "faces.npy")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # The trainer code shipped inside the model, not the installed package, loaded the model.
    assert f"{os.sep}code{os.sep}trainer{os.sep}" in result["trainer"]
    here = mlflow.pyfunc.load_model("models:/expw-vgg16/1").predict(faces)
    np.testing.assert_allclose(result["probs"], here.drop(columns="expression").to_numpy(),
                               atol=1e-6)
    assert result["expression"] == list(here["expression"])
