"""What repeats cost: the quickstart grid with `repeats: 3` against `repeats: 1` and against three
separate one-seed studies, side by side in one run.

    .venv/bin/python benchmarks/repeats_cost.py [--faces N] [--image-size S] [--rounds R]

Three contenders run `fer-search run` on the quickstart's 24-point grid (studies/quickstart.yaml:
3 learning rates x 2 batch sizes x 2 epoch counts x 2 head widths), on the same synthetic ExpW
folder, `weights: none`:

- `repeats 1`: one study, each configuration trained once (seed 0), as today's quickstart;
- `repeats 3`: one study with `repeats: 3`, each configuration trained with seeds 0, 1 and 2 in
  the trial's own trainer call (one pass, the seeds side by side);
- `3 studies`: three studies of `repeats: 1`, seeds 0, 1 and 2, one after another in one folder
  (what a user without repeats would run); timed as the sum of the three commands.

Each contender has fresh Optuna and MLflow stores and its own cache, into which the crops and
VGG16 features of a warm-up run are copied first (never its epoch records), so no contender pays
the one-time extraction and none is answered from another's records. Timed as whole commands,
process start to exit. Rounds in turns, every other one reversed; wall time is the mean.

The check beside the timing: each `repeats 3` trial's value is the mean of the three seeds, and
each seed's value (in the trial's `repeat_values`) equals that configuration's value in the
separate study of that seed (a head trains to the same numbers beside others as alone).

Writes results/repeats.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SEEDS = (0, 1, 2)
QUICKSTART = benchlib.REPO / "studies" / "quickstart.yaml"
# Each contender says its own grouping knobs; none inherits this shell's.
UNSET = ("FER_SEARCH_ASK_BATCH", "FER_SEARCH_MAX_GROUP")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work, prov, data_root = benchlib.prepare(args.work, args.faces)
    warm = work / "warm-up"
    shutil.rmtree(warm, ignore_errors=True)
    warm_up = _run(warm, data_root, args, "warm-up", repeats=1, seed=7, n_trials=1)
    print(f"warm-up (one-time extraction {warm_up['feature_s']:.1f} s): "
          f"{warm_up['wall_s']:.1f} s", flush=True)

    contenders = ("repeats 1", "repeats 3", "3 studies")
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name in contenders if round_ % 2 == 0 else contenders[::-1]:
            folder = work / f"{name.replace(' ', '-')}-round-{round_}"
            shutil.rmtree(folder, ignore_errors=True)
            for part in ("crops", "features"):
                shutil.copytree(warm / ".cache" / part, folder / ".cache" / part)
            runs[name].append(_contender(name, folder, data_root, args))
            print(f"round {round_ + 1}, {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    prov["load_average_at_end"] = benchlib.load_average()

    wall = {name: sum(r["wall_s"] for r in found) / len(found) for name, found in runs.items()}
    check = _same_numbers(runs["repeats 3"][0], runs["3 studies"][0])
    report = {
        "provenance": prov,
        "setup": {"faces": args.faces, "image_size": args.image_size, "seeds": SEEDS,
                  "rounds": args.rounds, "grid": "studies/quickstart.yaml's space",
                  "weights": "none"},
        "warm_up": warm_up,
        "wall_s": wall,
        "wall_s_by_round": {name: [r["wall_s"] for r in found] for name, found in runs.items()},
        "repeats3_over_repeats1": wall["repeats 3"] / wall["repeats 1"],
        "three_studies_over_repeats1": wall["3 studies"] / wall["repeats 1"],
        "repeats3_over_three_studies": wall["repeats 3"] / wall["3 studies"],
        "check": check,
        "results": runs,
    }
    rows = [[name, f"{wall[name]:.1f}",
             " / ".join(f"{r['wall_s']:.1f}" for r in runs[name]),
             f"{wall[name] / wall['repeats 1']:.2f}", runs[name][0]["trainings"],
             runs[name][0]["complete"]]
            for name in contenders]
    markdown = (
        "# Repeats: `repeats: 3` against `repeats: 1` and three separate studies\n\n"
        f"The quickstart's 24-point grid, {args.faces} synthetic faces (70% train), "
        f"{args.image_size} px, frozen VGG16 (`weights: none`), features cached for every "
        "contender (copied from one warm-up run), fresh Optuna and MLflow stores; timed as "
        f"whole `fer-search run` commands (`3 studies`: the sum of three). {args.rounds} "
        "round(s) in turns, every other one reversed.\n\n"
        + benchlib.table(["contender", "wall s (mean)", "by round", "/ repeats 1",
                          "configs x seeds", "complete trials"], rows)
        + f"\n\n`repeats: 3` / `repeats: 1`: **{report['repeats3_over_repeats1']:.2f}x**; "
        f"three separate studies / `repeats: 1`: "
        f"**{report['three_studies_over_repeats1']:.2f}x**; `repeats: 3` / three studies: "
        f"**{report['repeats3_over_three_studies']:.2f}x**.\n\n"
        f"Same numbers: {check['compared']} (configuration, seed) values of the `repeats: 3` "
        f"study compared with the separate studies': largest difference "
        f"{check['largest_difference']:.2e}; every trial's value the mean of its seeds: "
        f"{'yes' if check['values_are_means'] else 'NO'}.\n\n"
        f"The one-time feature extraction, paid once by the warm-up run: "
        f"{warm_up['feature_s']:.1f} s (warm-up run, 1 trial: {warm_up['wall_s']:.1f} s).\n\n"
        + benchlib.provenance_markdown(prov)
    )
    for path in benchlib.write_results(args.out, args.name, report, markdown):
        print(f"wrote {path}")
    return 0


def _contender(name: str, folder: Path, data_root: Path, args) -> dict:
    if name == "repeats 1":
        return _run(folder, data_root, args, "repeats-1", repeats=1, seed=0)
    if name == "repeats 3":
        return _run(folder, data_root, args, "repeats-3", repeats=3, seed=0)
    studies = [_run(folder, data_root, args, f"seed-{seed}", repeats=1, seed=seed)
               for seed in SEEDS]
    return {"wall_s": sum(s["wall_s"] for s in studies),
            "trainings": sum(s["trainings"] for s in studies),
            "complete": sum(s["complete"] for s in studies),
            "studies": studies}


def _same_numbers(repeated: dict, separate: dict) -> dict:
    """Each (configuration, seed) value of the repeats study against the separate study of that
    seed; and each repeats trial's value against the mean of its seeds."""
    alone = {(_key(t["params"]), seed): t["value"]
             for seed, study in zip(SEEDS, separate["studies"], strict=True)
             for t in study["trials"]}
    differences, means = [], True
    for trial in repeated["trials"]:
        values = trial["repeat_values"]
        means &= abs(sum(values) / len(values) - trial["value"]) < 1e-9
        for seed, value in zip(SEEDS, values, strict=True):
            differences.append(abs(value - alone[(_key(trial["params"]), seed)]))
    return {"compared": len(differences), "largest_difference": max(differences),
            "values_are_means": means}


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _spec(folder: Path, data_root: Path, image_size: int, name: str, repeats: int, seed: int,
          n_trials: int | None) -> Path:
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(name=name, repeats=repeats, n_trials=n_trials,
                storage=f"sqlite:///{folder / 'optuna.db'}",
                tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    spec["train"].update(image_size=image_size, seed=seed)
    spec["data"] = {"root": str(data_root), "split": spec["data"]["split"],
                    "split_seed": spec["data"]["split_seed"],
                    "cache_dir": str(folder / ".cache")}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run(folder: Path, data_root: Path, args, name: str, *, repeats: int, seed: int,
         n_trials: int | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    spec = _spec(folder, data_root, args.image_size, name, repeats, seed, n_trials)
    log = folder / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "search.cli", "run", str(spec)],
                              cwd=folder, env=benchlib.source_env(benchlib.REPO, unset=UNSET),
                              stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fer-search run exited {proc.returncode}; see {log}")
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    trials = [{"params": t.params, "value": t.value,
               "repeat_values": t.user_attrs.get("repeat_values", [t.value])}
              for t in sorted(complete, key=lambda t: t.number)]
    return {"wall_s": wall, "complete": len(complete),
            "trainings": len(complete) * repeats,
            "feature_s": benchlib.feature_seconds(folder, name), "trials": trials,
            "log": str(log)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1400, help="faces in all (the quickstart's)")
    p.add_argument("--image-size", type=int, default=48, help="the quickstart's")
    p.add_argument("--rounds", type=int, default=2, help="runs of each contender, in turns")
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "repeats")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--name", default="repeats")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
