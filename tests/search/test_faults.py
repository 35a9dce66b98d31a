"""Bad inputs and broken environments, as a hostile user would try them (issue 9).

One row per case in `CASES`: the command, what the setup breaks first, the exit code, a piece of
the one-line message, and the paths the command may create or change (anything else created or
changed under the project folder fails the row). The next bad input is one more row.

Rows run the CLI in this process (`search.cli.main.main`) in a project folder holding a tiny real
study with a promoted champion (`tests.search.fixtures.tiny_study`), so fetch and predict have a
registry to read. Cases that need a fresh process (imports, a real small disk) follow the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from PIL import Image

from search.cli.main import main
from tests.infra import hooks
from tests.search.fixtures import tiny_study  # noqa: F401  (a module-scoped fixture)
from tests.trainer.conftest import write_expw

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------ helpers


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder``: (size, mtime_ns, sha256). Root can write to read-only
    files, so "nothing changed" is checked by content and time, not by permissions."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns, digest)
        elif path.is_dir():
            found[str(path.relative_to(folder)) + "/"] = (0, 0, "")
    return found


def changes(before: dict, after: dict) -> list[str]:
    return sorted({k for k in before.keys() | after.keys() if before.get(k) != after.get(k)})


def write_run_spec(folder: Path, data_root: Path, name: str, **train) -> Path:
    """A grid spec on an ExpW folder (not synthetic: nothing is generated on the way)."""
    spec = {
        "name": name,
        "sampler": "grid",
        "space": {"learning_rate": [1.0e-3]},
        "train": {"image_size": 32, "weights": "none", "epochs": 1, **train},
        "data": {"root": str(data_root), "cache_dir": str(folder / f".cache-{name}")},
        "storage": f"sqlite:///{folder}/studies/{name}.db",
        "tracking_uri": f"sqlite:///{folder}/mlruns-{name}/mlflow.db",
    }
    path = folder / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def first_image(root: Path) -> Path:
    return sorted((root / "image" / "origin").glob("*.jpg"))[0]


@dataclass
class Project:
    """The tiny study's folder, with a promoted champion and a broken ExpW copy per row."""

    folder: Path
    tracking_uri: str
    model: str
    good_image: Path

    def expw(self, name: str) -> Path:
        """A fresh 70-image ExpW folder (img_000.jpg ... img_069.jpg) for one row to break."""
        root = self.folder / "rows" / name
        shutil.rmtree(root, ignore_errors=True)
        write_expw(root)
        return root


@dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
        id: the row's name.
        setup: breaks something; returns the command line (it may use the project's paths).
        code: the exit code expected.
        message: a piece of the message expected (stderr for errors, all output for warnings).
        may_change: path prefixes (relative to the project folder) the command may create or
            change; everything else must stay as it was.
        one_line: stderr is exactly one line.
        absent: text that must not appear anywhere in the output.
    """

    id: str
    setup: Callable[[Project], list[str]]
    code: int
    message: str
    may_change: tuple[str, ...] = ()
    one_line: bool = True
    absent: tuple[str, ...] = ("Traceback",)
    env: dict[str, str] = field(default_factory=dict)


def _image(project: Project, name: str, damage: Callable[[Path], None]) -> Path:
    root = project.expw(name)
    damage(root / "image" / "origin" / "img_001.jpg")
    return root


def _zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _text(path: Path) -> None:
    path.write_text("this is not a jpeg\n")


def _missing(path: Path) -> None:
    path.unlink()


def _with_box(box: str) -> Callable[[Project, str], Path]:
    def make(project: Project, name: str) -> Path:
        root = project.expw(name)
        with open(root / "label.lst", "a") as f:
            f.write(f"img_002.jpg 5 {box} 3.0 2\n")
        return root

    return make


def check_strict(make: Callable[[Project, str], Path], name: str) -> Callable[[Project], list]:
    return lambda p: ["data", "check", str(make(p, name)), "--strict"]


def damaged(damage: Callable[[Path], None]) -> Callable[[Project, str], Path]:
    return lambda project, name: _image(project, name, damage)


def run_bad_data(project: Project) -> list[str]:
    root = project.expw("run-bad-data")
    with open(root / "label.lst", "a") as f:
        f.write("img_003.jpg 0 1 2 3\n")  # 5 fields, not 8
    return ["run", str(write_run_spec(project.folder, root, "baddata"))]


def run_full_disk(project: Project) -> list[str]:
    root = project.expw("run-full-disk")
    return ["run", str(write_run_spec(project.folder, root, "fulldisk"))]


def fetch_over_existing(project: Project) -> list[str]:
    out = project.folder / "fetched"
    out.mkdir(exist_ok=True)
    (out / "model.keras").write_bytes(b"my own model, keep it")
    return ["fetch", project.model, "--out", str(out), "--tracking-uri", project.tracking_uri]


def predict_args(project: Project, *extra: str) -> list[str]:
    return ["predict", "--model", project.model, "--tracking-uri", project.tracking_uri, *extra]


def predict_damaged(project: Project) -> list[str]:
    root = _image(project, "predict-zero", _zero_byte)
    return predict_args(project, str(root / "image" / "origin" / "img_001.jpg"))


CASES = [
    # item 6: data check opens every image; --strict makes each kind of problem an error
    Case("check-zero-byte", check_strict(damaged(_zero_byte), "zero"), 2,
         "2 in zero-byte images (img_001.jpg)"),
    Case("check-truncated", check_strict(damaged(_truncated), "trunc"), 2,
         "2 in truncated images (img_001.jpg)"),
    Case("check-not-an-image", check_strict(damaged(_text), "text"), 2,
         "2 in files that are not images (img_001.jpg)"),
    Case("check-missing", check_strict(damaged(_missing), "missing"), 2,
         "2 whose image is missing (img_001.jpg)"),
    Case("check-box-outside", check_strict(_with_box("500 500 600 600"), "outside"), 2,
         "1 with a box outside its image (img_002.jpg)"),
    Case("check-box-empty", check_strict(_with_box("10 30 20 40"), "empty"), 2,
         "1 with an empty box (img_002.jpg)"),
    Case("check-lenient-reports", lambda p: ["data", "check", str(_image(p, "lenient", _text))],
         0, "not an image: 2 faces in 1 file (first: img_001.jpg)", one_line=False),
    # item 8: bad data stops before the banner: one line, no study, no store
    Case("run-bad-data", run_bad_data, 2, "expected 8 whitespace-separated fields",
         may_change=("rows/", "specs/"), absent=("Traceback", "study ")),
    # item 3: a cache the disk cannot hold fails before anything is written
    Case("run-full-disk", run_full_disk, 1, "not enough free space for the crop cache",
         may_change=("rows/", "specs/"), env={"FER_SEARCH_TEST_DISK_LIMIT_BYTES": "100000"},
         absent=("Traceback", "study ", "--debug")),
    # item 9: fetch never overwrites silently; bad references fail before any download
    Case("fetch-over-existing", fetch_over_existing, 2, "pass --force to replace it",
         may_change=("fetched/",)),
    Case("fetch-bad-ref", lambda p: ["fetch", "@@", "--out", str(p.folder / "new-out")], 2,
         "model reference: expected NAME"),
    Case("fetch-unknown-model",
         lambda p: ["fetch", "nope", "--out", str(p.folder / "new-out" / "deep"),
                    "--tracking-uri", p.tracking_uri], 2, "no registered model named 'nope'"),
    # item 9: predict warns about a box mostly off the image; bad images are one line
    Case("predict-box-far-outside",
         lambda p: predict_args(p, str(p.good_image), "--box=-500,-500,40,40"), 0,
         "lies on the 64x64 image; it was clipped to it", one_line=False),
    Case("predict-box-off-image",
         lambda p: predict_args(p, str(p.good_image), "--box", "200,200,300,300"), 2,
         "lies outside the 64x64 image"),
    Case("predict-zero-byte", predict_damaged, 2, "not a readable image (zero-byte)",
         may_change=("rows/",)),
]


@pytest.fixture(scope="module")
def project(tiny_study) -> Project:  # noqa: F811
    from search.registry.promotion import promote

    promote(tiny_study.name, **tiny_study.urls)
    good = tiny_study.folder / "rows" / "good"
    write_expw(good, images=7)
    return Project(tiny_study.folder, tiny_study.tracking_uri, f"{tiny_study.model_name}@champion",
                   first_image(good))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, project: Project, capsys, monkeypatch) -> None:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    argv = case.setup(project)
    capsys.readouterr()
    before = snapshot(project.folder)
    with hooks.from_environment():  # the hooks the case's environment names
        code = main(argv)
    captured = capsys.readouterr()
    after = snapshot(project.folder)
    assert code == case.code, captured
    text = captured.err if case.code else captured.out + captured.err
    assert case.message in text, captured
    if case.one_line:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    for word in case.absent:
        assert word not in captured.err, captured.err
    allowed = ("mlruns/",) + case.may_change  # predict/fetch may read the store (sqlite wal)
    unexpected = [p for p in changes(before, after) if not p.startswith(allowed)]
    assert unexpected == [], f"created or changed: {unexpected}"


# ------------------------------------------------------------------ item 4: a read-only store


def test_predict_writes_nothing_into_the_artifact_store(project: Project, capsys) -> None:
    artifacts = project.folder / "mlruns" / "artifacts"
    before = snapshot(artifacts)
    for _ in range(2):  # MLflow rewrote registered_model_meta on every call
        assert main(predict_args(project, str(project.good_image), "--json")) == 0
    assert changes(before, snapshot(artifacts)) == []
    assert not list(artifacts.rglob("registered_model_meta"))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["file"] == str(project.good_image)


# --------------------------------------------------------------- item 9: in a fresh process


def fresh(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", **env}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environ, text=True,
                          capture_output=True, timeout=300)


def test_a_bad_model_reference_is_rejected_before_tensorflow_loads(tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    Image.new("RGB", (8, 8)).save(image)
    result = fresh(
        "import sys\nfrom search.cli.main import main\n"
        f"code = main(['predict', '--model', '@@', {str(image)!r}])\n"
        "print(code, 'tensorflow' in sys.modules, 'mlflow' in sys.modules)",
        tmp_path,
    )
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert "model reference: expected NAME" in result.stderr


def test_ctrl_c_during_start_up_does_not_claim_a_trial_was_recorded(
    project: Project, capsys, monkeypatch
) -> None:
    from search.trial.data_provider import DataProvider

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(DataProvider, "first", interrupted)
    root = project.expw("ctrl-c")
    assert main(["run", str(write_run_spec(project.folder, root, "ctrlc"))]) == 130
    err = capsys.readouterr().err
    assert "interrupted before any trial started" in err
    assert "recorded as failed" not in err


def test_data_check_footer_is_not_wrapped_when_piped(tmp_path: Path) -> None:
    root = tmp_path / ("a-rather-long-folder-name-" * 3) / "expw"
    write_expw(root)
    (root / "image" / "origin" / "img_001.jpg").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "data", "check", str(root)], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "40"}, text=True,
        capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"images in {root / 'image' / 'origin'}" in lines
    assert "zero-byte: 2 faces in 1 file (first: img_001.jpg)" in lines


# ------------------------------------------------------------ item 3: a real, small full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MB tmpfs (skips where mounting is not permitted: not root, in a container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_run_with_the_cache_on_a_full_disk_fails_in_one_line(
    tmp_path: Path, small_disk: Path
) -> None:
    root = tmp_path / "expw"
    write_expw(root)  # 105 faces: 2.9 MB of crops at 96 px, more than the disk holds
    spec = write_run_spec(tmp_path, root, "small", image_size=96)
    text = spec.read_text().replace(str(tmp_path / ".cache-small"), str(small_disk / "cache"))
    spec.write_text(text)
    result = subprocess.run([sys.executable, "-m", "search.cli", "run", str(spec)],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            text=True, capture_output=True, timeout=300)
    assert result.returncode == 1, result.stderr  # not 135 (SIGBUS)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not enough free space for the crop cache" in lines[0], lines
    assert str(small_disk / "cache") in lines[0]
    assert list(small_disk.iterdir()) == []  # no partial cache, not even its folder
    assert not (tmp_path / "studies").exists()


def test_fetch_onto_a_full_disk_names_the_cause_and_leaves_no_folder(
    project: Project, small_disk: Path, capsys
) -> None:
    out = small_disk / "model"
    code = main(["fetch", project.model, "--out", str(out), "--tracking-uri",
                 project.tracking_uri])
    err = capsys.readouterr().err
    assert code == 1
    assert "No space left on device" in err, err
    assert len(err.strip().splitlines()) == 1
    assert list(small_disk.iterdir()) == []


# -------------------------------------------------- item 6: run warns once about skipped faces


def test_run_warns_once_with_the_counts_of_skipped_faces(tmp_path: Path) -> None:
    from search.spec.loader import load_spec
    from search.trial.data_provider import DataProvider

    root = tmp_path / "expw"
    write_expw(root)
    (root / "image" / "origin" / "img_001.jpg").write_bytes(b"")
    (root / "image" / "origin" / "img_002.jpg").write_text("text")
    warnings: list[str] = []
    provider = DataProvider(load_spec(write_run_spec(tmp_path, root, "warn")), warn=warnings.append)
    provider.first()
    provider.get(32)  # the same data again: no second line
    provider.get(33)  # another size, the same faces skipped: no second line
    assert warnings == [
        "skipped 3 of 105 faces: 2 in zero-byte images (img_001.jpg); 1 in files that are not "
        f"images (img_002.jpg) (fer-search data check {root} lists them)"
    ]
