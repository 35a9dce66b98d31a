"""The head engine's backward pass: written out by hand vs the tape (autodiff), in one run.

The engine (trainer.heads.engine) once wrote its heads' gradients by hand (softmax minus targets,
two matmuls and a ReluGrad per layer: a dozen ops a head where a tape makes some thirty), so
every setting that changes a head's forward pass needed a derivative written for it. Now a tape
differentiates the forward pass. The hand-written backward pass lives on here only, as the
contender `hand` (`_hand_class`, relu heads only), so this measures what the tape costs:

1. `heads`: the quickstart grid's 24 configurations (12 heads: 3 learning rates x 2 batch sizes
   x 2 widths, trained to 30 epochs, dropout 0.3) on random 512-d stand-ins for cached
   features, grouped as a grid queue groups them (heads of one group key, at most 8 a group),
   each through `trainer.train_many` (records, checkpoints, validation scores included), on
   the quickstart's ~980 training faces (`--sizes` for others);
   `hand` and `tape` in turns, each on a fresh cache and with programs traced anew, as in a
   new worker;
2. `agreement`: the same heads trained both ways, their final weights compared (max absolute
   difference, and whether histories are equal): the last round of `heads` (its epochs end on
   a short batch) and 1,024 faces (full batches only);
3. `study`: the whole quickstart study (studies/quickstart.yaml's space and train sections, its
   1,400 synthetic faces generated once), `fer-search run` timed as a command from process start
   to exit, each contender with fresh stores and caches (feature extraction included), in turns
   (hand, tape, tape, hand, ...); each trial's value compared between the two.

The issue's rule: keep the hand-written pass only if it saves at least 20% of a whole study's
wall time against autodiff.

    .venv/bin/python benchmarks/head_backward.py [--rounds 2] [--study-rounds 1] [--skip-study]

Writes results/head-backward.{json,md} (`--name`).
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import benchlib  # noqa: E402

KINDS = ("hand", "tape")
DIM, CLASSES = 512, 7
SPACE = {"learning_rate": [3.0e-4, 1.0e-3, 3.0e-3], "batch_size": [32, 64],
         "epochs": [10, 30], "head_width": [64, 256]}
FULL_BATCHES = 1024
MAX_GROUP = 8  # heads a grid group holds (FER_SEARCH_MAX_GROUP's default)
QUICKSTART = benchlib.REPO / "studies" / "quickstart.yaml"
QUICKSTART_FACES = 1400


def _hand_class(engine):
    """The engine's `_Compiled` with the backward pass written out by hand, as it was until the
    tape replaced it (relu heads only: a hand derivative exists for nothing else)."""
    import tensorflow as tf

    class HandBackward(engine._Compiled):
        def _gradients(self, variables, h, xb, onehot, share, t, head):
            spec = self.heads[h]
            if getattr(spec, "activation", "relu") != "relu":
                raise ValueError("the hand-written backward pass knows relu only")
            w1, b1, w2, b2 = variables[h][0]
            targets = spec.targets(onehot)  # each row sums to 1, smoothed or not
            hidden = tf.nn.relu(tf.nn.bias_add(tf.matmul(xb, w1), b1))
            kept, dropped = hidden, None
            if self.switches[h]["dropout"]:
                noise = tf.random.stateless_uniform(tf.shape(hidden),
                                                    tf.stack([head["seed"], t]))
                dropped = tf.cast(noise >= head["drop_below"], tf.float32) * head["keep_scale"]
                kept = hidden * dropped
            logits = tf.nn.bias_add(tf.matmul(kept, w2), b2)
            log_p = tf.nn.log_softmax(logits)
            # d loss / d logits = (softmax - targets) * weight / size, per face
            d_logits = (tf.exp(log_p) - targets) * tf.expand_dims(share, 1)
            d_hidden = tf.matmul(d_logits, w2, transpose_b=True)
            if dropped is not None:
                d_hidden = d_hidden * dropped
            d_pre = tf.raw_ops.ReluGrad(gradients=d_hidden, features=hidden)
            grads = [tf.matmul(xb, d_pre, transpose_a=True), tf.reduce_sum(d_pre, 0),
                     tf.matmul(kept, d_logits, transpose_a=True), tf.reduce_sum(d_logits, 0)]
            return grads, logits, -tf.reduce_sum(targets * log_p, axis=1)

    return HandBackward


_TAPE = {}


def use(kind: str) -> None:
    """The engine's programs from now on: `hand` or `tape` (its own); compiled programs of the
    other kind are forgotten."""
    from trainer.heads import engine

    _TAPE.setdefault("class", engine._Compiled)
    engine._Compiled = _hand_class(engine) if kind == "hand" else _TAPE["class"]
    engine.clear_programs()


class _OnEngineImport(importlib.abc.MetaPathFinder):
    """Calls `use(kind)` right after trainer.heads.engine is first imported: a `fer-search run`
    child starts TensorFlow when its first training needs it, with the threads it plans, so the
    engine must not be imported earlier."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def find_spec(self, name, path, target=None):
        if name != "trainer.heads.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            use(self.kind)

        spec.loader.exec_module = exec_module
        return spec


def child_run(kind: str, spec: str) -> None:
    """`fer-search run SPEC` in this process, with the engine's backward pass of `kind`."""
    sys.meta_path.insert(0, _OnEngineImport(kind))
    sys.argv = ["fer-search", "run", spec]
    from search.cli.main import entry

    entry()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of `heads`, kinds in turns")
    p.add_argument("--study-rounds", type=int, default=1,
                   help="rounds of `study` (each: both kinds, alternating who goes first)")
    p.add_argument("--skip-study", action="store_true")
    p.add_argument("--sizes", type=int, nargs="+", default=[980],
                   help="training-split sizes of `heads`")
    p.add_argument("--name", default="head-backward")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "head-backward")
    args = p.parse_args(argv)
    prov = benchlib.provenance()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = {"setup": {"space": SPACE, "sizes": args.sizes, "rounds": args.rounds,
                        "study_rounds": 0 if args.skip_study else args.study_rounds}}
    # The study first: its children start TensorFlow their own way; this process then loads it.
    if not args.skip_study:
        result["study"] = study(args, work)
    result["heads"], result["agreement"] = heads(args, work)
    if "study" in result:
        result["study_share"] = study_share(result)
    prov["load_average_at_end"] = benchlib.load_average()
    result["provenance"] = prov
    text = markdown(result)
    benchlib.write_results(args.out, args.name, result, text)
    print(text)
    return 0


# --- heads -----------------------------------------------------------------------------------


def _configs():
    import itertools

    from trainer import TrainConfig

    base = TrainConfig(weights="none", image_size=48, dropout=0.3, seed=0)
    keys = list(SPACE)
    return [base.replace(**dict(zip(keys, values, strict=True)))
            for values in itertools.product(*SPACE.values())]


def _groups(configs):
    """The configs as a grid queue groups them: one group key, heads (tracks) in order, at most
    MAX_GROUP heads a group."""
    from trainer.heads.grouping import track_key

    tracks: dict = {}
    for config in configs:
        tracks.setdefault(track_key(config), []).append(config)
    heads = list(tracks.values())
    return [sum(heads[i:i + MAX_GROUP], []) for i in range(0, len(heads), MAX_GROUP)]


def _features(n_train: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_val = max(1, n_train // 7)
    return (rng.standard_normal((n_train, DIM), dtype=np.float32),
            rng.integers(0, CLASSES, n_train),
            rng.standard_normal((n_val, DIM), dtype=np.float32),
            rng.integers(0, CLASSES, n_val))


def _dataset(cache: Path, arrays, config):
    """A Dataset whose train/val features are already in its cache (random stand-ins)."""
    import numpy as np

    from trainer.data.dataset import Dataset, Split
    from trainer.network.features import feature_path

    x, y, xv, yv = arrays

    def split(name, labels):
        images = np.zeros((len(labels), 8, 8, 3), "uint8")  # never read: features are cached
        return Split(name, images, labels, np.array([f"{name}{i}" for i in range(len(labels))]))

    data = Dataset(train=split("train", y), val=split("val", yv), test=split("test", yv[:7]),
                   fingerprint=f"bench-backward-{len(y)}", image_size=config.image_size,
                   cache_dir=cache)
    for name, array in (("train", x), ("val", xv)):
        path = feature_path(data, name, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return data


def _train_all(groups, data) -> list:
    from trainer import train_many

    results = []
    for configs in groups:
        out = train_many(configs, data)
        bad = [o for o in out if isinstance(o, BaseException)]
        if bad:
            raise bad[0]
        results += out
    return results


def heads(args, work: Path) -> tuple[dict, dict]:
    import trainer  # noqa: F401  (sets the TensorFlow environment first)
    from trainer.runtime import defer_tensorflow, load_tensorflow

    defer_tensorflow(None, ops_in_parallel=True)  # `fer-search run`'s way for a heads-only study
    load_tensorflow()
    import numpy as np

    configs = _configs()
    groups = _groups(configs)
    counter = iter(range(10**6))
    timings: dict = {}
    trained: dict = {}  # size -> kind -> the last round's results
    for size in args.sizes:
        arrays = _features(size)
        times = {kind: [] for kind in KINDS}
        for r in range(args.rounds):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                use(kind)
                data = _dataset(work / f"cache{next(counter)}", arrays, configs[0])
                start = time.perf_counter()
                trained.setdefault(size, {})[kind] = _train_all(groups, data)
                times[kind].append(time.perf_counter() - start)
                print(f"heads, {size} faces, {kind}: {times[kind][-1]:.2f} s", flush=True)
        timings[str(size)] = {
            "seconds": times, "median": {k: statistics.median(v) for k, v in times.items()},
            "best": {k: min(v) for k, v in times.items()},
            "tape_over_hand": min(times["tape"]) / min(times["hand"]),
            "tape_over_hand_medians": (statistics.median(times["tape"])
                                       / statistics.median(times["hand"])),
            "groups": [len(g) for g in groups]}
    # Full batches only (1,024 = 32 x 32 = 16 x 64): no short last batch.
    for size in (FULL_BATCHES,):
        arrays = _features(size)
        for kind in KINDS:
            use(kind)
            trained.setdefault(size, {})[kind] = _train_all(
                groups, _dataset(work / f"cache{next(counter)}", arrays, configs[0]))
    agreement = {}
    for size, out in trained.items():
        diffs = [max(float(np.max(np.abs(a - b))) for a, b in
                     zip(hand.top_weights, tape.top_weights, strict=True))
                 for hand, tape in zip(out["hand"], out["tape"], strict=True)]
        scale = max(float(np.max(np.abs(w))) for r in out["hand"] for w in r.top_weights)
        val_diffs = [abs(h_row["val_accuracy"] - t_row["val_accuracy"])
                     for hand, tape in zip(out["hand"], out["tape"], strict=True)
                     for h_row, t_row in zip(hand.history, tape.history, strict=True)]
        agreement[str(size)] = {
            "configs": len(diffs),
            "weights_equal": sum(d == 0 for d in diffs),
            "max_abs_weight_diff": max(diffs),
            "median_max_abs_weight_diff": statistics.median(diffs),
            "largest_weight": scale,
            "histories_equal": sum(h.history == t.history
                                   for h, t in zip(out["hand"], out["tape"], strict=True)),
            "max_val_accuracy_diff": max(val_diffs)}
    use("tape")
    return timings, agreement


# --- study -----------------------------------------------------------------------------------


def _study_spec(folder: Path, data_root: Path) -> Path:
    import yaml

    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["data"] = {"root": str(data_root), "split": spec["data"]["split"],
                    "split_seed": spec["data"]["split_seed"],
                    "cache_dir": str(folder / ".cache")}
    spec["storage"] = f"sqlite:///{folder / 'optuna.db'}"
    spec["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "quickstart.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_study(kind: str, folder: Path, data_root: Path) -> dict:
    shutil.rmtree(folder, ignore_errors=True)  # fresh stores and caches
    folder.mkdir(parents=True)
    spec = _study_spec(folder, data_root)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from benchmarks.head_backward import child_run; child_run(sys.argv[2], sys.argv[3])")
    log = folder / "run.log"
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-c", code, str(benchlib.REPO), kind, str(spec)],
                              cwd=folder, env=benchlib.source_env(benchlib.REPO), stdout=out,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{kind}: fer-search run exited {proc.returncode}; see {log}")
    import optuna

    name = "quickstart"
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}").trials
    values = {repr(sorted(t.params.items())): t.value for t in trials
              if t.state.name == "COMPLETE"}
    return {"wall_s": wall, "feature_s": benchlib.feature_seconds(folder, name),
            "complete": len(values), "values": values}


def study(args, work: Path) -> dict:
    data_root = work / "data" / f"synthetic-{QUICKSTART_FACES}-0"
    benchlib.generate_faces(data_root, QUICKSTART_FACES)
    runs = {kind: [] for kind in KINDS}
    for r in range(args.study_rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            # A folder per run: a deleted and re-made mlflow.db would be read through this
            # process's MLflow client's cached connection to the old file.
            runs[kind].append(_run_study(kind, work / f"study-{kind}-{r}", data_root))
            print(f"study, {kind}: {runs[kind][-1]['wall_s']:.1f} s", flush=True)
    hand, tape = runs["hand"][0]["values"], runs["tape"][0]["values"]
    same = sum(hand[k] == tape.get(k) for k in hand)
    walls = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    return {"runs": runs, "best_wall_s": walls,
            "tape_over_hand": walls["tape"] / walls["hand"],
            "trial_values_equal": same, "trials": len(hand),
            "max_trial_value_diff": max(abs(hand[k] - tape[k]) for k in hand),
            "best": {k: max(v[0]["values"].values()) for k, v in runs.items()}}


def study_share(r: dict) -> dict:
    """What the tape costs the whole study: head training's extra seconds (best runs, on the
    size nearest the quickstart's) over the study's best wall time by hand."""
    size = min(r["heads"], key=lambda k: abs(int(k) - 980))
    best = r["heads"][size]["best"]
    cost = best["tape"] - best["hand"]
    return {"size": size, "cost": [cost, cost / r["study"]["best_wall_s"]["hand"]]}


# --- report ----------------------------------------------------------------------------------


def markdown(r: dict) -> str:
    lines = ["# The head engine's backward pass: by hand vs the tape (autodiff)", ""]
    s = r.get("study")
    if s:
        rows = []
        for kind in KINDS:
            for run in s["runs"][kind]:
                rows.append([kind, f"{run['wall_s']:.1f}", f"{run['feature_s']:.1f}",
                             f"{run['wall_s'] - run['feature_s']:.1f}", run["complete"],
                             f"{max(run['values'].values()):.4f}"])
        lines += [
            "## The whole quickstart study (`fer-search run`, cold: fresh stores and caches)", "",
            benchlib.table(["backward", "wall s", "feature extraction s", "the rest s",
                            "complete trials", "best val_accuracy"], rows), "",
            f"tape / hand, whole study (best wall of each): **{s['tape_over_hand']:.3f}**; trial "
            f"values equal in {s['trial_values_equal']} of {s['trials']} trials (largest "
            f"difference {s['max_trial_value_diff']:.2g}).",
            ""]
    rows = []
    for size, t in r["heads"].items():
        rows.append([size, " / ".join(f"{x:.2f}" for x in t["seconds"]["hand"]),
                     " / ".join(f"{x:.2f}" for x in t["seconds"]["tape"]),
                     f"{t['tape_over_hand']:.3f}", f"{t['tape_over_hand_medians']:.3f}"])
    lines += [
        "## Head training alone (the quickstart grid's 12 heads to 30 epochs, `train_group`)", "",
        "Random 512-d stand-ins for cached features, val = train / 7, grouped as the grid queue "
        "groups them (heads per group: "
        f"{next(iter(r['heads'].values()))['groups']}); each run on a fresh cache, its "
        "programs traced anew (as in a new worker); kinds in turns.", "",
        benchlib.table(["train faces", "hand s (each round)", "tape s (each round)",
                        "tape / hand (best of each)", "tape / hand (medians)"], rows), ""]
    if s:
        t, cost, share = r["heads"][r["study_share"]["size"]], *r["study_share"]["cost"]
        lines += [
            f"What the tape costs a whole quickstart study, from the best runs: head training "
            f"{t['best']['hand']:.2f} s by hand, {t['best']['tape']:.2f} s by tape "
            f"({cost:+.2f} s), against a study of {s['best_wall_s']['hand']:.1f} s: "
            f"**{share:+.1%}** of its wall time (the issue keeps the hand-written pass only if it "
            "saves at least 20%). The machine is shared, so each contender's best run is the "
            "least disturbed one; medians are shown beside them.", ""]
    rows = [[size, f"{a['weights_equal']} of {a['configs']}", f"{a['max_abs_weight_diff']:.3g}",
             f"{a['median_max_abs_weight_diff']:.3g}",
             f"{a['largest_weight']:.3g}", f"{a['histories_equal']} of {a['configs']}",
             f"{a['max_val_accuracy_diff']:.3g}"] for size, a in r["agreement"].items()]
    lines += [
        "## Agreement: the same heads trained both ways (30 epochs, dropout 0.3)", "",
        benchlib.table(["train faces", "weights bit for bit equal", "max abs weight diff",
                        "median over configs",
                        "largest weight", "histories equal", "max val_accuracy diff"], rows),
        "", "Weight differences are the largest over a config's weights (its `top_weights` "
        "after its epochs); the median is over the configs. 980 faces end every epoch on a short "
        "batch; 1,024 are full batches of 32 and 64 only. Adam divides a gradient by its own "
        "running size, so a weight whose gradient is all round-off (near 0) can move by up to "
        "the learning rate a step either way.", "", benchlib.provenance_markdown(r["provenance"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
