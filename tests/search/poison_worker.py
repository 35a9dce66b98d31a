"""`fer-search` whose one configuration kills its process: issue 29's test hook, kept out of the
product code.

Run as `python -m tests.search.poison_worker worker SPEC ...` (any `fer-search` arguments) with
`FER_TEST_POISON` set to a JSON object of `TrainConfig` fields. A training that includes
a config with those values (alone or in a group's pass) SIGKILLs the process as it starts, as
the kernel's out-of-memory killer would for a head too wide for the machine: nothing is
recorded, the trials just stop beating.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import trainer

POISON_ENV = "FER_TEST_POISON"  # not a FER_SEARCH_ knob: the product never reads it


def is_poison(config) -> bool:
    poison = json.loads(os.environ[POISON_ENV])
    return all(getattr(config, name) == value for name, value in poison.items())


def _die_on_poison(configs) -> None:
    if any(is_poison(config) for config in configs):
        os.kill(os.getpid(), signal.SIGKILL)


class _PoisonedTrainer:
    """The `trainer` package as `search` sees it, but for its two training entry points. (Set
    on the package itself they would not hold: importing `trainer.train`, a submodule, sets
    the package's attribute of that name back.)"""

    def __getattr__(self, name: str):
        return getattr(trainer, name)

    @staticmethod
    def train_many(configs, data, *args, **kwargs):
        _die_on_poison(configs)
        return trainer.train_many(configs, data, *args, **kwargs)

    @staticmethod
    def train(config, data, *args, **kwargs):
        _die_on_poison([config])
        return trainer.train(config, data, *args, **kwargs)


def install() -> None:
    """Puts the poisoned trainer where the study's runners call it: the runner (one trial
    alone) and the repeats module (a batch's trials, and a trial's seeds, in one call)."""
    from search.trial import repeats, runner

    runner.trainer = repeats.trainer = _PoisonedTrainer()


if __name__ == "__main__":
    install()
    from search.cli.main import entry

    sys.argv[0] = "fer-search"
    entry()
