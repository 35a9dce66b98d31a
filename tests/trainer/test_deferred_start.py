"""TensorFlow starts when a training first needs it (`trainer.runtime.defer_tensorflow`): the
trainer's TensorFlow-free names (configs, grouping, data) never start it; the first name whose
module needs it starts it quietly, with the threads planned before."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import trainer
from trainer.runtime import defer_tensorflow

defer_tensorflow(1)
config = trainer.TrainConfig(weights="none")
trainer.batch_key(config), trainer.load_dataset, trainer.crop_face
print("before:", "tensorflow" in sys.modules)
trainer.train_many
import tensorflow as tf
print("after:", "tensorflow" in sys.modules)
print("threads:", tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""


def test_tensorflow_starts_at_the_first_training_name_with_the_planned_threads():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=300)
    lines = out.stdout.splitlines()
    assert lines == ["before: False", "after: True", "threads: 1 1"], out.stdout + out.stderr
    # Started through load_tensorflow: its native start-up chatter stayed off stderr.
    assert "oneDNN" not in out.stderr and "cuda" not in out.stderr.lower(), out.stderr
