#!/usr/bin/env bash
# On a machine with a GPU, in one go (< 5 minutes): VGG16 feature extraction vs the matmul rate,
# head training (plain Keras fit vs the head engine, one head and a group of 6), and the
# quickstart study. Results go to benchmarks/results/gpu-*; the GPU is named in gpu-device.txt.
#
#     bash benchmarks/gpu.sh [PYTHON]        # PYTHON defaults to .venv/bin/python, else python3
#
# Nothing is downloaded (weights: none, synthetic data). Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=benchmarks/results
WORK=benchmarks/work/gpu
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FER_SEARCH_TF_LOGS=${FER_SEARCH_TF_LOGS:-0}
start=$(date +%s)
stamp() { echo "[gpu.sh $(( $(date +%s) - start ))s] $*"; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import trainer  # noqa: F401  (environment first)
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print("tensorflow", tf.__version__, "GPUs seen by TensorFlow:", [g.name for g in gpus])
for g in gpus:
    print(tf.config.experimental.get_device_details(g))
EOF
} | tee "$OUT/gpu-device.txt"

stamp "feature extraction (sizes 64 and 96)"
timeout 120 "$PY" benchmarks/feature_extraction.py --sizes 64 96 --repeats 3 \
  --head-faces 1000 --head-epochs 4 --out "$WORK/fe" || stamp "feature extraction FAILED"
for f in "$WORK"/fe/feature_extraction.*; do
  [[ -e "$f" ]] && cp "$f" "$OUT/gpu-$(basename "$f")"
done

stamp "head training: Keras fit vs the engine, 1 head and a group of 6 (float32)"
timeout 120 "$PY" benchmarks/head_training.py --epochs 5 --name gpu-head_training --out "$OUT" \
  --work "$WORK/head" || stamp "head training FAILED"

stamp "head training again with each batch's step compiled by XLA (FER_SEARCH_HEAD_JIT=step)"
FER_SEARCH_HEAD_JIT=step timeout 90 "$PY" benchmarks/head_training.py --epochs 5 \
  --name gpu-head_training-xla-step --out "$OUT" --work "$WORK/head-xla" \
  || stamp "head training with XLA FAILED"

stamp "quickstart grid (24 trials) on a fresh store"
rm -rf "$WORK/qs"
mkdir -p "$WORK/qs"
sed -e "s#cache_dir: .cache#cache_dir: $WORK/qs/cache#" studies/quickstart.yaml \
  > "$WORK/qs/quickstart.yaml"
qs_start=$(date +%s.%N)
if timeout 150 "$PY" -m search.cli.main run "$WORK/qs/quickstart.yaml" \
    --storage "sqlite:///$WORK/qs/optuna.db" --tracking-uri "sqlite:///$WORK/qs/mlflow.db" \
    > "$WORK/qs/run.log" 2>&1; then status=ok; else status="FAILED ($?)"; fi
qs_end=$(date +%s.%N)
{
  echo "# quickstart on a GPU"
  echo
  echo "- status: $status"
  echo "- wall seconds (whole \`fer-search run\`): $("$PY" -c "print(round($qs_end - $qs_start, 1))")"
  echo "- device: $(head -3 "$OUT/gpu-device.txt" | tail -1)"
  echo "- commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo
  echo '```'
  tail -40 "$WORK/qs/run.log"
  echo '```'
} > "$OUT/gpu-quickstart.md"
stamp "done: $(ls "$OUT"/gpu-* | tr '\n' ' ')"
