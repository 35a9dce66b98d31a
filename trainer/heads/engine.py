"""A compiled training program for k heads on cached features: a whole epoch per call.

Keras `fit` dispatches one Python step per batch and walks the data once per trial; on cached
features a head's arithmetic is so small that this overhead is most of the time (about 6 GFLOP/s
where the machine multiplies at 100+). Here one `tf.function` runs every step of an epoch in an
in-graph loop and updates k heads per batch, each its own width, learning rate (its own Adam),
dropout rate and dropout stream, so each batch is gathered once for k trials (once per seed:
heads of other seeds see their own batches, below).

Equality with a head trained alone: every head's ops are its own (no fused matmul across heads)
and depend only on its own state, the batch, its seed and the global step, so the same head
computes the same numbers whatever else shares the program (tests check group == alone exactly).

Programs are kept per feature size, classes and the heads' static settings
(`HeadConfig.program_key`) and reused: a new `tf.function` per training would leave a trace behind
every time. A head's runtime settings (`HeadConfig.runtime_fields`: learning rate, seed, dropout
rate) are fed to the program as per-head tensors; for a switched one (dropout) the program only
knows whether it is on, so heads of any dropout rates share a program and a pass.

Dropout: each head draws its own mask, `stateless_uniform(shape, [seed, step]) >= rate`, a
function of the head's own seed, step, width and rate only, so a head computes the same mask in
a group as alone. Two heads of one seed and width draw the same uniforms and keep units at their
own rates: common random numbers, as they see common batches.

Seeds: a head's seed also decides its faces' order each epoch (`epoch_order`), so heads of
several seeds (a study's repeats) see different batches. A program for one order (every head one
seed) gathers each batch once, as always; a program for several (`several_orders`, a switch like
dropout's: compiled in, so single-seed groups pay nothing) gathers each head's batch from its
seed's order, one gather for all k heads per step, and each head steps on its own. The numbers
are the same either way: a head's batch holds the same faces.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from trainer import settings
from trainer.heads.head_config import HeadConfig
from trainer.network.model import head_activation

_BETA_1 = 0.9
_BETA_2 = 0.999
_EPSILON = 1e-7  # Keras' Adam defaults
_PROGRAMS = 8
# Per key, the instances made so far: passes running at once (threads, `checked_out`) each
# need their own variables, which hold its heads between calls; all share the key's trace.
_programs: OrderedDict[tuple, list[_Program]] = OrderedDict()
_busy: set[int] = set()  # ids of instances a thread has checked out
_lock = threading.Lock()


@dataclass
class HeadState:
    """One head between epochs, as numpy: weights [w1, b1, w2, b2] and Adam's moments."""

    weights: list[np.ndarray]
    m: list[np.ndarray]
    v: list[np.ndarray]

    @classmethod
    def fresh(cls, weights: list[np.ndarray]) -> HeadState:
        weights = [np.asarray(w, dtype="float32") for w in weights]
        return cls(weights, [np.zeros_like(w) for w in weights],
                   [np.zeros_like(w) for w in weights])


class _Compiled:
    """The two compiled functions for k heads of fixed static settings (`HeadConfig.program_key`).
    The heads' variables are an argument, not captured: every variable set of this key (one
    per pass running at once, `checked_out`) uses one trace, and tracing a k-head epoch costs
    about a second of the GIL. The runtime settings arrive per call."""

    def __init__(self, features: int, classes: int, heads: tuple[HeadConfig, ...],
                 jit: str, several_orders: bool) -> None:
        # Static, like the shapes: a head without decay (or dropout) pays nothing for it.
        self.heads = [h.static() for h in heads]
        self.several_orders = several_orders  # heads of several seeds: a batch per head
        self.switches = [h.switches() for h in heads]  # switched settings: on or off, per head
        self.features, self.classes = features, classes
        self.epoch = tf.function(self._epoch, jit_compile=jit == "epoch")
        self.step = tf.function(self._step, jit_compile=True) if jit == "step" else self._step
        self.predict = tf.function(self._predict)
        self._traced = False
        self._trace_lock = threading.Lock()

    def trace(self, variables: list) -> None:
        """Traces both functions once, for any number of faces and any variable set of this
        key (the shapes left open), before their first call: a call then never traces again."""
        with self._trace_lock:
            if self._traced:
                return
            k = len(self.heads)
            self.epoch.get_concrete_function(
                variables,
                tf.TensorSpec([None, self.features], tf.float32),  # x (all training features)
                tf.TensorSpec([None], tf.int32),  # y
                tf.TensorSpec([None], tf.float32),  # per-face loss weight (class_weight)
                tf.TensorSpec([None, None], tf.int32),  # this epoch's orders, one per seed
                tf.TensorSpec([k], tf.int32),  # each head's order (its seed's row)
                tf.TensorSpec([], tf.int32),  # batch size
                tf.TensorSpec([], tf.int64),  # global step before this epoch
                # the heads' runtime settings, one [k] tensor each (learning rates, seeds,
                # dropout rates)
                {f.name: tf.TensorSpec([k], _dtype(f)) for f in HeadConfig.runtime_fields()},
            )
            self.predict.get_concrete_function(
                variables, tf.TensorSpec([None, self.features], tf.float32))
            self._traced = True

    def _forward(self, variables, h: int, x, t=None, head=None):
        """Head `h`'s logits on `x`, with dropout when it has a training step `t` (None when
        predicting). The training step differentiates this same function (a tape)."""
        w1, b1, w2, b2 = variables[h][0]
        # bias_add, not `+`: one op forward and one backward (a broadcast add's gradient is
        # five), and a step is mostly per-op overhead for a narrow head at a small batch size.
        hidden = head_activation(self.heads[h])(tf.nn.bias_add(tf.matmul(x, w1), b1))
        if t is not None and self.switches[h]["dropout"]:
            # Inverted dropout like Keras'; the mask depends on (seed, step, rate) only.
            noise = tf.random.stateless_uniform(tf.shape(hidden), tf.stack([head["seed"], t]))
            hidden = hidden * (tf.cast(noise >= head["drop_below"], tf.float32)
                               * head["keep_scale"])
        return tf.nn.bias_add(tf.matmul(hidden, w2), b2)

    def _per_head(self, runtime) -> list[dict]:
        """Each head's runtime settings as float32 / int64 scalars, computed once per epoch
        call: captured by the epoch's loop, they cost no op per step (a few small ops per head
        per step cost ~10% of a small head's epoch on a busy CPU).

        The dropout rate arrives as float64 and is rounded as a compiled-in Python constant
        was: its threshold and `1 - rate` to float32. Grappler rewrote the division by that
        constant into a product with its float32 reciprocal; so does this, to keep the numbers
        of a program compiled for one rate bit for bit."""
        rates = tf.unstack(tf.cast(runtime["learning_rate"], tf.float32), len(self.heads))
        seeds = tf.unstack(runtime["seed"], len(self.heads))
        drops = tf.unstack(runtime["dropout"], len(self.heads))
        return [{"learning_rate": rate, "seed": seed,
                 "drop_below": tf.cast(drop, tf.float32),
                 "keep_scale": tf.math.reciprocal(tf.cast(1.0 - drop, tf.float32))}
                for rate, seed, drop in zip(rates, seeds, drops, strict=True)]

    def _epoch(self, variables, x, y, weight, orders, head_order, batch, step0, runtime):
        # `orders` are padded to whole batches (static shapes, for XLA); padded rows carry
        # weight 0 and do not count in the batch size, so the last batch is the short one
        # Keras would take.
        n = tf.shape(orders)[1]
        steps = n // batch
        real = tf.cast(tf.shape(x)[0], tf.int32)
        k = len(self.heads)
        loss_sum = tf.zeros([k])
        hit_sum = tf.zeros([k])
        heads = self._per_head(runtime)
        for i in tf.range(steps):
            if self.several_orders:  # [k, batch]: each head's faces, from its seed's order
                index = tf.gather(orders[:, i * batch : (i + 1) * batch], head_order)
            else:
                index = tf.reshape(orders[0, i * batch : (i + 1) * batch], [-1])
            valid = tf.cast(index < real, tf.float32)
            index = tf.minimum(index, real - 1)
            xb, yb = tf.gather(x, index), tf.gather(y, index)
            wb = tf.gather(weight, index) * valid
            size = tf.reduce_sum(valid, axis=-1)
            losses, hits = self.step(variables, xb, yb, wb, size,
                                     step0 + tf.cast(i, tf.int64) + 1, heads)
            loss_sum += losses
            hit_sum += hits
        return loss_sum, hit_sum

    def _step(self, variables, xb, yb, wb, size, t, heads):
        """One batch for every head (`heads`: their runtime settings, `_per_head`): forward,
        backward, Adam. Returns the heads' summed loss and weighted hits on the batch.

        The gradients are the tape's (`_gradients`) of the forward pass: a setting that changes
        the forward pass or the loss needs no derivative written for it."""
        tf_t = tf.cast(t, tf.float32)
        beta1_power, beta2_power = tf.pow(_BETA_1, tf_t), tf.pow(_BETA_2, tf_t)
        k = len(self.heads)
        if self.several_orders:  # one batch per head: [k, batch, ...] split along k
            batches = list(zip(tf.unstack(xb, k), tf.unstack(yb, k), tf.unstack(wb, k),
                               tf.unstack(size, k), strict=True))
        else:
            batches = [(xb, yb, wb, size)] * k
        shared = {}  # one batch's one-hot labels and loss shares, computed once for its heads
        losses, hits = [], []
        for h, head in enumerate(self.heads):
            weights, m, v = variables[h]
            xb, yb, wb, size = batches[h]
            if id(yb) not in shared:  # (labels, each face's share of the loss)
                shared[id(yb)] = (tf.one_hot(yb, self.classes), wb / size)
            onehot, share = shared[id(yb)]
            grads, logits, per_face = self._gradients(variables, h, xb, onehot, share, t,
                                                      heads[h])
            decay = head.weight_decay
            if decay > 0:  # decoupled, before the Adam step, as Keras' AdamW does
                for var in weights:
                    var.assign_sub(var * (decay * heads[h]["learning_rate"]))
            for var, mv, vv, grad in zip(weights, m, v, grads, strict=True):
                tf.raw_ops.ResourceApplyAdam(
                    var=var.handle, m=mv.handle, v=vv.handle, beta1_power=beta1_power,
                    beta2_power=beta2_power, lr=heads[h]["learning_rate"], beta1=_BETA_1,
                    beta2=_BETA_2, epsilon=_EPSILON, grad=grad)
            # The batch's summed weighted loss (Keras' loss times the batch size).
            losses.append(tf.reduce_sum(per_face * wb))
            correct = tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), yb),
                              tf.float32)
            hits.append(tf.reduce_sum(correct * wb))
        return tf.stack(losses), tf.stack(hits)

    def _gradients(self, variables, h: int, xb, onehot, share, t, head):
        """Head `h`'s gradients [w1, b1, w2, b2] of Keras' loss on the batch (per-face
        categorical cross-entropy of `HeadConfig.targets`, weighted, summed over the batch and
        divided by its size), by a tape over `_forward`; also its logits and per-face losses.

        They are the gradients once written out by hand here (softmax minus targets, two
        matmuls and a ReluGrad) up to float round-off: the tape sums a bias's gradient with
        BiasAddGrad and the softmax's as `g - sum(g) * p`, in another order
        (benchmarks/head_backward.py measures both ways, and how far apart they end)."""
        weights = variables[h][0]
        targets = self.heads[h].targets(onehot)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(weights)
            logits = self._forward(variables, h, xb, t, head)
            # log_softmax of dense targets, not sparse_softmax_cross_entropy: the latter has no
            # deterministic GPU kernel.
            per_face = -tf.reduce_sum(targets * tf.nn.log_softmax(logits), axis=1)
            loss = tf.reduce_sum(per_face * share)
        return tape.gradient(loss, weights), logits, per_face

    def _predict(self, variables, x):
        return tf.stack([tf.nn.softmax(self._forward(variables, h, x))
                         for h in range(len(self.heads))])


class _Program:
    """Variables for the k heads of one `_Compiled` (`vars[h]`: [weights, m, v], each
    [w1, b1, w2, b2]), and its functions called on them."""

    def __init__(self, compiled: _Compiled) -> None:
        self.compiled = compiled
        self.heads = compiled.heads
        # The HeadStates the variables hold, kept alive: compared by identity, and an id of a
        # freed state could be reused by the next group's (programs serve group after group).
        self._holding: list[HeadState] = []
        # The width is left open (None): `load` assigns each head's own arrays, and the kernels
        # run on their actual sizes, so one program serves heads of any widths.
        shapes = [(compiled.features, None), (None,), (None, compiled.classes),
                  (compiled.classes,)]
        self.vars = [
            [[tf.Variable(tf.zeros([d or 0 for d in s]), shape=tf.TensorShape(s),
                          trainable=False) for s in shapes] for _ in range(3)]  # [weights, m, v]
            for _ in self.heads
        ]

    def epoch(self, *tensors):
        self.compiled.trace(self.vars)  # the first call of the key only (not under `_lock`)
        return self.compiled.epoch(self.vars, *tensors)

    def predict(self, x):
        self.compiled.trace(self.vars)
        return self.compiled.predict(self.vars, x)

    def load(self, states: list[HeadState]) -> None:
        if len(self._holding) == len(states) and all(
                a is b for a, b in zip(self._holding, states, strict=True)):
            return  # the variables already hold these states (dumped after the last epoch)
        self._holding = []
        for head_vars, state in zip(self.vars, states, strict=True):
            for group, arrays in zip(head_vars, (state.weights, state.m, state.v), strict=True):
                for var, array in zip(group, arrays, strict=True):
                    var.assign(array)

    def dump(self) -> list[HeadState]:
        states = [HeadState(*[[v.numpy() for v in group] for group in head])
                  for head in self.vars]
        self._holding = list(states)
        return states


def program(features: int, classes: int, heads: list[HeadConfig],
            several_orders: bool = False) -> _Program:
    """The compiled program for these heads' static settings, reused when one exists (its
    first instance: for one caller at a time; passes that run at once use `checked_out`)."""
    with _lock:
        return _instances(features, classes, heads, several_orders)[0]


@contextmanager
def checked_out(features: int, classes: int, heads: list[HeadConfig],
                several_orders: bool = False) -> Iterator[_Program]:
    """A program for these heads that no other thread holds until the block ends: passes of
    one group with different batch sizes run at once (trainer.heads.group_train), and two of
    them may need programs of one key. Instances are kept and reused like `program`'s."""
    with _lock:
        instances = _instances(features, classes, heads, several_orders)
        found = next((p for p in instances if id(p) not in _busy), None)
        if found is None:  # variables only: the key's trace serves them
            found = _Program(instances[0].compiled)
            instances.append(found)
        _busy.add(id(found))
    try:
        yield found
    finally:
        with _lock:
            _busy.discard(id(found))


def _instances(features: int, classes: int, heads: list[HeadConfig],
               several_orders: bool) -> list[_Program]:
    # XLA: FER_SEARCH_HEAD_JIT=step (each batch's step compiled) or =epoch (the whole epoch)
    # were 3-100x slower on CPU here; worth measuring on GPUs. Default 0: plain TensorFlow graph.
    jit = settings.head_jit()
    key = (features, classes, tuple(h.program_key() for h in heads), jit, several_orders)
    found = _programs.get(key)
    if found is None:
        found = _programs[key] = [_Program(_Compiled(features, classes, tuple(heads), jit,
                                                     several_orders))]
        # The oldest keys go, unless a thread holds one of their instances.
        for old in list(_programs)[: max(0, len(_programs) - _PROGRAMS)]:
            if not any(id(p) in _busy for p in _programs[old]):
                del _programs[old]
    _programs.move_to_end(key)
    return found


def _dtype(setting) -> tf.DType:
    # float64: a program casts each to float32 itself, after any arithmetic a constant of its
    # value had in Python (float64), so a fed value computes what a compiled-in one did.
    return tf.float64 if setting.type in ("float", float) else tf.int64


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The faces' order in `epoch` (1-based): a function of (seed, epoch) alone, so a head
    trained alone, in a group, or resumed after a crash sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n).astype("int32")


class Tensors:
    """A training's inputs as tensors, converted once and reused while the arrays stay alive."""

    _memo: OrderedDict[tuple, tf.Tensor] = OrderedDict()

    @classmethod
    def of(cls, array: np.ndarray, dtype=tf.float32) -> tf.Tensor:
        key = (id(array), array.shape, str(dtype))
        found = cls._memo.get(key)
        if found is None or found[0] is not array:
            found = (array, tf.convert_to_tensor(np.asarray(array), dtype=dtype))
            cls._memo[key] = found
            while len(cls._memo) > 6:
                cls._memo.popitem(last=False)
        return found[1]


def run_epoch(
    prog: _Program, heads: list[HeadConfig], x: tf.Tensor, y: tf.Tensor, weight: tf.Tensor,
    orders: dict[int, np.ndarray], batch_size: int, step0: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch for the loaded heads, each on the faces' order of its seed (`orders`: seed ->
    `epoch_order`; one seed unless the program has `several_orders`); returns per-head summed
    (weighted) loss and hits."""
    seeds = list(orders)
    n = len(orders[seeds[0]])
    pad = -n % batch_size
    rows = np.stack([np.concatenate([orders[s], np.full(pad, n, "int32")]) for s in seeds])
    loss, hits = prog.epoch(
        x, y, weight, tf.constant(rows), tf.constant([seeds.index(h.seed) for h in heads],
                                                     tf.int32),
        tf.constant(batch_size, tf.int32), tf.constant(step0, tf.int64),
        {f.name: tf.constant([getattr(h, f.name) for h in heads], _dtype(f))
         for f in HeadConfig.runtime_fields()},
    )
    return loss.numpy(), hits.numpy()


def predict(prog: _Program, x: tf.Tensor) -> np.ndarray:
    """Probabilities of every loaded head: (k, n, classes)."""
    return prog.predict(x).numpy()


def head_proba(spec: HeadConfig, weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """One trained head's probabilities on features `x` (n, features): `predict` on a program
    of that head alone, the forward that scored its validation split after every epoch of its
    training (a head computes the same numbers alone as in a group), so scores computed here
    are the ones a training recorded. `weights`: [w1, b1, w2, b2], as `HeadState` holds them."""
    prog = program(x.shape[1], np.shape(weights[3])[0], [spec])
    prog.load([HeadState.fresh(weights)])
    return predict(prog, tf.convert_to_tensor(np.asarray(x), dtype=tf.float32))[0]


def clear_programs() -> None:
    with _lock:
        _programs.clear()
