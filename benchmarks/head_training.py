"""Head training on cached features: plain Keras `fit` vs the compiled head engine, in one run.

Random 512-d features stand in for VGG16's pooled output (the head's cost does not depend on
their values): 4,000 training faces, 500 validation faces, 7 classes, batch 32, Dense 256,
dropout 0.3. Measured in one process, in turns, each contender on a fresh cache (no epoch record
or checkpoint from an earlier contender can answer it):

1. plain Keras `fit`: a freshly built and compiled head (`trainer.network.model.build_head`), one
   `fit` of E epochs with a per-epoch `predict` of the validation split (what a hand-written loop
   over cached features does);
2. one head on the engine: `trainer.train` (records, checkpoints and val metrics included);
3. six separate Keras fits (six learning rates), one after the other;
4. a group of six heads on the engine: `trainer.train_many` of the same six configs;
5. numpy's float32 matmul (2048^3) as the machine's yardstick.

FLOPs of a head epoch: 3 x the forward pass (forward, and the backward pass's two matmuls)
= 6 x (512 x 256 + 256 x 7) per face, plus the validation forward pass.

    python benchmarks/head_training.py [--epochs 5] [--faces 4000] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import benchlib  # noqa: E402
from trainer import settings  # noqa: E402

DIM, WIDTH, CLASSES, BATCH = 512, 256, 7, 32
RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--faces", type=int, default=4000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--name", default="head_training")
    p.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    p.add_argument("--work", type=Path, default=benchlib.WORK_DIR / "head_training")
    p.add_argument("--ops-in-parallel", action="store_true",
                   help="TensorFlow's threads as `fer-search run` sets them for a heads-only "
                        "study (intra-op 1, inter-op = cores), for every contender; default: "
                        "TensorFlow's own (each op split over the cores)")
    args = p.parse_args(argv)
    prov = benchlib.provenance()
    prov["git"]["head"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=benchlib.REPO,
                                         capture_output=True, text=True).stdout.strip()
    import trainer  # noqa: F401  (sets the TensorFlow environment first)
    from trainer.runtime import defer_tensorflow, load_tensorflow

    defer_tensorflow(None, ops_in_parallel=args.ops_in_parallel)
    load_tensorflow()
    result = run(args)
    result["provenance"] = {**prov, "load_average_at_end": benchlib.load_average()}
    benchlib.write_results(args.out, args.name, result, markdown(result))
    print(markdown(result))
    return 0


def run(args) -> dict:
    import numpy as np

    from trainer import TrainConfig

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.faces, DIM), dtype=np.float32)
    xv = rng.standard_normal((args.val, DIM), dtype=np.float32)
    y = rng.integers(0, CLASSES, args.faces)
    yv = rng.integers(0, CLASSES, args.val)
    base = TrainConfig(weights="none", image_size=32, batch_size=BATCH, head_width=WIDTH,
                       dropout=0.3, epochs=args.epochs, learning_rate=RATES[2])
    configs = [base.replace(learning_rate=r) for r in RATES]
    flop_epoch = 6 * args.faces * (DIM * WIDTH + WIDTH * CLASSES) + 2 * args.val * (
        DIM * WIDTH + WIDTH * CLASSES)
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    counter = iter(range(10**6))

    def fresh_data():
        return _dataset(work / f"cache{next(counter)}", x, xv, y, yv, base)

    # Warm-up (TensorFlow start, first traces), not measured.
    _keras_fit(base.replace(epochs=1), x, y, xv)
    _engine([base.replace(epochs=1)], fresh_data())
    rows = {}
    timings = {
        "keras_fit_1": lambda: _keras_fit(base, x, y, xv),
        "engine_1": lambda: _engine([base], fresh_data()),
        "keras_fit_6_separate": lambda: [_keras_fit(c, x, y, xv) for c in configs],
        # The first group of six in a process traces its program (once per shape-set: later
        # groups of these widths reuse it); Keras traces anew for every fit.
        "engine_group_6_first_call": lambda: _engine(configs, fresh_data()),
        "engine_group_6": lambda: _engine(configs, fresh_data()),
    }
    for name, call in timings.items():
        start = time.perf_counter()
        call()
        seconds = time.perf_counter() - start
        heads = 6 if "6" in name else 1
        face_epochs = heads * args.faces * args.epochs
        rows[name] = {"seconds": seconds, "heads": heads,
                      "face_epochs_per_s": face_epochs / seconds,
                      "gflops": heads * args.epochs * flop_epoch / seconds / 1e9}
    numpy_gflops = _matmul_rate()
    for row in rows.values():
        row["share_of_numpy_matmul"] = row["gflops"] / numpy_gflops
    keras_6 = rows["keras_fit_6_separate"]["face_epochs_per_s"]
    ratio_group = rows["engine_group_6"]["face_epochs_per_s"] / keras_6
    ratio_cold = rows["engine_group_6_first_call"]["face_epochs_per_s"] / keras_6
    ratio_one = rows["engine_1"]["face_epochs_per_s"] / rows["keras_fit_1"]["face_epochs_per_s"]
    return {
        "setup": {"faces": args.faces, "val_faces": args.val, "epochs": args.epochs,
                  "features": DIM, "head_width": WIDTH, "batch_size": BATCH,
                  "learning_rates": RATES, "flop_per_head_epoch": flop_epoch,
                  "FER_SEARCH_HEAD_JIT": settings.head_jit(),
                  "ops_in_parallel": args.ops_in_parallel},
        "rows": rows,
        "numpy_matmul_gflops": numpy_gflops,
        "engine_1_vs_keras_fit": ratio_one,
        "group_6_vs_6_keras_fits": ratio_group,
        "group_6_first_call_vs_6_keras_fits": ratio_cold,
        "goal_group_6_at_least_10x": ratio_group >= 10,
    }


def _dataset(cache, x, xv, y, yv, config):
    """A Dataset whose train/val features are already in its cache (random stand-ins)."""
    import numpy as np

    from trainer.data.dataset import Dataset, Split
    from trainer.network.features import feature_path

    def split(name, labels):
        images = np.zeros((len(labels), 32, 32, 3), "uint8")  # never read: features are cached
        return Split(name, images, labels, np.array([f"{name}{i}" for i in range(len(labels))]))

    data = Dataset(train=split("train", y), val=split("val", yv), test=split("test", yv[:7]),
                   fingerprint="bench-head", image_size=32, cache_dir=cache)
    for name, array in (("train", x), ("val", xv)):
        path = feature_path(data, name, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return data


def _keras_fit(config, x, y, xv):
    """What a hand-written cached-feature trial does: build, compile, fit, score val."""
    import keras

    from trainer.heads.head_config import HeadConfig
    from trainer.heads.keras_pool import compile_head
    from trainer.network.model import build_head

    head = build_head(config, x.shape[1:])
    compile_head(head, HeadConfig.from_config(config))

    class Val(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            head.predict(xv, batch_size=256, verbose=0)

    head.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, shuffle=True,
             callbacks=[Val()], verbose=0)


def _engine(configs, data):
    from trainer import train, train_many

    if len(configs) == 1:
        return train(configs[0], data)
    out = train_many(configs, data)
    assert all(not isinstance(o, BaseException) for o in out), out
    return out


def _matmul_rate(n: int = 2048, repeats: int = 8) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def markdown(r: dict) -> str:
    s = r["setup"]
    lines = [
        f"# Head training on cached features ({s['faces']} faces x {s['epochs']} epochs, "
        f"{s['features']}-d, Dense {s['head_width']}, batch {s['batch_size']})",
        "",
        "| contender | heads | seconds | faces x epochs / s | GFLOP/s | share of numpy matmul |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['heads']} | {row['seconds']:.2f} | "
                     f"{row['face_epochs_per_s']:,.0f} | {row['gflops']:.1f} | "
                     f"{row['share_of_numpy_matmul']:.1%} |")
    lines += [
        "",
        f"- numpy float32 matmul (2048^3, best of 8): {r['numpy_matmul_gflops']:.1f} GFLOP/s",
        f"- one head, engine vs Keras fit: {r['engine_1_vs_keras_fit']:.1f}x faces x epochs / s",
        f"- group of 6 on the engine vs 6 separate Keras fits: "
        f"{r['group_6_vs_6_keras_fits']:.1f}x (goal >= 10x: "
        f"{'met' if r['goal_group_6_at_least_10x'] else 'NOT met'}); its first call in a "
        f"process (tracing the 6-head program): {r['group_6_first_call_vs_6_keras_fits']:.1f}x",
        "- engine rows include everything `train`/`train_many` do: per-epoch validation "
        "metrics, the epoch record and checkpoint writes (a checkpoint once the last is "
        "FER_SEARCH_CHECKPOINT_S old, 10 s by default)",
        "- TensorFlow's threads, for every contender: "
        + ("each op on one thread, as many ops as cores at once (`fer-search run`'s setting "
           "for a heads-only study)" if s.get("ops_in_parallel")
           else "TensorFlow's default (each op split over the cores)"),
    ]
    if "provenance" in r:
        lines += ["", benchlib.provenance_markdown(r["provenance"]),
                  f"- git rev-parse HEAD: {r['provenance']['git'].get('head', '?')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

