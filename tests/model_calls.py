"""A spy on Keras inference, shared by the trainer's and the registry's tests: how many faces
each model runs on, to show which work the cached path skips."""

from __future__ import annotations


def count_faces(monkeypatch) -> dict[str, int]:
    """Faces each Keras model runs on from here on, by model name: the full model
    (`expw_vgg16`) or the frozen base extracting features (`frozen_base`); the cached path runs
    neither."""
    import keras

    seen: dict[str, int] = {}
    real = keras.Model.predict_on_batch

    def counted(model, x, *args, **kwargs):
        seen[model.name] = seen.get(model.name, 0) + len(x)
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "predict_on_batch", counted)
    return seen
