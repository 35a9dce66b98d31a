"""search's own `FER_SEARCH_*` knobs: the storage, the cache folder, heartbeats and their grace,
retries through a database outage, deadlines, grouping, batching, reporting, the MLflow store
template, and the variables the deployments' entrypoints read.

Declared once here with the trainer's machinery (`trainer.settings.Knob`: read at use, one
`SettingError` for a malformed value, `override` for tests); docs/settings.md lists them with
the trainer's and the tests' (`python -m tests.infra.settings`). A module of search reads a knob
through its accessor here, never `os.environ`.

The bottom floor of `search`: it imports nothing of search, nor optuna or mlflow.
"""

from __future__ import annotations

from trainer.settings import SECONDS, TESTS, USER, Knob, Knobs, number, text

KNOBS = Knobs("search/settings.py", [
    # ------------------------------------------------------------------------------ for users
    Knob("FER_SEARCH_STORAGE", None, "URL", text,
         "Optuna storage URL when no --storage flag is given (then the spec's `storage`, then "
         "sqlite:///studies/optuna.db). Keeps a password off the command line.", USER),
    Knob("FER_SEARCH_CACHE_DIR", None, "a folder", text,
         "The crop and feature cache folder when no --cache-dir flag is given (then the spec's "
         "`data.cache_dir`). Point every worker at one shared folder (a ReadWriteMany volume, "
         "NFS): each crop cache and feature set is then built once for all of them, under a lock "
         "held by the study's storage.", USER),
    Knob("FER_SEARCH_DB_PASSWORD_FILE", None, "a file", text,
         "Read by the image's entrypoint (deploy/docker/fer-search-secrets.sh), not by Python: "
         "the database role's password, from a mounted Secret; written into a private libpq "
         "password file (PGPASSFILE), so no storage URL carries the password.", USER),
    Knob("FER_SEARCH_RUNTIME_DIR", None, "a folder", text,
         "Read by the image's entrypoints (deploy/docker, deploy/mlflow), not by Python: where "
         "they write the password file and MLflow's auth settings (default /tmp/fer-search; an "
         "emptyDir where the root file system is read-only).", USER),
    Knob("FER_SEARCH_DB_RETRY_S", 300.0, SECONDS, number(float, 0),
         "How long a worker retries a storage call through a database outage before it exits 1.",
         USER),
    Knob("FER_SEARCH_HEARTBEAT_S", 10, "whole seconds (>= 1)", number(int, 1),
         "How often a worker beats each running trial's heartbeat. Keep it well under "
         "FER_SEARCH_GRACE_S.", USER),
    Knob("FER_SEARCH_GRACE_S", 60, "whole seconds (>= 1)", number(int, 1),
         "A trial whose heartbeat is silent this long is taken for a dead worker's: failed and "
         "re-queued.", USER),
    Knob("FER_SEARCH_TIMEOUT_GRACE_S", 300.0, SECONDS, number(float, 0),
         "The least time past a trial's `trial_timeout` before the watchdog ends a worker whose "
         "trial is stuck inside an epoch (exit 75); at least twice its longest epoch.", USER),
    Knob("FER_SEARCH_MAX_GROUP", 8, "a whole number (>= 1)", number(int, 1),
         "At most this many heads (trainer.batch_cost: configurations equal but for epochs count "
         "once) handed to one trainer.train_many call by one worker (grid studies).",
         USER),
    # Unset: 8 for random (like FER_SEARCH_MAX_GROUP: a batch of a study shaped like
    # studies/expw-random.yaml is one group, its four batch sizes four passes side by side; the
    # same configurations and values as one at a time; 16 and 32 were no faster), 1 for TPE,
    # whose constant liar found lower best values in batches of 8 for 3 seeds of 3, and in
    # batches of 2 for 2 of 3 (benchmarks/results/tpe_batched-by-8.md, tpe_batched-by-2.md);
    # TPE's random start-up trials are batched like a random study's (search.study.ask_batch):
    # the same configurations and best values as one at a time, in 0.94 of the time
    # (tpe_batched.md).
    Knob("FER_SEARCH_ASK_BATCH", None, "a whole number (>= 1)", number(int, 1),
         "A worker of a random or TPE study asks this many trials at once and trains those that "
         "can share a pass in one (1: one trial at a time). Unset: 8 for a random study; for TPE "
         "8 for its 10 random start-up trials, then 1 (batched TPE learns from fewer finished "
         "trials). A TPE batch never spans the end of the start-up.", USER),
    # One transaction per trial and epoch was ~5% of a 32-trial random study's time on SQLite
    # (profiled), and is load on a shared database at many workers.
    Knob("FER_SEARCH_REPORT_S", 5.0, SECONDS, number(float, 0),
         "Without a pruner, a trial's per-epoch values are written to the study together, once "
         "this many seconds have passed since its last write and when it ends (0: after every "
         "epoch). With a pruner, which reads them, every epoch is written at once.", USER),
    # ------------------------------------------------------------------------------ for tests
    Knob("FER_SEARCH_MLFLOW_TEMPLATE_DIR", None, "a folder", text,
         "Where the migrated MLflow store template is kept (default: the user cache folder, "
         "$XDG_CACHE_HOME/fer-search/mlflow-store); tests point it at a temporary folder.", TESTS),
])
get = KNOBS.get
override = KNOBS.override

# Names other modules write into a subprocess's environment.
STORAGE_ENV = "FER_SEARCH_STORAGE"


# ------------------------------------------------------------------------------- accessors


def storage() -> str | None:
    return get("FER_SEARCH_STORAGE")


def cache_dir() -> str | None:
    return get("FER_SEARCH_CACHE_DIR")


def db_retry_s() -> float:
    return get("FER_SEARCH_DB_RETRY_S")


def heartbeat_s() -> int:
    return get("FER_SEARCH_HEARTBEAT_S")


def grace_s() -> int:
    return get("FER_SEARCH_GRACE_S")


def timeout_grace_s() -> float:
    return get("FER_SEARCH_TIMEOUT_GRACE_S")


def max_group() -> int:
    return get("FER_SEARCH_MAX_GROUP")


def ask_batch() -> int | None:
    """None when unset: the sampler's own default (search.study.ask_batch.DEFAULT_BATCH)."""
    return get("FER_SEARCH_ASK_BATCH")


def report_s() -> float:
    return get("FER_SEARCH_REPORT_S")


def mlflow_template_dir() -> str | None:
    return get("FER_SEARCH_MLFLOW_TEMPLATE_DIR")
