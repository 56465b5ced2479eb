# mammopath — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYNTH := data/synth

.DEFAULT_GOAL := help
.PHONY: help install demo prepare-demo test test-all lint format bench reproduce reproduce-demo tensorboard clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

install: $(BIN)/.installed ## create .venv and install mammopath (editable) with dev tools

$(SYNTH)/manifest.csv: | $(BIN)/.installed
	$(BIN)/mammopath synth --out $(SYNTH) --seed 0

RELEASES := cbis-ddsm:. inbreast:. bach:ICIAR2018_BACH_Challenge camelyon16:CAMELYON16 camelyon17:CAMELYON17

prepare-demo: install $(SYNTH)/manifest.csv ## prepare + validate every synthetic benchmark release (real layouts)
	@mkdir -p $(SYNTH)/manifests
	@for pair in $(RELEASES); do \
		name=$${pair%%:*}; root=$(SYNTH)/$${pair#*:}; \
		$(BIN)/mammopath prepare $$name --root $$root --out $(SYNTH)/manifests/$$name.csv || exit 1; \
	done
	$(BIN)/mammopath tile $(SYNTH)/manifests/camelyon16.csv --root $(SYNTH)/CAMELYON16 \
		--out $(SYNTH)/manifests/camelyon16_patches.csv --size 64 --mpp 1.0
	$(BIN)/mammopath validate-manifest $(SYNTH)/paired_manifest.csv --root $(SYNTH)

demo: install $(SYNTH)/manifest.csv prepare-demo ## synth → prepare → validate → fit → test on held-out domains → results/demo
	$(BIN)/mammopath validate-manifest $(SYNTH)/manifest.csv --root $(SYNTH) --holdout hospital_c centre_3
	$(BIN)/mammopath fit --config experiments/demo.yaml
	$(BIN)/mammopath test --config experiments/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
	@echo "results: results/demo/ (metrics_by_domain.md, lodo_summary.md, roc.png); logs: make tensorboard"

test: install ## fast test suite (CPU, < 10 min)
	$(BIN)/python -m pytest -q

test-all: install ## every test, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu and not data"

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check mammopath tests bench
	$(BIN)/ruff format --check mammopath tests bench
	$(BIN)/mypy

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix mammopath tests bench
	$(BIN)/ruff format mammopath tests bench

bench: install ## benchmarks: ratios against the raw libraries doing the same work (docs/performance.md)
	$(BIN)/python -m bench

reproduce-demo: demo ## the demo, then a report with figures in results/report-demo
	$(BIN)/mammopath report results/demo --out results/report-demo

DATA_ROOT ?= data/raw
PUBLIC := --config experiments/base.yaml --config experiments/benchmarks/public.yaml

reproduce: install ## every LODO fold of experiments/lodo on the public releases under DATA_ROOT (docs/reproduction.md)
	@test -d "$(DATA_ROOT)" || (echo "put the releases under DATA_ROOT=$(DATA_ROOT) first (docs/reproduction.md)"; exit 2)
	@for cfg in experiments/lodo/*.yaml; do \
		fold=$$(basename $$cfg .yaml); \
		$(BIN)/mammopath fit $(PUBLIC) --config $$cfg --data.init_args.data_root=$(DATA_ROOT) || exit 1; \
		$(BIN)/mammopath test $(PUBLIC) --config $$cfg --data.init_args.data_root=$(DATA_ROOT) \
			--ckpt_path runs/lodo_$${fold#holdout_}/checkpoints/best.ckpt || exit 1; \
	done
	$(BIN)/mammopath report results/lodo_* --out results/report

tensorboard: install ## TensorBoard on runs/
	$(BIN)/tensorboard --logdir runs

clean: ## remove generated data, runs and results (keeps .venv)
	rm -rf data runs results lightning_logs
