# MedGemma Korean — every user-facing entry point. Targets are thin: one script call each.
#   make pipeline                    # whole pipeline on the embedded tiny model (CPU, offline)
#   make pipeline MODEL=medgemma-4b BACKGROUND=1
#   make test
SHELL := /bin/bash
MODEL ?= tiny
BACKGROUND ?= 0
TB_HOST ?= 127.0.0.1
PYTHON_BOOT ?= python3
INSTALLER ?= uv
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIPELINE := script/run_full_pipeline.sh --model $(MODEL)

.PHONY: help setup tiny-model data pipeline merge report loop adaptive-types loop-01-02 train probe-focus extend-tokenizer gpu-memory gpu-check stage-times test smoke-real-shape test-reliability bench bench-train bench-data bench-text-volume bench-eval bench-divisions divisions eval-crosscheck logs status stop tensorboard clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

# The venv is (re)installed only when the requirements or pyproject.toml change, by
# script/setup_venv.sh (uv when it can be had, else pip; INSTALLER=pip for pip alone), which then
# byte-compiles on every core what the stages and tests import (61 s -> 43 s against pip's own
# compile). Left out of compileall: what no stage or test imports (pip, setuptools, fontTools,
# transformers' other model families; 24 s -> 20 s). A module left out still imports.
NOT_IMPORTED := /(pip|setuptools|fontTools)/|/transformers/models/(?!(auto|bloom|encoder_decoder|gemma|gemma2|gemma3|siglip|llama|paligemma)/)
$(STAMP): requirements.txt requirements-test.txt pyproject.toml script/setup_venv.sh
	INSTALLER=$(INSTALLER) bash script/setup_venv.sh $(PYTHON_BOOT) $(VENV) '$(NOT_IMPORTED)'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install pinned requirements (idempotent)

tiny-model: setup  ## build the embedded tiny Gemma-3 models under model/
	$(PY) -m script.embedded.make_tiny_model

# The flags a Makefile variable asks for; $(strip) so that make echoes one clean command line.
DATA_FLAGS = $(strip $(if $(TEXT_MB),--text-mb $(TEXT_MB)) $(if $(DICT_DIR),--dict-dir $(DICT_DIR)) \
	$(if $(filter 1,$(ALLOW_SAMPLE_DICTS)),--allow-sample-dicts) $(if $(filter 1,$(STRICT)),--strict) \
	$(if $(filter 1,$(FORCE)),--force))
PIPELINE_FLAGS = $(strip $(if $(filter 1,$(BACKGROUND)),--background) $(if $(filter 1,$(SKIP_00)),--skip-00) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(EPOCHS_00),--epochs-00 $(EPOCHS_00)) \
	$(if $(EPOCHS_01),--epochs-01 $(EPOCHS_01)) $(if $(EPOCHS_02),--epochs-02 $(EPOCHS_02)) \
	$(if $(LAUNCH),--launch $(LAUNCH)) $(if $(NPROC),--nproc $(NPROC)) \
	$(if $(MAX_SAMPLES),--max-samples $(MAX_SAMPLES)) $(DATA_FLAGS))

data: setup  ## download (sample mirror when offline), refine, verify, exclude evaluation items; TEXT_MB=MB DICT_DIR=dir STRICT=1 FORCE=1
	PYTHON=$(PY) bash $(PIPELINE) --data-only $(DATA_FLAGS)

pipeline: setup  ## run the pipeline for MODEL (default tiny); DICT_DIR=dir STRICT=1 BACKGROUND=1 SKIP_00=1 EPOCHS[_00|_01|_02]=N LAUNCH=ddp NPROC=N MAX_SAMPLES=N TEXT_MB=MB FORCE=1
	PYTHON=$(PY) bash $(PIPELINE) $(PIPELINE_FLAGS)

# `python -m`, or accelerate's launcher with configs/accelerate/$(LAUNCH).yaml (and NPROC processes).
TRAIN_MODULE = $(if $(LAUNCH),$(PY) -m accelerate.commands.launch --config_file configs/accelerate/$(LAUNCH).yaml $(if $(NPROC),--num_processes $(NPROC)) -m,$(PY) -m)

loop: setup  ## train types 1-4 in loops until KorMedMCQA (steering set) >= TARGET (default 90); LAUNCH=ddp NPROC=N
	$(TRAIN_MODULE) script.train.train_loop_until_90 --model $(MODEL) $(if $(TARGET),--target $(TARGET)) --resume

adaptive-types: setup  ## train the four types, each round on the weakest one by the steering set (model/adaptive_types/MODEL); LAUNCH=ddp NPROC=N
	$(TRAIN_MODULE) script.train.train_adaptive_types --model $(MODEL) --resume $(ARGS)

loop-01-02: setup  ## alternate train_01 (dictionary) and train_02 (KorMedMCQA) rounds (model/01_02_loop/MODEL); LAUNCH=ddp NPROC=N
	$(TRAIN_MODULE) script.train.train_01_02_loop --model $(MODEL) --resume $(ARGS)

TRAINERS := $(sort $(basename $(notdir $(wildcard script/train/train_*.py))))
train: setup  ## one trainer with its own flags: make train TRAINER=train_type1_text ARGS="--epochs 2" (TRAINER= lists them)
	@if [ -z "$(filter $(TRAINER),$(TRAINERS))" ]; then \
		echo "TRAINER=$(TRAINER): choose one of: $(TRAINERS)" >&2; exit 2; fi
	$(TRAIN_MODULE) script.train.$(TRAINER) --model $(MODEL) $(ARGS)

probe-focus: setup  ## probe-and-focus training over the four types (script/run_probe_focus.sh); LAUNCH=ddp NPROC=N
	PYTHON=$(PY) LAUNCH=$(LAUNCH) NPROC=$(NPROC) bash script/run_probe_focus.sh --model $(MODEL) --resume

extend-tokenizer: setup  ## learn Korean tokens from the refined corpus, resize embeddings (model/extended_tokenizer/MODEL)
	$(PY) -m script.extend_tokenizer --model $(MODEL)

gpu-memory: setup  ## per-GPU memory and what MODEL needs to train (no CUDA: the estimate only)
	$(PY) -m script.check_gpu_memory --model $(MODEL)

merge: setup  ## merge the pipeline's final adapter chain into the base -> model/merged/MODEL (plain transformers)
	$(PY) -m script.merge_and_export --model "$$($(PY) -m script.pipeline_stages --model $(MODEL) --final-adapter)" --output model/merged/$(MODEL) --force

report: setup  ## Phase 6 report of MODEL -> logs/report_MODEL/ (report.md, report.json, charts); RUN_EVALS=1 runs missing evaluations
	$(PY) -m script.evaluation_report --model $(MODEL) $(if $(filter 1,$(RUN_EVALS)),--run-evals)

test: setup  ## run the test suite (offline, CPU, tiny models)
	$(PY) -m pytest -q

gpu-check: data  ## on a CUDA machine: real-shape MedGemma-4B, bf16 + 8-bit LoRA tokens/s vs TRL, memory vs estimate, 604 letter-mode, decode ms/step (JSON)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m script.gpu_check $(if $(filter 1,$(DRY_RUN)),--dry-run)

stage-times: setup  ## per-stage time of a real run on one GPU, an estimate: MODEL=medgemma-4b GPU=h100 QUANT=none GPU_CHECK=logs/gpu_check.json
	$(PY) -m script.stage_time_estimate --model $(MODEL) $(if $(GPU),--gpu $(GPU)) $(if $(QUANT),--quantization $(QUANT)) \
		$(if $(GPU_CHECK),--gpu-check $(GPU_CHECK))

smoke-real-shape: setup  ## MedGemma-4B's real shape (random init, 2 layers, 262K vocab): train_02, scoring, merge (JSON)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m script.smoke_real_shape

# Every reliability case (the slow kill/restart runs too), then docs/RELIABILITY.md from the results;
# the page is regenerated even when a case fails, and the target then fails too.
RELIABILITY_RESULTS := logs/reliability/results.json
test-reliability: setup  ## fault injection + bad-input fuzzing (all cases, ~7 min on 2 cores), then docs/RELIABILITY.md
	status=0; RELIABILITY_RESULTS=$(RELIABILITY_RESULTS) OMP_NUM_THREADS=1 $(PY) -m pytest tests/reliability -q -m "" || status=$$?; \
	$(PY) -m script.reliability_table --results $(RELIABILITY_RESULTS) --output docs/RELIABILITY.md && exit $$status

bench: bench-train bench-data bench-text-volume bench-eval bench-divisions  ## every benchmark; each prints one JSON object

bench-train: setup  ## training tokens/s: the guide's padding, TRL defaults, this toolkit (same model, data, losses)
	HF_HUB_OFFLINE=1 $(PY) -m script.bench.bench_train --model $(MODEL) $(if $(STEPS),--steps $(STEPS))

bench-data: setup  ## refine + verify + exclusion at the guide's scale (~184K records), plain-text memory
	$(PY) -m script.bench.bench_data

bench-text-volume: setup  ## data stages on a generated 2 GB plain-text corpus: peak RSS and disk, capped vs whole (GB=2)
	$(PY) -m script.bench.bench_text_volume $(if $(GB),--gb $(GB))

bench-eval: setup  ## KorMedMCQA scoring: per-question generate vs batched letter mode
	HF_HUB_OFFLINE=1 $(PY) -m script.bench.bench_eval

bench-divisions: setup  ## division annotation: lexical vs model stage vs generate-and-parse (UNKNOWN %, accuracy, samples/s)
	HF_HUB_OFFLINE=1 $(PY) -m script.bench.bench_divisions --model $(MODEL)

divisions: setup  ## Phase 5: annotate divisions, validate/fix, check, organize, train MODEL with per-division reports
	HF_HUB_OFFLINE=1 PYTHON=$(PY) bash phase5_subject_training/scripts/run_division_pipeline.sh --model $(MODEL)

# lm-evaluation-harness is installed into the same venv only for this target (its own stamp).
CROSSCHECK_STAMP := $(VENV)/.crosscheck-stamp
$(CROSSCHECK_STAMP): requirements-crosscheck.txt $(STAMP)
	$(PY) -m pip install --quiet -e ".[crosscheck]"
	touch $(CROSSCHECK_STAMP)

eval-crosscheck: $(CROSSCHECK_STAMP)  ## lm-evaluation-harness vs our letter/generate modes, item by item (JSON)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m script.eval_crosscheck --model $(MODEL)

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
