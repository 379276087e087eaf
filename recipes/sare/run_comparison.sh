#!/usr/bin/env bash
# GA vs EFUF vs SARE on the SmolLM2 text proxy (the first run also teaches the shared model), then the table.
#   OMP_NUM_THREADS=1 bash recipes/sare/run_comparison.sh [extra --section.key value overrides]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
CONFIG=recipes/sare/configs/smollm2_proxy.yaml
for algo in sare efuf ga; do
  $PY recipes/sare/train.py --config "$CONFIG" --method.unlearning.algorithm "$algo" \
      --trainer.output_dir "outputs/sare-smollm2-$algo" --trainer.overwrite_output_dir true "$@"
done
$PY recipes/sare/summarize.py outputs/sare-smollm2-sare outputs/sare-smollm2-efuf outputs/sare-smollm2-ga
