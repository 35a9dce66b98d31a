"""`fer-search status`, `studies`: what the Optuna storage holds. Optuna only: no MLflow, no
TensorFlow (these answer in about a second)."""

from __future__ import annotations

import optuna

from search.cli.common import out
from search.cli.objective_tables import front_table
from search.cli.progress import studies_table, trials_table
from search.cli.stores import storage_for
from search.contracts import EXIT_OK
from search.storage.sessions import load_study_named, resolve_storage


def cmd_status(args) -> int:
    with storage_for(resolve_storage(args.storage, None), read_only=True) as storage:
        study = load_study_named(args.study, storage)
        out.print(trials_table(study))
        if len(study.directions) > 1:  # several objectives: the trade-off, best first
            out.print(front_table(study))
    return EXIT_OK


def cmd_studies(args) -> int:
    with storage_for(resolve_storage(args.storage, None), read_only=True) as storage:
        out.print(studies_table(optuna.get_all_study_summaries(storage=storage)))
    return EXIT_OK
