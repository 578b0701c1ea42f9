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
	$(BIN)/rlhf pipeline examples/quickstart.yaml

lint: setup
	$(BIN)/ruff check .

# Two test modules at a time (pytest-xdist, one module per worker so its shared engines and Ray
# stay in one process): a test spends much of its time in one busy core (process starts,
# imports, engine and Ray start-up). Tests marked `alone` (clusters started with `ray start`,
# Tune sweeps) are disturbed by another Ray on the machine: they run first, one at a time.
test: lint
	$(BIN)/python -m pytest -q --durations=10 -m alone tests; alone=$$?; \
	$(BIN)/python -m pytest -q --durations=25 -n 2 --dist loadfile -m "not alone" tests; rest=$$?; \
	test $$alone -eq 0 && test $$rest -eq 0

clean:
	rm -rf $(VENV) .cache runs
