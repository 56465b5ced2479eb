# mammopath — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYNTH := data/synth

.DEFAULT_GOAL := help
.PHONY: help install demo prepare-demo test test-all lint format bench mutation reproduce reproduce-demo lodo report tensorboard clean check-weights evidence calibrate

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $@

install: $(BIN)/.installed ## create .venv and install mammopath (editable) with dev tools

# the demo and reproduce-demo need no marker-free oracle copies (experiments/sweeps/dg_synth.yaml does:
# write its data with `mammopath synth --out data/synth`)
$(SYNTH)/manifest.csv: | $(BIN)/.installed
	$(BIN)/mammopath synth --out $(SYNTH) --seed 0 --no-oracle

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

DEMO := --config experiments/synth.yaml --config experiments/demo.yaml

demo: install $(SYNTH)/manifest.csv prepare-demo ## synth → prepare → validate → fit → test on held-out domains → results/demo
	$(BIN)/mammopath validate-manifest $(SYNTH)/manifest.csv --root $(SYNTH) --holdout hospital_c centre_3
	$(BIN)/mammopath fit $(DEMO)
	$(BIN)/mammopath test $(DEMO) --ckpt_path runs/demo/checkpoints/best.ckpt
	$(BIN)/mammopath predict $(DEMO) --config experiments/explain/demo.yaml --ckpt_path runs/demo/checkpoints/best.ckpt
	@echo "results: results/demo/ (metrics_by_domain.md, lodo_summary.md, alignment.md, roc.png, attention/); logs: make tensorboard"

calibrate: install ## the evidence suite's calibration (ERM + oracle on the calibration seeds) and its gates
	$(BIN)/mammopath evidence --calibrate

evidence: calibrate ## the pre-registered evidence suite (docs/evidence.md): data, every arm (resumable), tables + scorecard
	$(BIN)/mammopath evidence

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

# mutation testing is for people, not CI: nice'd, MUTATION_CHILDREN workers (2 cores shared: keep it at 1-2)
MUTATION_CHILDREN ?= 2
MUTANTS ?=

$(BIN)/mutmut: | $(BIN)/.installed
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev,mutation]"

mutation: install $(BIN)/mutmut ## mutation testing of the critical modules (mutmut, ~1 h on 2 cores; docs/mutation.md) → results/mutation
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 $(BIN)/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTANTS)
	$(BIN)/python -m bench.mutation_summary --out results/mutation

reproduce-demo: install $(SYNTH)/manifest.csv ## the reproduction sweep on the synthetic benchmark (< 60 min on 2 cores) and its report
	$(BIN)/mammopath sweep experiments/sweeps/reproduce_demo.yaml
	$(BIN)/mammopath report results/reproduce-demo/*/*/seed* --out results/reproduce-demo

DATA_ROOT ?= data/raw
# the frozen encoder needs its pretrained weights: ENCODER=<preset> (`mammopath encoders` lists them) and
# WEIGHTS=<file or folder> (default: the path in experiments/encoders/$(ENCODER).yaml)
ENCODER ?= vit_base
WEIGHTS ?=
ENCODER_ARGS := --config experiments/encoders/$(ENCODER).yaml $(if $(WEIGHTS),--model.checkpoint_path=$(WEIGHTS))
PUBLIC := --config experiments/base.yaml --config experiments/benchmarks/public.yaml $(ENCODER_ARGS)
HELDOUT ?= inbreast
METHOD ?= erm
SEED ?= 0

check-weights: ## check ENCODER= names a preset and WEIGHTS= exists (run by reproduce and lodo)
	@test -f "experiments/encoders/$(ENCODER).yaml" || (echo "error: ENCODER=$(ENCODER) is not a preset of experiments/encoders/ (see mammopath encoders)"; exit 2)
	@test -z "$(WEIGHTS)" -o -e "$(WEIGHTS)" || (echo "error: WEIGHTS=$(WEIGHTS) not found; download the encoder's weights first (mammopath encoders)"; exit 2)

reproduce: install check-weights ## every LODO fold x method x seed on DATA_ROOT (ENCODER=vit_base WEIGHTS=file), then the report
	@test -d "$(DATA_ROOT)" || (echo "put the releases under DATA_ROOT=$(DATA_ROOT) first (docs/reproduction.md)"; exit 2)
	$(BIN)/mammopath sweep experiments/sweeps/public.yaml --extra=--data.init_args.data_root=$(DATA_ROOT) \
		$(foreach a,$(ENCODER_ARGS),--extra=$(a))
	$(BIN)/mammopath report results/reproduce/*/*/seed* --out results/reproduce

lodo: install check-weights ## one fold: make lodo HELDOUT=<domain> METHOD=<name> SEED=<n> DATA_ROOT=... WEIGHTS=...
	$(BIN)/mammopath fit $(PUBLIC) --config experiments/baselines/$(METHOD).yaml --data.init_args.data_root=$(DATA_ROOT) \
		--data.init_args.holdout_domains=[$(HELDOUT)] --run_name=lodo/$(HELDOUT) --method=$(METHOD)/seed$(SEED) --seed_everything=$(SEED)
	$(BIN)/mammopath test $(PUBLIC) --config experiments/baselines/$(METHOD).yaml --data.init_args.data_root=$(DATA_ROOT) \
		--data.init_args.holdout_domains=[$(HELDOUT)] --run_name=lodo/$(HELDOUT) --method=$(METHOD)/seed$(SEED) --seed_everything=$(SEED) \
		--ckpt_path=runs/lodo/$(HELDOUT)/$(METHOD)/seed$(SEED)/checkpoints/best.ckpt

REPORT_RUNS ?= results/reproduce-demo/*/*/seed*
REPORT_OUT ?= results/reproduce-demo

report: install ## the study report of REPORT_RUNS (default: the reproduce-demo sweep) into REPORT_OUT
	$(BIN)/mammopath report $(REPORT_RUNS) --out $(REPORT_OUT)

tensorboard: install ## TensorBoard on runs/
	$(BIN)/tensorboard --logdir runs

clean: ## remove generated data, runs and results (keeps .venv)
	rm -rf data runs results lightning_logs
