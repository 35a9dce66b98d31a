"""Warm start (search.study.warm_start): a study that starts from an earlier one. Its best
configurations that fit run first (answered from the epoch record when they were trained on the
same data), a TPE study learns from every earlier trial that fits (its first draw is no longer a
random start-up draw), once however often the study is resumed, across storages."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

from search.cli.progress import leaderboard_table, trials_table
from search.contracts import SPEC_ATTR, is_added
from search.errors import InputError
from search.spec.loader import load_spec
from search.spec.params import suggest_all
from search.storage.engines import close_storage
from search.storage.sessions import open_storage
from search.study import warm_start
from search.study.loop import run_study
from search.study.setup import make_sampler, prepare_queue
from tests.search.queuehelp import queue_counts
from tests.search.studyhelp import SPEC, urls, write_spec

COARSE = "coarse"  # studyhelp's grid: learning_rate [3e-3, 1e-2] x head_width [16, 32], 2 epochs
# A TPE study around it: learning_rate as a range, a wider head_width axis.
TPE_SPACE = {"learning_rate": {"low": 1.0e-3, "high": 2.0e-2, "log": True},
             "batch_size": [32], "epochs": [2], "head_width": [16, 32, 64]}


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """The coarse grid, run to its end in a project folder: (folder, its store's URLs, its
    COMPLETE trials best first, ties by number)."""
    from trainer.runtime import load_tensorflow

    folder = tmp_path_factory.mktemp("warm")
    where = urls(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        load_tensorflow()
        run_study(load_spec(write_spec(folder, COARSE)), **where)
        study = optuna.load_study(study_name=COARSE, storage=where["storage_url"])
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(trials) == 4
        best_first = sorted(trials, key=lambda t: (-t.value, t.number))
        yield folder, where, best_first


@pytest.fixture
def in_coarse(coarse, monkeypatch):
    monkeypatch.chdir(coarse[0])
    return coarse


def _config(trial) -> dict:
    return {k: trial.params[k] for k in ("learning_rate", "head_width")}


def _answered(tracking_uri: str, trial) -> bool:
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    return run.data.tags["answered_from_record"] == "true"


def test_a_grid_claims_the_earlier_best_points_first_answered_from_the_record(in_coarse):
    folder, where, best_first = in_coarse
    path = write_spec(folder, "fine-grid", space={
        "learning_rate": [1.0e-3, 3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [2],
        "head_width": [16, 32, 64]}, warm_start={"study": COARSE, "top": 2})
    summary = run_study(load_spec(path), n_trials=2, **where)
    assert summary.warm_start == "warm start from coarse: 2 queued first"
    ran = [o.number for o in summary.outcomes]
    study = optuna.load_study(study_name="fine-grid", storage=where["storage_url"])
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(ran) == [0, 1]  # the queue's first two points, claimed first
    assert [_config(trials[n]) for n in (0, 1)] == [_config(t) for t in best_first[:2]]
    for number, earlier in zip((0, 1), best_first[:2], strict=True):
        assert trials[number].value == earlier.value  # the same training, not a new one
        assert _answered(where["tracking_uri"], trials[number])
    # 9 points, each once: the two that ran are the study's only trials (a grid's trial is
    # made when its point is claimed), the 7 others wait in the queue.
    assert sorted(trials) == [0, 1]
    assert queue_counts(where["storage_url"], "fine-grid") == {"done": 2, "queued": 7}


def test_a_tpe_study_runs_the_earlier_best_first_and_counts_only_its_own_trials(in_coarse):
    folder, where, best_first = in_coarse
    path = write_spec(folder, "fine-tpe", sampler="tpe", n_trials=3, space=TPE_SPACE,
                      warm_start={"study": COARSE, "top": 2})
    summary = run_study(load_spec(path), **where)
    assert summary.warm_start == ("warm start from coarse: 2 queued first, "
                                  "4 of 4 trials given to TPE")
    study = optuna.load_study(study_name="fine-tpe", storage=where["storage_url"])
    added = [t for t in study.trials if is_added(t)]
    own = [t for t in study.trials if not is_added(t)]
    assert sorted(t.user_attrs[warm_start.FROM_ATTR] for t in added) == sorted(
        f"coarse#{t.number}" for t in best_first)
    assert all(t.state == TrialState.COMPLETE for t in added)
    # n_trials counts the study's own trials: three ran, the first two the earlier best.
    assert len(own) == 3 and len(summary.outcomes) == 3
    assert all(t.state == TrialState.COMPLETE for t in own)
    first_two = sorted(own, key=lambda t: t.number)[:2]
    assert [_config(t) for t in first_two] == [_config(t) for t in best_first[:2]]
    assert [t.user_attrs[warm_start.QUEUED_ATTR] for t in first_two] == [
        f"coarse#{t.number}" for t in best_first[:2]]
    assert all(_answered(where["tracking_uri"], t) for t in first_two)
    assert summary.best is not None and not is_added(summary.best)

    # `status` (its table) marks the added trials; the leaderboard ranks own trials only.
    assert _shown(trials_table(study)).count("warm start: added from coarse#") == 4
    board = _shown(leaderboard_table(study, "val_accuracy"))
    assert "top 3 by val_accuracy" in board and "not ranked: 4 trials a warm start added" in board


def _shown(table) -> str:
    console = Console(width=300, record=True)
    console.print(table)
    return console.export_text()


def test_a_resumed_study_does_not_warm_start_again(in_coarse):
    folder, where, _ = in_coarse
    path = write_spec(folder, "fine-again", sampler="random", n_trials=4, space=TPE_SPACE,
                      warm_start={"study": COARSE, "top": 3})
    spec = load_spec(path)
    first = run_study(spec, n_trials=1, **where)
    assert first.warm_start.startswith("warm start from coarse: 3 queued first")
    again = run_study(spec, n_trials=1, **where)
    assert again.warm_start == ""
    study = optuna.load_study(study_name="fine-again", storage=where["storage_url"])
    queued = [t for t in study.trials if warm_start.QUEUED_ATTR in t.user_attrs]
    assert len(queued) == 3  # queued once, whoever resumed
    # A set-up cut off before it recorded itself done queues nothing twice either.
    storage = open_storage(where["storage_url"])
    try:
        source = warm_start._read(storage, COARSE, where["storage_url"])
        warm_start.seed(study, spec, source)
    finally:
        close_storage(storage)
    study = optuna.load_study(study_name="fine-again", storage=where["storage_url"])
    assert len([t for t in study.trials if warm_start.QUEUED_ATTR in t.user_attrs]) == 3
    assert not any(is_added(t) for t in study.trials)  # random learns nothing


def test_a_study_that_does_not_exist_is_one_line_and_exit_2(in_coarse, capsys):
    folder, where, _ = in_coarse
    from search.cli.main import main

    path = write_spec(folder, "from-nowhere", sampler="random", n_trials=1, space=TPE_SPACE)
    code = main(["run", str(path), "--warm-start", "no-such-study",
                 "--storage", where["storage_url"], "--tracking-uri", where["tracking_uri"]])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "no-such-study" in line]
    assert len(lines) == 1 and "warm_start.study: no study named 'no-such-study'" in lines[0]
    assert "studies there:" in lines[0] and "coarse" in lines[0]
    assert "from-nowhere" not in optuna.get_all_study_names(where["storage_url"])


def test_a_tpe_sampler_learns_from_the_earlier_trials(tmp_path, monkeypatch):
    """No training: an earlier study written by hand, 20 trials around a peak at 1e-3 and 4
    outside the new range. With them, TPE's start-up is spent, and its first draw is a model's
    (not the draw its random start-up makes on an empty study), near the earlier best."""
    monkeypatch.chdir(tmp_path)
    earlier_url = f"sqlite:///{tmp_path}/earlier.db"
    url = f"sqlite:///{tmp_path}/new.db"
    rates = [1.0e-4 * 10 ** (k / 10) for k in range(20)] + [0.5, 0.6, 0.7, 0.8]
    fixed = {"batch_size": [32], "epochs": [2], "head_width": [16]}
    earlier_text = yaml.safe_dump({**SPEC, "space": {"learning_rate": rates, **fixed}})
    earlier = optuna.create_study(study_name="hand", storage=earlier_url, direction="maximize")
    earlier.set_user_attr(SPEC_ATTR, earlier_text)
    earlier.set_user_attr("metric", "val_accuracy")
    for rate in rates:
        earlier.add_trial(optuna.trial.create_trial(
            params={"learning_rate": rate, "batch_size": 32, "epochs": 2, "head_width": 16},
            distributions={"learning_rate": optuna.distributions.CategoricalDistribution(rates),
                           **{k: optuna.distributions.CategoricalDistribution(v)
                              for k, v in fixed.items()}},
            value=1.0 - abs(math.log10(rate) + 3.0)))
    space = {"learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, **fixed}

    def first_draw(name: str, warm: dict | None) -> tuple[float, str]:
        extra = {"warm_start": warm} if warm else {}
        spec = load_spec(write_spec(tmp_path, name, sampler="tpe", n_trials=5, space=space,
                                    **extra))
        storage = open_storage(url)
        try:
            seeded: list[str] = []
            prepare_queue(spec, storage, url, on_warm_start=seeded.append)
            study = optuna.load_study(study_name=name, storage=storage,
                                      sampler=make_sampler(spec))
            return suggest_all(study.ask(), spec.space)["learning_rate"], "".join(seeded)
        finally:
            close_storage(storage)

    blind, _ = first_draw("blind", None)
    warm, line = first_draw("warm", {"study": "hand", "top": 0, "storage": earlier_url})
    assert line == ("warm start from hand: 0 queued first, 20 of 24 trials given to TPE, "
                    "4 do not fit the space (learning_rate outside [0.0001, 0.01]: 4)")
    assert blind == optuna.samplers.RandomSampler(seed=0).sample_independent(
        optuna.create_study(), optuna.trial.create_trial(state=TrialState.RUNNING),
        "learning_rate", optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True))
    assert warm != blind
    assert 3.0e-4 <= warm <= 3.0e-3, warm  # around the earlier best (1e-3), a decade wide


def test_warm_start_spec_errors_are_one_line_and_its_storage_is_masked(tmp_path):
    cases = {
        "tops": ({"study": COARSE, "tops": 3}, "warm_start.tops: expected one of the keys "
                 "study, top, storage, but got an unknown key 'tops' (did you mean 'top'?)"),
        "missing": ({"top": 3}, "warm_start.study: expected a value for 'study'"),
        "negative": ({"study": COARSE, "top": -1},
                     "warm_start.top: expected an integer >= 0, but got -1"),
        "itself": ({"study": "itself"}, "warm_start.study: expected an earlier study, not "
                   "'itself' itself"),
        "not-url": ({"study": COARSE, "storage": "u:s3cret@db"},
                    "warm_start.storage: expected a database URL"),
    }
    for name, (section, message) in cases.items():
        path = write_spec(tmp_path, "itself" if name == "itself" else name,
                          warm_start=section)
        with pytest.raises(Exception) as raised:
            load_spec(path)
        text = str(raised.value)
        assert message in text and "\n" not in text and "s3cret" not in text, text
    password = "p@ss w:rd#'\"<"
    url = f"postgresql://fer:{password}@db:5432/optuna"
    spec = load_spec(write_spec(tmp_path, "masked", warm_start={"study": COARSE,
                                                                "storage": url}))
    assert spec.warm_start.storage == url
    for shown in (spec.redacted_text, repr(spec)):
        assert "p@ss" not in shown and "w:rd" not in shown
    assert "postgresql://fer:***@db:5432/optuna" in spec.redacted_text
    with pytest.raises(InputError, match="another study than 'masked'"):
        from search.spec.warm_section import with_warm_start

        with_warm_start(spec, "masked")


@pytest.mark.postgres
def test_an_sqlite_grid_seeds_a_postgresql_tpe_study(in_coarse, pg_cluster):
    folder, where, best_first = in_coarse
    pg_url = pg_cluster.url()
    path = write_spec(folder, "fine-on-pg", sampler="tpe", n_trials=2, space=TPE_SPACE,
                      storage=pg_url, warm_start={"study": COARSE, "top": 2,
                                                  "storage": where["storage_url"]})
    summary = run_study(load_spec(path), storage_url=pg_url,
                        tracking_uri=where["tracking_uri"])
    assert summary.warm_start == ("warm start from coarse: 2 queued first, "
                                  "4 of 4 trials given to TPE")
    study = optuna.load_study(study_name="fine-on-pg", storage=pg_url)
    own = sorted((t for t in study.trials if not is_added(t)), key=lambda t: t.number)
    assert [_config(t) for t in own] == [_config(t) for t in best_first[:2]]
    assert all(_answered(where["tracking_uri"], t) for t in own)
    assert sum(is_added(t) for t in study.trials) == 4
