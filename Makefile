# MedGemma Korean — every user-facing entry point. Targets are thin: one script call each.
#   make pipeline                    # whole pipeline on the embedded tiny model (CPU, offline)
#   make pipeline MODEL=medgemma-4b BACKGROUND=1
#   make test
SHELL := /bin/bash
MODEL ?= tiny
BACKGROUND ?= 0
TB_HOST ?= 127.0.0.1
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIPELINE := script/run_full_pipeline.sh --model $(MODEL)

.PHONY: help setup tiny-model data pipeline test bench bench-data bench-eval logs status stop tensorboard clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

# The venv is (re)installed only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install pinned requirements (idempotent)

tiny-model: setup  ## build the embedded tiny Gemma-3 models under model/
	$(PY) -m script.make_tiny_model

data: setup  ## download (sample mirror when offline), refine, verify, exclude evaluation items
	PYTHON=$(PY) bash $(PIPELINE) --data-only

pipeline: setup  ## run the pipeline for MODEL (default tiny); BACKGROUND=1 to detach; EPOCHS=N
	PYTHON=$(PY) bash $(PIPELINE) $(if $(filter 1,$(BACKGROUND)),--background) $(if $(EPOCHS),--epochs $(EPOCHS))

test: setup  ## run the test suite (offline, CPU, tiny models)
	$(PY) -m pytest -q

bench: bench-data bench-eval  ## every benchmark; each prints one JSON object

bench-data: setup  ## refine + verify + exclusion at the guide's scale (~184K records), plain-text memory
	$(PY) -m script.bench_data

bench-eval: setup  ## KorMedMCQA scoring: per-question generate vs batched letter mode
	HF_HUB_OFFLINE=1 $(PY) -m script.bench_eval

logs: setup  ## follow the pipeline log of MODEL
	tail -n 50 -F logs/pipeline_$(MODEL).log

status: setup  ## show whether a pipeline runs and its progress file
	PYTHON=$(PY) bash $(PIPELINE) --status

stop: setup  ## stop the background pipeline of MODEL and its children
	PYTHON=$(PY) bash $(PIPELINE) --stop

tensorboard: setup  ## serve TensorBoard over logs/tensorboard (TB_HOST=0.0.0.0 for a remote box)
	$(PY) -m tensorboard.main --logdir logs/tensorboard --host $(TB_HOST)

clean:  ## remove generated data, models and logs (keeps .venv and data/sample)
	rm -rf data/raw data/refined data/refined_clean data/kormedmcqa_test model/* logs/*
