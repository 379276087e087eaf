#!/usr/bin/env bash
# One training-speed table on any CUDA box (issue 24): llmkit none / dynamic / padding_free / token-budget
# (+ compile), transformers Trainer, TRL SFTTrainer(packing=True) and a plain packed loop, same examples.
#
#   bash benchmarks/gpu_check.sh --prepare             # with network: wheels, tokenizer, data -> benchmarks/gpu_bundle/
#   bash benchmarks/gpu_check.sh                       # on the CUDA box (no network needed), <= 8 minutes
#   bash benchmarks/gpu_check.sh --device cpu --tiny   # anywhere, < 3 minutes on 2 cores
#
# llmkit is run from this source tree (PYTHONPATH), never pip-installed: the box's torch may be older than our
# pin. Options: python benchmarks/gpu_check.py --help. The table is appended to benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
case " $* " in
    *" --prepare "*) ;;  # pip download needs the network
    *) export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ;;  # nothing is fetched on the box
esac
exec "$PYTHON" benchmarks/gpu_check.py "$@"
