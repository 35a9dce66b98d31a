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
from search.cli.main import main
from search.contracts import CHAMPION_ALIAS
from search.errors import InputError
from search.registry.aliases import alias_history
from search.registry.predict import load_images, predict_images
from search.registry.promotion import champion_lock, promote
from search.registry.rebuild import check_reproduced
from search.registry.refs import CHALLENGER, RegistryError, fetch, parse_model_ref
from search.spec.loader import load_spec
from search.trial.data_provider import DataProvider
from tests.model_calls import count_faces
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


def _study(tiny_study):  # noqa: F811
    return optuna.load_study(study_name=tiny_study.name, storage=tiny_study.storage_url)


def _best(tiny_study):  # noqa: F811
    return _study(tiny_study).best_trial


# ------------------------------------------------------------------------------------ promote


def test_first_promotion_is_champion_with_its_provenance_in_tags(tiny_study, champion, client):  # noqa: F811
    best = _best(tiny_study)
    assert (champion.model_name, champion.version, champion.alias) == \
        ("expw-vgg16", 1, CHAMPION_ALIAS)
    assert champion.previous_champion_version is None
    assert champion.trial_number == best.number
    assert champion.run_id == best.user_attrs["mlflow_run_id"]
    assert champion.score_name == "test_accuracy"
    assert set(champion.test_metrics) == {"test_accuracy", "test_macro_f1", "test_loss"}

    version = client.get_model_version_by_alias("expw-vgg16", CHAMPION_ALIAS)
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
    best = _best(tiny_study)
    other = next(t.number for t in _study(tiny_study).trials if t.number != best.number)
    run_id = best.user_attrs["mlflow_run_id"]
    ended = client.get_run(run_id).info
    first = promote(tiny_study.name, **tiny_study.urls, model_name=name)
    assert (first.version, first.alias, first.reused) == (1, CHAMPION_ALIAS, False)
    # The trial's run was reopened to log the model and closed as it was.
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (ended.status, ended.end_time)

    # The same trial again: its version is reused, never registered twice.
    again = promote(tiny_study.name, **tiny_study.urls, model_name=name)
    assert (again.version, again.alias, again.reused) == (1, CHAMPION_ALIAS, True)
    assert again.test_metrics == first.test_metrics
    assert len(client.search_model_versions(f"name='{name}'")) == 1

    # The other trial against an unbeatable champion: challenger.
    client.set_model_version_tag(name, "1", "test_accuracy", "2.0")
    second = promote(tiny_study.name, **tiny_study.urls, model_name=name, trial_number=other)
    assert (second.version, second.alias, second.trial_number) == (2, CHALLENGER, other)
    assert (second.previous_champion_version, second.previous_champion_score) == (1, 2.0)

    # The champion now looks worse: the other trial, promoted again, takes it over.
    client.set_model_version_tag(name, "1", "test_accuracy", "-1.0")
    better = promote(tiny_study.name, **tiny_study.urls, model_name=name, trial_number=other)
    assert (better.version, better.alias, better.reused) == (2, CHAMPION_ALIAS, True)
    assert better.previous_champion_version == 1

    # An unbeatable champion, replaced anyway by force.
    client.set_model_version_tag(name, "2", "test_accuracy", "2.0")
    forced = promote(tiny_study.name, **tiny_study.urls, model_name=name, force=True)
    assert (forced.version, forced.alias, forced.previous_champion_score) == \
        (1, CHAMPION_ALIAS, 2.0)
    aliases = client.get_registered_model(name).aliases
    assert {alias: int(v) for alias, v in aliases.items()} == {CHAMPION_ALIAS: 1, CHALLENGER: 2}

    # Every move is recorded, in order, with the version it replaced.
    moves = [(m.alias, m.version, m.replaced, m.trial) for m in alias_history(client, name)]
    assert moves == [(CHAMPION_ALIAS, 1, None, best.number), (CHALLENGER, 2, None, other),
                     (CHAMPION_ALIAS, 2, 1, other), (CHAMPION_ALIAS, 1, 2, best.number)]
    assert "Champion now**: version 1" in client.get_registered_model(name).description


def test_history_prints_who_held_the_champion_when(tiny_study, champion, capsys):  # noqa: F811
    assert main(["history", "expw-vgg16", "--tracking-uri", tiny_study.tracking_uri]) == 0
    text = capsys.readouterr().out
    assert "expw-vgg16: alias moves (champion = version 1)" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("│ 1 "))
    assert "champion" in row and "now" in row and f"{tiny_study.name} / " in row

    assert main(["history", "no-such-model", "--tracking-uri", tiny_study.tracking_uri]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().startswith("error: no registered model named 'no-such-model'")
    assert len(captured.err.strip().splitlines()) == 1


def test_the_logged_model_is_named_after_the_trial_and_shown_as_registered(
        tiny_study, champion, client):  # noqa: F811
    version = client.get_model_version("expw-vgg16", "1")
    # The SQL registry keeps the logged model in the source (models:/<model id>).
    logged = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    assert logged.name == f"{tiny_study.name}-trial-{champion.trial_number}"
    assert logged.source_run_id == champion.run_id
    # The link `mlflow.register_model` writes, which the UI reads ("Registered: version 1").
    links = json.loads(logged.tags["mlflow.modelVersions"])
    assert [(link["name"], str(link["version"])) for link in links] == [("expw-vgg16", "1")]

    text = version.description
    assert f"Trial **{champion.trial_number}** of study **[{tiny_study.name}](" in text
    assert f"| test | {champion.test_metrics['test_accuracy']:.4f} |" in text
    assert all(f"| {cls} | " in text for cls in trainer.CLASS_NAMES)  # per-class recall rows
    assert f"`{version.tags['data_fingerprint']}`" in text
    assert f"runs/{champion.run_id}/artifacts/test/confusion_matrix.png" in text
    for param, value in _best(tiny_study).params.items():
        assert f"| {param} | `{value}` |" in text
    model_text = client.get_registered_model("expw-vgg16").description
    assert "Champion now**: version 1 (study tiny" in model_text
    assert "fer-search serve expw-vgg16@champion" in model_text


def test_the_logged_model_page_names_its_data_describes_itself_and_links_the_study(
        tiny_study, champion, client):  # noqa: F811
    """What MLflow 3's logged-model page shows: "Datasets used" (the datasets of the metrics
    linked to the model), the description (its `mlflow.note.content` tag), and the registered
    version's way back to the study's run."""
    version = client.get_model_version("expw-vgg16", "1")
    logged = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    study_run = _study(tiny_study).user_attrs["mlflow_parent_run_id"]
    inputs = client.get_run(champion.run_id).inputs.dataset_inputs
    names = {(i.dataset.name, i.dataset.digest) for i in inputs}
    assert len(names) == 1  # the trial trained on one dataset
    test_metrics = {m.key: m for m in logged.metrics if m.key.startswith("test_")}
    assert set(test_metrics) == {"test_accuracy", "test_macro_f1", "test_loss"}
    for metric in test_metrics.values():  # linked to the model and to the trial's dataset
        assert (metric.dataset_name, metric.dataset_digest) in names
        assert metric.model_id == logged.model_id
    assert test_metrics["test_accuracy"].value == champion.test_metrics["test_accuracy"]

    note = logged.tags["mlflow.note.content"]
    (name, digest), = names
    assert f"`{name}` (digest `{digest}`)" in note
    assert f"trial **{champion.trial_number}** of study **{tiny_study.name}**" in note
    assert f"runs/{study_run}" in note and f"runs/{champion.run_id}" in note
    assert "fer-search fetch expw-vgg16@champion" in note and "mlflow.pyfunc.load_model" in note

    assert version.tags["study_run_id"] == study_run
    assert f"[{tiny_study.name}](#/experiments/" in version.description
    assert f"runs/{study_run})" in version.description


def test_a_model_that_cannot_serve_is_not_registered(tiny_study, client, monkeypatch):  # noqa: F811
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this op")

    # Only the pyfunc model calls trainer.predict_proba; evaluation has its own reference.
    monkeypatch.setattr(trainer, "predict_proba", broken)
    with pytest.raises(RegistryError, match="cannot load or predict.*no kernel for this op"):
        promote(tiny_study.name, **tiny_study.urls, model_name="expw-broken")
    assert not client.search_registered_models("name='expw-broken'")


def test_promotion_runs_vgg16_over_a_sample_not_every_val_and_test_face(
        tiny_study, champion, client, monkeypatch, tmp_path):  # noqa: F811
    """The study cached val's features; the first promotion (`champion`) cached test's. A
    promotion then runs VGG16 over the exported model's sample of test faces only, where it
    used to run every val and test face through the full model."""
    from trainer.evaluate import EXPORT_SAMPLE

    data = DataProvider(load_spec(tiny_study.spec_path)).get(32)
    seen = count_faces(monkeypatch)
    result = promote(tiny_study.name, **tiny_study.urls, model_name="expw-cached")
    sample = min(EXPORT_SAMPLE, len(data.test))
    # The sample, and the one face MLflow predicts when the model is logged (the serving
    # check); nothing extracted: val and test were cached.
    assert seen == {"expw_vgg16": sample + 1}
    assert sample < len(data.val) + len(data.test)
    monkeypatch.undo()
    tags = client.get_model_version("expw-cached", str(result.version)).tags
    first = client.get_model_version(champion.model_name, str(champion.version)).tags
    assert set(tags) == set(first)
    # The scores recorded are the registered model's own on raw faces, as before.
    out = fetch(f"expw-cached/{result.version}", tmp_path / "m",
                tracking_uri=tiny_study.tracking_uri)
    full = trainer.evaluate(trainer.load_model(out / "model.keras"), data.test)
    assert result.test_metrics["test_accuracy"] == full.accuracy
    assert result.test_metrics["test_macro_f1"] == full.macro_f1
    assert result.test_metrics["test_loss"] == pytest.approx(full.loss, abs=1e-6)


def test_an_export_that_disagrees_with_the_cached_path_is_not_registered(
        tiny_study, client, monkeypatch, capsys):  # noqa: F811
    """The exported model's head weights corrupted after the cached path read the trial's:
    val and test score fine on features, the sample check fails; one line, nothing
    registered."""
    real = trainer.build_trained

    def corrupted(*args, **kwargs):
        network = real(*args, **kwargs)
        layer = network.full.get_layer("expression")
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, bias + np.eye(len(bias))[0]])  # one class's logit +1
        return network

    monkeypatch.setattr(trainer, "build_trained", corrupted)
    with pytest.raises(RegistryError, match=r"exported model of trial \d+ disagrees with the "
                                            r"cached-feature path on \d+ test faces"):
        promote(tiny_study.name, **tiny_study.urls, model_name="expw-mismatch")
    assert not client.search_registered_models("name='expw-mismatch'")
    code = main(["promote", tiny_study.name, "--storage", tiny_study.storage_url,
                 "--tracking-uri", tiny_study.tracking_uri, "--model-name", "expw-mismatch"])
    assert code == 1  # a runtime failure, as a rebuilt model that scores otherwise
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "disagrees with the cached-feature path" in lines[0]
    assert not client.search_registered_models("name='expw-mismatch'")


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
    ("ref", "parsed"),
    [
        ("expw-vgg16", ("expw-vgg16", "champion", None)),
        ("expw-vgg16@challenger", ("expw-vgg16", "challenger", None)),
        ("expw-vgg16/12", ("expw-vgg16", None, 12)),
        ("models:/m.v2@champion", ("m.v2", "champion", None)),
    ],
)
def test_model_references(ref, parsed):
    assert parse_model_ref(ref) == parsed


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
    assert CHAMPION_ALIAS in meta["aliases"]
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
    with pytest.warns(UserWarning, match="only 10% of the box .* was clipped"):
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


# ----------------------------------------------------------------------- racing promotions

RACER = """
import contextlib, json, sys, time
from pathlib import Path
from search.registry import promotion
study, name, trial, marks, me = sys.argv[1:6]
real_lock = promotion.champion_lock

@contextlib.contextmanager
def watched_lock(*args):
    # Start line: every racer has done its slow part and now goes for the lock at once.
    (marks / f"ready-{me}").touch()
    deadline = time.monotonic() + 600
    while len(list(marks.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    with real_lock(*args):
        entered = time.time()
        time.sleep(0.5)  # widen the read-compare-set window
        yield
        (marks / f"held-{me}.json").write_text(json.dumps([entered, time.time()]))

promotion.champion_lock = watched_lock
marks = Path(marks)
result = promotion.promote(study, storage_url=sys.argv[6], tracking_uri=sys.argv[7],
                           model_name=name, trial_number=int(trial))
print(json.dumps({"version": result.version, "alias": result.alias, "reused": result.reused}))
"""


def test_racing_promotions_end_with_the_better_champion_and_one_version_per_trial(
        tiny_study, client, tmp_path):  # noqa: F811
    """Three `promote` processes on one model name, two of them on the same trial, reach the
    registry together: the lock serialises them, the trial is registered once, and the
    champion is the version with the better test score."""
    name = "expw-race"
    trials = sorted(t.number for t in _study(tiny_study).trials)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, tiny_study.name, name, str(trial), str(marks),
             f"racer{i}", tiny_study.storage_url, tiny_study.tracking_uri],
            cwd=tiny_study.folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for i, trial in enumerate([trials[0], trials[1], trials[0]])
    ]
    outputs = [racer.communicate(timeout=600) for racer in racers]
    for racer, (_, stderr) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]

    held = sorted(json.loads(p.read_text()) for p in marks.glob("held-*.json"))
    assert len(held) == 3
    for (_, end), (start, _) in zip(held, held[1:], strict=False):
        assert end <= start, f"two promotions held the lock at once: {held}"

    versions = client.search_model_versions(f"name='{name}'")
    runs = {t.number: t.user_attrs["mlflow_run_id"] for t in _study(tiny_study).trials}
    assert sorted(v.run_id for v in versions) == sorted(runs[t] for t in trials)
    assert sorted(r["reused"] for r in results) == [False, False, True]
    assert results[0]["version"] == results[2]["version"]  # the same trial, one version

    scores = {int(v.version): float(v.tags["test_accuracy"]) for v in versions}
    aliases = {a: int(v) for a, v in client.get_registered_model(name).aliases.items()}
    assert scores[aliases[CHAMPION_ALIAS]] == max(scores.values())
    # The other version is challenger if it came second, or a replaced champion (no alias).
    assert aliases.get(CHALLENGER, 0) != aliases[CHAMPION_ALIAS]
    assert set(aliases) <= {CHAMPION_ALIAS, CHALLENGER}
    # The recorded history agrees with where the aliases are.
    last = {m.alias: m.version for m in alias_history(client, name)}
    assert last == aliases


def test_the_promotion_lock_lives_in_the_registry_store_else_the_optuna_storage(tmp_path):
    optuna_url = f"sqlite:///{tmp_path}/studies/optuna.db"
    with champion_lock(f"sqlite:///{tmp_path}/mlruns/mlflow.db", optuna_url, "m1"):
        assert (tmp_path / "mlruns" / "mlflow.db.registry-m1.lock").exists()
    # An MLflow server's database is out of reach: the study's storage carries the lock.
    with champion_lock("http://127.0.0.1:5000", optuna_url, "m1"):
        assert (tmp_path / "studies" / "optuna.db.registry-m1.lock").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("tracking", ["postgres", "http"])
def test_the_promotion_lock_excludes_a_second_promoter_on_postgres(pg_cluster, tracking,
                                                                   monkeypatch):
    """A second holder of the model's lock waits until the first lets go, whether the lock lives
    in the MLflow database or, behind an MLflow server, in Optuna's. The lock is a
    transaction-held advisory lock that a waiter polls for (PgBouncer-safe): the test sees the
    second promoter fail its tries (each ends in the poll's pause) while the first holds it."""
    import threading
    import time as real_time
    import types

    from sqlalchemy import create_engine, text

    from search.storage import locks

    url = pg_cluster.url()
    tracking_uri = url if tracking == "postgres" else "http://127.0.0.1:1"
    order: list[str] = []
    second_polled = threading.Event()
    waiter = None

    def pause(seconds: float) -> None:  # a failed try of the lock's waiter (the second's)
        if threading.current_thread() is waiter:
            second_polled.set()
        real_time.sleep(seconds)

    monkeypatch.setattr(locks, "time", types.SimpleNamespace(sleep=pause))

    def second() -> None:
        with champion_lock(tracking_uri, url, f"race-{tracking}"):
            order.append("second in")

    engine = create_engine(url)
    try:
        with champion_lock(tracking_uri, url, f"race-{tracking}"):
            waiter = threading.Thread(target=second)
            waiter.start()
            assert second_polled.wait(60), "the second promoter never tried the lock"
            real_time.sleep(0.5)  # several more of its tries fail meanwhile
            with engine.connect() as connection:
                held = connection.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND granted")).scalar()
            assert held == 1 and order == []
            order.append("first out")
        waiter.join(30)
    finally:
        engine.dispose()
    assert order == ["first out", "second in"]


# ---------------------------------------------------------------------- pixels and serving


def test_the_pyfunc_model_takes_uint8_and_float32_faces(tiny_study, champion, faces):  # noqa: F811
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/expw-vgg16/1")
    as_uint8 = model.predict(faces)
    as_float = model.predict(faces.astype(np.float32))  # through MLflow's schema enforcement
    columns = list(trainer.CLASS_NAMES)
    np.testing.assert_allclose(as_float[columns].to_numpy(), as_uint8[columns].to_numpy(),
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"pixel values in 0\.\.255, but got values from 30"):
        model.predict(faces.astype(np.float32) + 300)
    with pytest.raises(ValueError, match="shaped"):
        model.predict(faces[..., :2])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 60):
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def test_serve_answers_uint8_and_float32_faces_like_the_pyfunc_model(  # noqa: F811
        tiny_study, champion, faces):  # noqa: F811
    import signal
    import time
    import urllib.error

    import mlflow.pyfunc

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "serve", "expw-vgg16@champion", "--port",
         str(port), "--tracking-uri", tiny_study.tracking_uri],
        cwd=tiny_study.folder, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:  # the server loads TensorFlow and the model first
            assert server.poll() is None, server.communicate()[1][-3000:]
            try:
                if _http(f"{base}/ping", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping in 300 s"
            time.sleep(0.5)
        pyfunc = mlflow.pyfunc.load_model("models:/expw-vgg16/1")
        columns = list(trainer.CLASS_NAMES)
        two = faces[:2]
        # A uint8 batch arrives as JSON integers; a float32 one (not whole numbers) as floats.
        for batch in (two, two.astype(np.float32) * 0.75 + 0.5):
            status, body = _http(f"{base}/invocations", {"inputs": batch.tolist()})
            assert status == 200
            rows = json.loads(body)["predictions"]
            served = np.array([[row[c] for c in columns] for row in rows])
            np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
            expected = pyfunc.predict(batch)
            np.testing.assert_allclose(served, expected[columns].to_numpy(), atol=1e-6)
            assert [row["expression"] for row in rows] == list(expected["expression"])
    finally:
        server.send_signal(signal.SIGINT)
        stdout, stderr = server.communicate(timeout=60)
    assert "serving expw-vgg16 version 1 (expw-vgg16@champion)" in stdout
    assert server.returncode == 0, stderr[-3000:]


# --------------------------------------------------------------- fetching needs no Optuna

NO_OPTUNA = """
import sys
from search.registry.refs import fetch
import search.registry.aliases, search.registry.registration, search.registry.serve  # noqa: F401
fetch("expw-vgg16/1", sys.argv[1], tracking_uri=sys.argv[2])
print(sorted(m for m in sys.modules if m.split(".")[0] == "optuna"))
"""


def test_fetching_imports_no_optuna(tiny_study, champion, tmp_path):  # noqa: F811
    done = subprocess.run(
        [sys.executable, "-c", NO_OPTUNA, str(tmp_path / "m"), tiny_study.tracking_uri],
        cwd=tiny_study.folder, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "m" / "model.keras").exists()
