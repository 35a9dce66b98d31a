"""The machine's floor for a study: the FLOPs of the work it cannot skip, at numpy's matmul rate.

A frozen-VGG16 grid must (1) run VGG16 once over every face and (2) train each distinct head
(the grid's points that differ only in `epochs` are one head, trained to the largest count),
forward and backward over the train split every epoch, and score the validation split after
each epoch. Its floor is those FLOPs divided by the rate this machine multiplies float32 matrices
at (numpy's `matmul`, FLOPs = 2*m*n*k), measured in the same run as the study. A study's wall
time over its floor says how much of the run is anything else: start-up, imports, logging, the
report, and kernels slower than a large matmul.

FLOPs are counted from the Keras models' layer shapes (Conv2D and Dense; pooling, bias, ReLU,
softmax and the optimizer's update are left out: a few percent at most here):

- Conv2D: 2 * H_out * W_out * C_in * C_out * k_h * k_w per face;
- Dense: 2 * n_in * n_out per face forward; training adds the weight gradient (the same again)
  and, for every Dense layer but the first, the gradient of its input (the same again): the
  first layer's input is a cached feature, whose gradient nobody needs.

Nothing here imports TensorFlow at import time; `model_flops` reads a model it is given.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from typing import Any

MATMUL_N = 2048


def conv2d_flops(h_out: int, w_out: int, c_in: int, c_out: int, k_h: int, k_w: int) -> int:
    """One face through one Conv2D layer: a multiply and an add per kernel weight per output."""
    return 2 * h_out * w_out * c_in * c_out * k_h * k_w


def dense_flops(n_in: int, n_out: int) -> int:
    """One face through one Dense layer, forward."""
    return 2 * n_in * n_out


def _layers(model) -> Iterable[Any]:
    """The model's layers, nested models flattened, in order."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        else:
            yield layer


def layer_shapes(model) -> list[tuple[str, tuple[int, ...]]]:
    """("conv", (h_out, w_out, c_in, c_out, k_h, k_w)) or ("dense", (n_in, n_out)) for each
    Conv2D and Dense layer of a Keras model (subclasses included), in order."""
    import keras

    shapes: list[tuple[str, tuple[int, ...]]] = []
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            k_h, k_w, c_in, c_out = layer.kernel.shape
            shapes.append(("conv", (int(h), int(w), int(c_in), int(c_out), int(k_h), int(k_w))))
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            shapes.append(("dense", (int(n_in), int(n_out))))
    return shapes


def forward_flops(shapes: list[tuple[str, tuple[int, ...]]]) -> int:
    """One face forward through the layers `layer_shapes` listed."""
    return sum(conv2d_flops(*s) if kind == "conv" else dense_flops(*s) for kind, s in shapes)


def model_flops(model) -> int:
    """One face forward through a Keras model's Conv2D and Dense layers."""
    return forward_flops(layer_shapes(model))


def dense_training_flops(shapes: list[tuple[str, tuple[int, ...]]]) -> int:
    """One face through a training step of a stack of Dense layers on frozen inputs: forward,
    the weight gradients, and the input gradients of all layers but the first."""
    dense = [s for kind, s in shapes if kind == "dense"]
    return sum(dense_flops(*s) * (3 if i else 2) for i, s in enumerate(dense))


def head_epoch_flops(shapes: list[tuple[str, tuple[int, ...]]], n_train: int, n_val: int) -> int:
    """One head, one epoch: a training step over every train face, then the validation split
    scored (forward)."""
    return n_train * dense_training_flops(shapes) + n_val * forward_flops(shapes)


def matmul_seconds(n: int = MATMUL_N, repeats: int = 5) -> list[float]:
    """Seconds of each of `repeats` float32 (n x n) @ (n x n) numpy matmuls, after a warm-up."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    np.matmul(a, b)  # warm-up: thread pool start, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b)
        times.append(time.perf_counter() - start)
    return times


def matmul_rate(times: list[float], n: int = MATMUL_N) -> dict[str, float]:
    """GFLOP/s of the matmuls `matmul_seconds` timed: best and median."""
    flop = 2 * n**3
    return {"gflops_best": flop / min(times) / 1e9,
            "gflops_median": flop / statistics.median(times) / 1e9, "runs": len(times)}


def network_shapes(image_size: int, head_widths: Iterable[int], pooling: str = "avg"
                   ) -> dict[str, Any]:
    """The layer shapes of the trainer's frozen VGG16 at `image_size` and of its head at each
    width, from the models the trainer builds (imports TensorFlow: call it in a process of its
    own). Returns {"base": shapes, "heads": {width: shapes}}."""
    from trainer.config import TrainConfig
    from trainer.network.model import build_head, build_network

    base = TrainConfig(weights="none", image_size=image_size, pooling=pooling,
                       trainable_blocks=0)
    network = build_network(base)
    feature_shape = tuple(int(d) for d in network.frozen.output.shape[1:])
    heads = {int(w): layer_shapes(build_head(base.replace(head_width=int(w)), feature_shape))
             for w in head_widths}
    return {"base": layer_shapes(network.frozen), "heads": heads}
