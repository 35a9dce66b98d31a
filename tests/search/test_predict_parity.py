"""Train/serve parity: a face predicted from its file is the face the crop cache trained on.

On the synthetic set's own images and boxes (boxes past the image's edge included),
``fer-search predict --json`` must equal the registered pyfunc model applied to the row of the
trainer's crop cache for that face, to 1e-6, class by class.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from search.cli.main import main
from tests.search.fixtures import tiny_study  # noqa: F401  (a module-scoped fixture)
from trainer.data.expw import locate_expw, read_label_file


@pytest.fixture(scope="module")
def champion(tiny_study):  # noqa: F811
    from search.registry.promotion import promote

    return promote(tiny_study.name, **tiny_study.urls)


def cached_crops(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The tiny study's one crop cache entry: (faces, groups), in label.lst's order."""
    entries = list((folder / ".cache" / "crops").glob("*/meta.json"))
    assert len(entries) == 1, entries
    entry = entries[0].parent
    return np.load(entry / "faces.npy"), np.load(entry / "groups.npy")


def test_predict_json_equals_the_model_on_the_cached_crop(tiny_study, champion, capsys):  # noqa: F811
    import mlflow.pyfunc

    label_file, image_dir = locate_expw(tiny_study.folder / "data" / "synthetic-140-0")
    records, _ = read_label_file(label_file)
    faces, groups = cached_crops(tiny_study.folder)
    assert len(faces) == len(records)  # nothing skipped: row i is record i
    assert list(groups) == [r.image_name for r in records]

    def past_edge(record) -> bool:
        with Image.open(image_dir / record.image_name) as img:
            width, height = img.size
        return (record.top < 0 or record.left < 0 or record.bottom > height
                or record.right > width)

    edge = [i for i, r in enumerate(records) if past_edge(r)]
    inside = [i for i, r in enumerate(records) if not past_edge(r)]
    assert edge, "the synthetic set should have boxes past the edge"
    chosen = edge[:3] + inside[:2]

    with tempfile.TemporaryDirectory() as local:
        model = mlflow.pyfunc.load_model(champion.model_uri, dst_path=local)
    expected = model.predict(faces[chosen])

    for row, i in enumerate(chosen):
        record = records[i]
        box = ",".join(map(str, record.box))
        code = main(["predict", "--model", f"{champion.model_name}/{champion.version}",
                     "--tracking-uri", tiny_study.tracking_uri, "--json", f"--box={box}",
                     str(image_dir / record.image_name)])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 0 and len(out) == 1
        got = json.loads(out[0])
        assert got["file"] == str(image_dir / record.image_name)
        names = [c for c in expected.columns if c != "expression"]
        assert list(got["probabilities"]) == names
        np.testing.assert_allclose(
            [got["probabilities"][n] for n in names], expected.iloc[row][names].to_numpy(float),
            rtol=0, atol=1e-6,
        )
        assert got["expression"] == expected.iloc[row]["expression"]
