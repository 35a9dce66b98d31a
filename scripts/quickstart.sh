#!/usr/bin/env bash
# The whole mission on one machine: synthetic ExpW -> grid study -> champion in the registry ->
# a prediction from the registry. Run from anywhere; everything lands in this repository.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MLFLOW_DISABLE_TELEMETRY=true
fer=.venv/bin/fer-search

$fer run studies/quickstart.yaml --promote
$fer status quickstart | tail -n 5
# One face from the generated set, cropped with its label.lst box, read back from the registry.
read -r image _ top left right bottom _ label < <(head -n 1 data/synthetic-1400-0/label.lst)
names=(angry disgust fear happy sad surprise neutral)
echo "predicting data/synthetic-1400-0/image/origin/$image (labelled ${names[$label]}) with expw-vgg16@champion:"
$fer predict --model expw-vgg16@champion "data/synthetic-1400-0/image/origin/$image" \
  --box "$top,$left,$right,$bottom"
echo
echo "Inspect every trial in the MLflow UI:  .venv/bin/fer-search ui   (prints the address of the runs)"
