"""Shared helpers of the benchmarks: the machine and versions they ran on, and result files.

Every result file records how it was made (the exact command line, the date, the CPU, the library
versions and the environment variables that change speed), so a number in the README can be traced
to the run that produced it. Nothing here imports TensorFlow: the orchestrating processes stay light
and each measured workload pays its own start-up.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"  # git-ignored: datasets, stores, caches of benchmark runs

# Environment variables that change how fast TensorFlow or numpy run here.
SPEED_ENV = (
    "TF_ENABLE_ONEDNN_OPTS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)
PACKAGES = (
    "tensorflow", "keras", "numpy", "optuna", "mlflow", "keras-tuner", "scikit-learn",
)


def machine() -> dict[str, Any]:
    """CPU model, cores visible to this process, memory, OS."""
    model = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "simd": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_tile"}),
        "memory_gib": memory_gib,
        "os": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Python and the installed versions of the libraries compared (read without importing)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def speed_env(env: dict[str, str] | None = None) -> dict[str, str | None]:
    """The speed-relevant variables of `env` (default: this process's environment)."""
    env = os.environ if env is None else env
    return {name: env.get(name) for name in SPEED_ENV}


def command_line() -> str:
    """The command that is running, as it would be typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO))
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def now() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat(timespec="seconds")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on a shared machine skews timings."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def git_state() -> dict[str, Any]:
    """The commit measured, and whether trainer/, search/ or benchmarks/ differed from it."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.rstrip()  # porcelain lines start with " "
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = git("status", "--porcelain", "--", "trainer", "search", "benchmarks")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "uncommitted_changes": [line[3:] for line in changed.splitlines()
                                if not line[3:].startswith("benchmarks/results/")],
    }


def provenance() -> dict[str, Any]:
    """Everything a result needs to say about how and where it was made."""
    return {
        "command": command_line(),
        "date": now(),
        "git": git_state(),
        "load_average_at_start": load_average(),
        "machine": machine(),
        "versions": versions(),
        "env": speed_env(),
    }


def write_results(out_dir: Path, stem: str, data: dict[str, Any], markdown: str) -> list[Path]:
    """Writes `<stem>.json` and `<stem>.md` into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return [json_path, md_path]


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The provenance as a few Markdown lines under a results table."""
    m, v = prov["machine"], prov["versions"]
    libs = ", ".join(f"{k} {val}" for k, val in v.items())
    env = ", ".join(f"{k}={val}" for k, val in prov["env"].items() if val is not None) or "none set"
    g = prov.get("git", {})
    dirty = g.get("uncommitted_changes") or []
    return (
        f"- command: `{prov['command']}`\n"
        f"- date: {prov['date']}\n"
        f"- code: commit {g.get('commit', 'unknown')}"
        + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "") + "\n"
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB "
        f"({', '.join(m['simd'])}), {m['os']}\n"
        f"- versions: {libs}\n"
        f"- speed-relevant environment: {env}\n"
        f"- load average (1/5/15 min) at start: {prov.get('load_average_at_start')}, at end: "
        f"{prov.get('load_average_at_end', '-')}\n"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rss_mib() -> float:
    """This process's resident set size now, in MiB (from /proc, so it includes native memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def feature_seconds(folder: Path, name: str) -> float | None:
    """The study's one-time feature extraction, as its trials logged it: the largest
    `feature_seconds` (a tag now, a metric in older code; a trial on cached features logs the
    load, ~0 s)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    found = []
    for run in client.search_runs([experiment.experiment_id], max_results=5000):
        value = run.data.tags.get("feature_seconds", run.data.metrics.get("feature_seconds"))
        if value is not None:
            found.append(float(value))
    return max(found, default=None)


def source_env(src: Path, extra: dict[str, str] | None = None,
               unset: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a contender whose code is the checkout or export at `src`: this
    process's, with `unset` removed, `src` on PYTHONPATH, oneDNN on, MLflow telemetry off,
    then `extra`."""
    env = {name: value for name, value in os.environ.items() if name not in unset}
    env["PYTHONPATH"] = str(src)
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update(extra or {})
    return env


def export_source(commit: str, dest: Path) -> Path:
    """`search/` and `trainer/` at `commit`, extracted into `dest` (once)."""
    if not (dest / "search").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "search", "trainer"],
                                 cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def prepare(work: Path, faces: int) -> tuple[Path, dict[str, Any], Path]:
    """A benchmark's start: its work folder (made), the run's provenance (taken before anything
    runs) and a synthetic ExpW of `faces` faces in it (generated once)."""
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    data_root = work / "data" / f"synthetic-{faces}-0"
    generate_faces(data_root, faces)
    return work, prov, data_root


def generate_faces(root: Path, faces: int) -> None:
    """A synthetic ExpW of `faces` faces at `root` (seed 0), by this checkout's trainer; kept
    when it is there already."""
    if (root / "label.lst").exists():
        return
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from trainer.data.synthetic import generate_synthetic_expw as g; "
         "g(sys.argv[1], int(sys.argv[2]), 0)", str(root), str(faces)],
        check=True, env=source_env(REPO),
    )
