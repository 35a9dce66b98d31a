"""One pass: the heads of one batch size, trained together epoch by epoch, and passes of
different batch sizes run side by side (trainer.heads.group_train makes them).

Heads of one batch size train in one compiled program per epoch (trainer.heads.engine): each
batch gathered once per seed (a head's seed decides its faces' order), k heads
updated. A pass whose program
raises is re-run head by head for that epoch, so the head that raises fails alone (`HeadFailed`)
and the others' epoch counts as theirs (`Pass.next_epoch`). Passes of different batch sizes run
at once, each on its own thread, and hand each finished epoch to the caller's thread
(`side_by_side`).

A pass reads its tracks (`group_train._Track`: `spec`, `config`, `state`, `epoch`, `target`,
`done`) and its run (`group_train._GroupRun`: the cached features, labels and class weights); it
never changes them: whoever receives a finished epoch (`EpochDone`) stores it.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from trainer.errors import HeadFailed
from trainer.heads import engine as engine


@dataclass
class EpochDone:
    """One epoch of a pass's tracks, computed: per track its loss and hits sums, validation
    probabilities and state after the epoch; and the tracks whose head raised this epoch, each
    with its `HeadFailed`."""

    epoch: int
    tracks: list
    loss: np.ndarray
    hits: np.ndarray
    probs: np.ndarray
    states: list[engine.HeadState]
    weight_sum: float
    batch_size: int
    failed: list[tuple] = field(default_factory=list)


class Pass:
    """The tracks of one batch size: one pass over them per epoch trains every track due for
    that epoch, each on its seed's batches (each head with its own ops: trainer.heads.engine)."""

    def __init__(self, run, batch_size: int, tracks: list) -> None:
        self.run = run
        self.batch_size = batch_size
        self.tracks = tracks
        self.steps = math.ceil(run.n / batch_size)
        # Looked up here, on the caller's thread: the memos are not for threads.
        self.weight, self.weight_sum = run.weights_for(tracks[0].config)
        self.epoch = min(t.epoch for t in tracks)  # the last epoch computed
        self.last = max(t.target for t in tracks)
        self.one_at_a_time = False  # set when the pass failed together but no head alone

    def next_epoch(self) -> EpochDone | None:
        """Trains the next epoch any track is due for; None when none is left. Reads the tracks
        only: whoever receives the epoch (`group_train._GroupRun._finish`) updates them before
        the next call.

        A pass whose program raises (one head out of memory at its width, an error in one
        head's arithmetic) is run again head by head for that epoch, from the states before it:
        a head that raises alone fails alone (`EpochDone.failed`, a `HeadFailed`), and the others'
        epoch counts as theirs (a head's numbers do not depend on its pass-mates). Once the
        culprit is found the rest train together again; when every head passed alone (the
        program failed only together, e.g. out of memory for all of them at once), the pass
        trains them one at a time from then on."""
        while self.epoch < self.last:
            self.epoch += 1
            active = [t for t in self.tracks if not t.done and t.epoch == self.epoch - 1]
            if not active:
                continue
            # One order of heads for every group with the same static settings (widths, ...):
            # they share one compiled program instead of tracing another (~1 s) for a
            # reordering. A head's numbers do not depend on its place in the program.
            active.sort(key=lambda t: t.spec.program_key())
            if self.one_at_a_time:
                return self._head_by_head(active)
            try:
                return self._train(active)
            except Exception as error:  # noqa: BLE001  (found and failed per head below)
                if len(active) == 1:
                    return self._failed([self._head_failed(active[0], error)])
            epoch = self._head_by_head(active)
            self.one_at_a_time = not epoch.failed
            return epoch
        return None

    def _train(self, active: list) -> EpochDone:
        run = self.run
        specs = [t.spec for t in active]
        # Each seed's order of the faces this epoch (dicts keep the heads' first-seen order).
        orders = {s.seed: engine.epoch_order(s.seed, self.epoch, run.n) for s in specs}
        with engine.checked_out(run.x_shape[0], len(run.data.class_names), specs,
                                several_orders=len(orders) > 1) as prog:
            prog.load([t.state for t in active])
            loss, hits = engine.run_epoch(prog, specs, run.x, run.y, self.weight, orders,
                                          self.batch_size, (self.epoch - 1) * self.steps)
            probs = engine.predict(prog, run.xv)
            states = prog.dump()
        return EpochDone(self.epoch, active, loss, hits, probs, states, self.weight_sum,
                         self.batch_size)

    def _head_by_head(self, active: list) -> EpochDone:
        """This epoch, each track in a program of its own: the ones that raise are failed."""
        done: list[EpochDone] = []
        failed: list[tuple] = []
        for track in active:
            try:
                done.append(self._train([track]))
            except Exception as error:  # noqa: BLE001  (this head's own failure)
                failed.append(self._head_failed(track, error))
        if not done:
            return self._failed(failed)
        return EpochDone(self.epoch, [e.tracks[0] for e in done],
                         np.concatenate([e.loss for e in done]),
                         np.concatenate([e.hits for e in done]),
                         np.concatenate([e.probs for e in done]),
                         [e.states[0] for e in done], self.weight_sum, self.batch_size, failed)

    def _failed(self, failed: list[tuple]) -> EpochDone:
        """An epoch in which every head due raised: no track trained, each listed fails."""
        empty = np.zeros((0,), "float32")
        return EpochDone(self.epoch, [], empty, empty, empty, [], self.weight_sum,
                         self.batch_size, failed)

    def _head_failed(self, track, error: BaseException) -> tuple:
        return track, HeadFailed(error, batch_size=self.batch_size, epoch=self.epoch,
                                 head_width=track.config.head_width)


def side_by_side(passes: list[Pass], finish: Callable[[EpochDone], None]) -> None:
    """Runs the passes at once, each on its own thread: TensorFlow releases the GIL while it
    computes, so passes of small ops keep every core busy (one pass's ops mostly wait on each
    other). Each finished epoch is handed to `finish` on this thread, one at a time, and its
    pass waits for that before its next epoch: the callbacks (pruning, the epoch record, the
    caller's logging) run where they would alone and decide what the pass trains next. A head's
    numbers are its own ops', whichever pass runs beside it."""
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    turns = [threading.Semaphore(0) for _ in passes]

    def work(i: int) -> None:
        try:
            while not stop.is_set():
                done = passes[i].next_epoch()
                results.put((i, done))
                if done is None:
                    return
                turns[i].acquire()
        except BaseException as error:  # handed to the caller's thread, raised there
            results.put((i, error))

    threads = [threading.Thread(target=work, args=(i,), daemon=True,
                                name=f"heads-batch-{p.batch_size}")
               for i, p in enumerate(passes)]
    for thread in threads:
        thread.start()
    try:
        live = len(passes)
        while live:
            i, done = results.get()
            if done is None:
                live -= 1
            elif isinstance(done, BaseException):
                raise done
            else:
                finish(done)
                turns[i].release()
    finally:  # an error or a stop: the other passes end after their epoch in flight
        stop.set()
        for turn in turns:
            turn.release()
        for thread in threads:
            thread.join()
