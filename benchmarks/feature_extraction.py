"""How close the trainer's VGG16 feature extraction runs to this machine's matrix-multiply speed,
and what a cached head training costs next to extracting its features once.

    python benchmarks/feature_extraction.py       # ~3 min on 2 cores; writes
                                                  # benchmarks/results/feature_extraction.{json,md}

Measured in one run:

1. numpy's float32 matmul rate (2048 x 2048 @ 2048 x 2048, best of several), measured in turns
   with the VGG16 repeats (the machine is shared: both should see the same load) and once more in
   a separate process; the best counts.
   OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set on this machine, pin OpenBLAS to an older kernel
   and slow numpy; their values are recorded, and when set the rate is measured a second time with
   both unset in that subprocess alone (see /work/.library/env/README.md). Tests and CI never
   change them.
2. VGG16's frozen part (`trainer.network.model.build_network(config).frozen`, the model the feature
   cache runs) at 64 and 96 px: faces/s with `predict_on_batch` on batches of 64 (the trainer's
   `EXTRACT_BATCH`), after a warm-up, best and median of several repeats. Achieved GFLOP/s counts
   VGG16's convolutions only, 2*H*W*Cin*Cout*9 per conv layer at that input size (the pooling,
   bias and ReLU work is negligible); the ratio to numpy's rate is the efficiency.
3. `trainer.train` on 1000 training faces (+100 validation) with a frozen random base: the first
   call extracts and caches the features (its `feature_seconds`), later calls (other seeds, so that
   no epoch record answers them) train the head alone on the cached features, 8 epochs.

With `--precisions float32 mixed_bfloat16` (any of `trainer.config.PRECISIONS`), step 2 measures
each precision in turn, side by side, and a fourth step measures what the precision changes:
the same learnable faces (a class-coloured square on noise) are trained on once per precision
(`trainer.train`, same seed), and the cached features of each are compared with float32's
(relative error) along with the head's validation accuracy and loss. The results then go to
`feature_extraction-precision.{json,md}`:

    python benchmarks/feature_extraction.py --precisions float32 mixed_bfloat16 --sizes 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (a sibling module; benchmarks/ is not a package)
import floor  # noqa: E402  (the FLOP counts grid_wall_time's floor uses too)

MATMUL_N = 2048
BATCH = 64


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.matmul:
        print(json.dumps(_matmul(args.matmul_repeats)))
        return 0
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the trainer's default, said out loud
    prov = benchlib.provenance()
    started = time.perf_counter()
    from trainer.runtime import load_tensorflow

    load_tensorflow()  # TensorFlow's native start-up chatter off the output
    vgg, numpy_in_process = _interleaved(args.sizes, args.batches, args.repeats,
                                         args.matmul_repeats, args.precisions)
    numpy_sub = _numpy_rates(args.matmul_repeats)  # also with the OpenBLAS pins unset, if set
    head = _head_vs_extraction(args.head_faces, args.head_epochs, args.head_image_size,
                               args.head_repeats)
    precision = None
    if len(args.precisions) > 1:
        precision = _precision_accuracy(args.precisions, args.head_faces, args.head_epochs,
                                        args.head_image_size)
    prov["load_average_at_end"] = benchlib.load_average()
    numpy_rate = {"as_set": max(numpy_in_process["gflops_best"],
                                numpy_sub["as_set"]["gflops_best"])}
    if "openblas_unset" in numpy_sub:
        numpy_rate["openblas_unset"] = numpy_sub["openblas_unset"]["gflops_best"]
    for row in vgg:
        row["ratio_to_numpy"] = row["gflops_best"] / numpy_rate["as_set"]
        if "openblas_unset" in numpy_rate:
            row["ratio_to_numpy_openblas_unset"] = row["gflops_best"] / numpy_rate["openblas_unset"]
    report = {
        "benchmark": "feature_extraction",
        **prov,
        "numpy_matmul": {"size": MATMUL_N, "interleaved_in_process": numpy_in_process,
                         "subprocess": numpy_sub, "gflops": numpy_rate},
        "vgg16_frozen": vgg,
        "goal_ratio_at_least_0.85": all(r["ratio_to_numpy"] >= 0.85 for r in vgg
                                        if r["precision"] == "float32"),
        "head_vs_extraction": head,
        "precision": precision,
        "benchmark_seconds": time.perf_counter() - started,
    }
    out = Path(args.out) if args.out else benchlib.RESULTS_DIR
    name = "feature_extraction" if precision is None else "feature_extraction-precision"
    paths = benchlib.write_results(out, name, report, _markdown(report))
    print(_markdown(report))
    print(f"[feature_extraction] wrote {', '.join(map(str, paths))}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from trainer.config import PRECISIONS

    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    p.add_argument("--precisions", nargs="+", default=["float32"], choices=PRECISIONS,
                   help="TrainConfig precisions measured side by side (the first is the baseline)")
    p.add_argument("--batches", type=int, default=6, help="batches of 64 per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-repeats", type=int, default=10)
    p.add_argument("--head-faces", type=int, default=1000)
    p.add_argument("--head-epochs", type=int, default=8)
    p.add_argument("--head-image-size", type=int, default=64)
    p.add_argument("--head-repeats", type=int, default=3)
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    p.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    return p


# ------------------------------------------------------------------------------------ numpy


def _matmul(repeats: int) -> dict[str, Any]:
    """In its own process: numpy's float32 matmul GFLOP/s and the BLAS kernel it ran."""
    import numpy as np
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    flop = 2 * MATMUL_N**3
    blas = [
        {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        for i in threadpool_info() if i.get("user_api") == "blas"
        and "numpy" in i.get("filepath", "")
    ]
    return {
        "gflops_best": flop / min(times) / 1e9,
        "gflops_median": flop / statistics.median(times) / 1e9,
        "blas": blas,
        "env": benchlib.speed_env(),
    }


def _numpy_rates(repeats: int) -> dict[str, dict[str, Any]]:
    """The rate with the environment as set, and with the OpenBLAS pins removed if there are any."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--matmul",
           "--matmul-repeats", str(repeats)]
    envs = {"as_set": dict(os.environ)}
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        unset = dict(os.environ)
        unset.pop("OPENBLAS_CORETYPE", None)
        unset.pop("OPENBLAS_L2_SIZE", None)
        envs["openblas_unset"] = unset
    return {
        name: json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                        text=True).stdout)
        for name, env in envs.items()
    }


# ------------------------------------------------------------------------------------ VGG16


def conv_flops(model) -> int:
    """FLOPs of one face through the model's Conv2D layers: 2*H*W*Cin*Cout*kh*kw each
    (`floor.conv2d_flops`, read off the model by `floor.layer_shapes`)."""
    return floor.forward_flops([(k, s) for k, s in floor.layer_shapes(model) if k == "conv"])


def _interleaved(
    sizes: list[int], batches: int, repeats: int, matmul_repeats: int,
    precisions: list[str] = ("float32",),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Faces/s of the trainer's frozen VGG16 at each size and precision (batches of 64, after a
    warm-up) and numpy's matmul rate, measured in turns so that all see the same load on a
    shared machine."""
    import numpy as np

    from trainer.config import TrainConfig
    from trainer.network.features import EXTRACT_BATCH
    from trainer.network.model import build_network

    rng = np.random.default_rng(0)
    models, inputs = {}, {}
    keys = [(size, precision) for size in sizes for precision in precisions]
    for size in sizes:
        inputs[size] = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
    for key in keys:
        size, precision = key
        models[key] = build_network(
            TrainConfig(image_size=size, weights="none", precision=precision)
        ).frozen
        for _ in range(2):  # graph tracing and oneDNN primitive creation happen here
            models[key].predict_on_batch(inputs[size])
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    b = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    a @ b  # warm-up: BLAS thread pool start, page faults
    times: dict[tuple[int, str], list[float]] = {key: [] for key in keys}
    matmul: list[float] = []
    for _ in range(repeats):
        for _ in range(max(1, matmul_repeats // repeats)):
            start = time.perf_counter()
            a @ b
            matmul.append(time.perf_counter() - start)
        for key in keys:
            start = time.perf_counter()
            for _ in range(batches):
                models[key].predict_on_batch(inputs[key[0]])
            times[key].append(time.perf_counter() - start)
    rows = []
    for key in keys:
        size, precision = key
        faces = batches * BATCH
        flops = conv_flops(models[key])
        best, median = faces / min(times[key]), faces / statistics.median(times[key])
        baseline = faces / min(times[(size, precisions[0])])
        rows.append({
            "image_size": size,
            "precision": precision,
            "speed_over_baseline_best": best / baseline,
            "batch": BATCH,
            "trainer_extract_batch": EXTRACT_BATCH,
            "faces_per_repeat": faces,
            "repeats": repeats,
            "faces_per_s_best": best,
            "faces_per_s_median": median,
            "conv_gflop_per_face": flops / 1e9,
            "gflops_best": best * flops / 1e9,
            "gflops_median": median * flops / 1e9,
        })
    flop = 2 * MATMUL_N**3
    numpy_rate = {"gflops_best": flop / min(matmul) / 1e9,
                  "gflops_median": flop / statistics.median(matmul) / 1e9, "runs": len(matmul)}
    return rows, numpy_rate


# --------------------------------------------------------------- head training vs extraction


def _head_vs_extraction(faces: int, epochs: int, size: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    import trainer
    from trainer.data.dataset import Dataset, Split

    rng = np.random.default_rng(0)
    n_val = max(faces // 10, 7)

    def split(name: str, n: int) -> Split:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = np.arange(n) % 7  # every class present; speed does not depend on the labels
        return Split(name, images, labels, np.array([f"{name}{i}.jpg" for i in range(n)]))

    with tempfile.TemporaryDirectory(prefix="fer-bench-") as cache:
        data = Dataset(
            train=split("train", faces), val=split("val", n_val), test=split("test", 7),
            fingerprint=f"bench-{os.getpid()}-{time.time_ns()}", image_size=size,
            cache_dir=Path(cache),
        )
        base = trainer.TrainConfig(image_size=size, weights="none", epochs=epochs,
                                   batch_size=32, head_width=256, learning_rate=1e-3)
        first = trainer.train(base, data)  # extracts and caches train + val features
        cached = []
        for seed in range(1, repeats + 1):  # another seed: a new epoch-record group, so it trains
            result = trainer.train(base.replace(seed=seed), data)
            cached.append({
                "seconds": result.seconds,
                "feature_seconds": result.feature_seconds,
                "epochs_trained": getattr(result, "epochs_trained", result.epochs_run),
                "used_feature_cache": result.used_feature_cache,
            })
    train_s = statistics.median(c["seconds"] for c in cached)
    return {
        "train_faces": faces,
        "val_faces": n_val,
        "image_size": size,
        "epochs": epochs,
        "batch_size": 32,
        "head_width": 256,
        "extraction_seconds": first.feature_seconds,
        "extraction_faces_per_s": (faces + n_val) / first.feature_seconds,
        "first_call_seconds": first.seconds,
        "cached_training_seconds_median": train_s,
        "cached_trainings": cached,
        "extraction_over_cached_training": first.feature_seconds / train_s,
    }


# ------------------------------------------------------------------------------- precision


def _precision_accuracy(
    precisions: list[str], faces: int, epochs: int, size: int
) -> dict[str, Any]:
    """One training per precision on the same learnable faces: the features' error against the
    first precision's, extraction time, and the head's validation accuracy and loss."""
    import numpy as np

    import trainer
    from trainer.data.dataset import Dataset, Split
    from trainer.network.features import cached_features

    rng = np.random.default_rng(1)
    n_val = max(faces // 4, 14)

    def split(name: str, n: int) -> Split:
        # A class-coloured square on noise: learnable from the frozen random base's features.
        labels = rng.permutation(np.arange(n) % 7)
        images = rng.integers(0, 120, (n, size, size, 3)).astype(np.uint8)
        lo, hi = size // 4, 3 * size // 4
        images[:, lo:hi, lo:hi, :] = (60 + labels * 25)[:, None, None, None].astype(np.uint8)
        return Split(name, images, labels, np.array([f"{name}{i}.jpg" for i in range(n)]))

    rows = []
    with tempfile.TemporaryDirectory(prefix="fer-bench-") as cache:
        data = Dataset(
            train=split("train", faces), val=split("val", n_val), test=split("test", 7),
            fingerprint=f"bench-precision-{os.getpid()}-{time.time_ns()}", image_size=size,
            cache_dir=Path(cache),
        )
        base = trainer.TrainConfig(image_size=size, weights="none", epochs=epochs,
                                   batch_size=32, head_width=256, learning_rate=1e-3)
        features = {}
        for precision in precisions:
            config = base.replace(precision=precision)
            result = trainer.train(config, data)
            features[precision] = np.array(cached_features(data, "train", config))
            rows.append({
                "precision": precision,
                "extraction_seconds": result.feature_seconds,
                "extraction_faces_per_s": (faces + n_val) / result.feature_seconds,
                "val_accuracy": result.metrics["val_accuracy"],
                "val_loss": result.metrics["val_loss"],
            })
    reference = features[precisions[0]]
    scale = float(np.abs(reference).max())
    for row in rows:
        diff = features[row["precision"]] - reference
        row["feature_relative_error_norm"] = float(
            np.linalg.norm(diff) / np.linalg.norm(reference))
        row["feature_max_abs_error_over_max"] = float(np.abs(diff).max() / scale)
        row["val_accuracy_minus_baseline"] = row["val_accuracy"] - rows[0]["val_accuracy"]
    return {"train_faces": faces, "val_faces": n_val, "image_size": size, "epochs": epochs,
            "baseline": precisions[0], "rows": rows}


# ---------------------------------------------------------------------------------- report


def _markdown(r: dict[str, Any]) -> str:
    np_rates = r["numpy_matmul"]["gflops"]
    unset = "openblas_unset" in np_rates
    several = len({v["precision"] for v in r["vgg16_frozen"]}) > 1
    rows = []
    for v in r["vgg16_frozen"]:
        rows.append([
            f"{v['image_size']} px",
            *([v["precision"], f"{v['speed_over_baseline_best']:.2f}x"] if several else []),
            f"{v['faces_per_s_best']:.0f}",
            f"{v['faces_per_s_median']:.0f}", f"{v['conv_gflop_per_face']:.2f}",
            f"{v['gflops_best']:.0f}", f"{np_rates['as_set']:.0f}", f"{v['ratio_to_numpy']:.2f}",
            *([f"{v['ratio_to_numpy_openblas_unset']:.2f}"] if unset else []),
        ])
    headers = ["VGG16 frozen part", *(["precision", "speed vs first"] if several else []),
               "faces/s (best)", "faces/s (median)", "conv GFLOP/face",
               "achieved GFLOP/s", "numpy matmul GFLOP/s", "ratio"]
    if unset:
        headers.append("ratio (OpenBLAS pins unset)")
    h = r["head_vs_extraction"]
    blas = r["numpy_matmul"]["subprocess"]["as_set"]["blas"]
    kernel = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in blas)
    head_rows = [
        ["extracting the features once (train + val faces)",
         f"{h['extraction_seconds']:.2f} s ({h['extraction_faces_per_s']:.0f} faces/s)"],
        ["one head training on the cached features (median)",
         f"{h['cached_training_seconds_median']:.2f} s"],
        ["extraction / cached training", f"{h['extraction_over_cached_training']:.1f}x"],
        ["first call (extraction + its training, cold process)",
         f"{h['first_call_seconds']:.2f} s"],
    ]
    return (
        "# Feature extraction vs this machine's matmul rate\n\n"
        + benchlib.table(headers, rows)
        + f"\n\nBatches of {r['vgg16_frozen'][0]['batch']} faces through "
        "`trainer.network.model.build_network(config).frozen.predict_on_batch` (random base, "
        "random uint8 pixels; speed does not depend on either), after a warm-up. GFLOP counts "
        "VGG16's 13 convolutions (2*H*W*Cin*Cout*9 each). numpy: float32 "
        f"{MATMUL_N}x{MATMUL_N} matmul, best of runs interleaved with the VGG16 repeats and of a "
        f"separate process ({kernel}); "
        f"OPENBLAS_CORETYPE={r['env'].get('OPENBLAS_CORETYPE')!s}, "
        f"OPENBLAS_L2_SIZE={r['env'].get('OPENBLAS_L2_SIZE')!s}"
        + (f"; with both unset: {np_rates['openblas_unset']:.0f} GFLOP/s" if unset else "")
        + f".\n\nGoal ratio >= 0.85: {'met' if r['goal_ratio_at_least_0.85'] else 'NOT met'}.\n\n"
        f"## One cached head training vs extracting its features once\n\n"
        f"{h['train_faces']} training + {h['val_faces']} validation faces at {h['image_size']} px; "
        f"head: Dense({h['head_width']}) -> 7, batch {h['batch_size']}, {h['epochs']} epochs, "
        "validation scored after each epoch (`trainer.train`).\n\n"
        + benchlib.table(["what", "time"], head_rows)
        + _precision_markdown(r.get("precision"))
        + "\n\n" + benchlib.provenance_markdown(r)
        + f"- benchmark total: {r['benchmark_seconds']:.0f} s\n"
    )


def _precision_markdown(p: dict[str, Any] | None) -> str:
    if p is None:
        return ""
    rows = [
        [row["precision"], f"{row['extraction_faces_per_s']:.0f}",
         f"{row['feature_relative_error_norm']:.2e}",
         f"{row['feature_max_abs_error_over_max']:.2e}",
         f"{row['val_accuracy']:.3f}", f"{row['val_accuracy_minus_baseline']:+.3f}",
         f"{row['val_loss']:.4f}"]
        for row in p["rows"]
    ]
    return (
        f"\n\n## What the precision changes\n\n"
        f"{p['train_faces']} training + {p['val_faces']} validation faces at {p['image_size']} px "
        "(a class-coloured square on noise), one `trainer.train` per precision, same seed, "
        f"{p['epochs']} epochs. Feature errors are against {p['baseline']}'s cached features: "
        "||f - f0|| / ||f0||, and the largest element-wise difference over the largest "
        "feature. GFLOP/s and the numpy ratio above count a mixed precision's bf16/fp16 "
        "arithmetic as if it were float32's.\n\n"
        + benchlib.table(["precision", "extraction faces/s", "feature error (norm)",
                          "feature error (max / max)", "val accuracy", "vs first",
                          "val loss"], rows)
    )


if __name__ == "__main__":
    sys.exit(main())
