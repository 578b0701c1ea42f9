# `make demo` and `make test` are the whole set-up: each one creates .venv/ (once) and runs.
PY        ?= python3.11
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.setup-done
# Tiny models for tests and the prepared default model live here (never downloaded).
export RLHF_CACHE ?= $(CURDIR)/.cache
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 1
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED := 0
# DeepSpeed's compiled CPU ops, built by scripts/setup.sh, belong to this checkout's venv.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch-extensions

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(PY) $(VENV)
	touch $(STAMP)

demo: setup
	$(BIN)/rlhf pipeline examples/support-qa.yaml

lint: setup
	$(BIN)/ruff check .

# Three groups of tests, so both cores stay busy (scripts/test.sh says which and why).
test: lint
	bash scripts/test.sh $(BIN)/python

clean:
	rm -rf $(VENV) .cache runs
