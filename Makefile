# reft-trl: every target is a thin wrapper around a recipe or a tool; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pins torch to the tested CPU build (see constraints/cpu.txt). GPU machines: `make install CONSTRAINTS=`.
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= dev,deepspeed,plot
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install test test-fast lint format clean bench

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(CONSTRAINTS),$(PY) -m pip install -q -r $(CONSTRAINTS),)
	$(PY) -m pip install -q $(PIP_C) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install reft-trl with its dev/deepspeed/plot extras

test: install  ## run the whole test suite (what CI runs)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: install  ## the test suite without the slow multi-process / recipe tests
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check src tests recipes benchmarks
	$(VENV)/bin/ruff format --check src tests recipes benchmarks

format: install  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests recipes benchmarks
	$(VENV)/bin/ruff format src tests recipes benchmarks

bench: install  ## the benchmarks: sandbox throughput, then PPO step time/memory (ReFT vs separate critic vs GRPO)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/reward_throughput.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/ppo_step.py --preset cpu

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache

# ------------------------------------------------------------------------------------------------------ recipes
# GSM8K (and any dataset): MODEL, DATA, OUTPUT, CONFIG, ACCELERATE are overridable, e.g.
#   make reft-gsm8k MODEL=Qwen/Qwen2.5-0.5B OUTPUT=outputs/gsm8k ACCELERATE=recipes/accelerate/zero2.yaml
MODEL ?= Qwen/Qwen2.5-0.5B
COT ?= nl
DATASET ?= gsm8k
DATA ?=
OUTPUT ?= outputs/$(DATASET)-$(COT)
ACCELERATE ?= recipes/accelerate/single.yaml
WARMUP_EPOCH ?= 2
ARGS ?=
SFT_CONFIG ?= recipes/configs/$(DATASET)_$(COT)_sft.yaml
REFT_CONFIG ?= recipes/configs/$(DATASET)_$(COT)_reft.yaml
LAUNCH := $(VENV)/bin/accelerate launch --config_file $(ACCELERATE)
DATA_ARG := $(if $(DATA),--data_path $(DATA),)

.PHONY: sft-gsm8k reft-gsm8k

sft-gsm8k: install  ## SFT on GSM8K (40 epochs, a checkpoint per epoch; the warm-up and the SFT baseline)
	$(LAUNCH) recipes/sft.py --config $(SFT_CONFIG) --model_name_or_path $(MODEL) $(DATA_ARG) \
		--output_dir $(OUTPUT)/sft $(ARGS)

reft-gsm8k: install  ## SFT warm-up (if not done), ReFT from its epoch-$(WARMUP_EPOCH) checkpoint, then evaluation
	test -f $(OUTPUT)/sft/accuracy_log.json || $(MAKE) sft-gsm8k
	$(LAUNCH) recipes/reft.py --config $(REFT_CONFIG) $(DATA_ARG) --output_dir $(OUTPUT)/reft $(ARGS) \
		--model_name_or_path $$($(PY) recipes/pick_checkpoint.py $(OUTPUT)/sft --epoch $(WARMUP_EPOCH))
	$(LAUNCH) recipes/evaluate.py --dataset $(DATASET) --cot $(COT) $(DATA_ARG) \
		--model_name_or_path $(OUTPUT)/reft --output_dir $(OUTPUT)/eval-reft

K ?= 100
ORM ?=
ORM_FROM ?= $(OUTPUT)/reft
OFFLINE_ST_CONFIG ?= $(SFT_CONFIG)

.PHONY: eval-gsm8k online-st-gsm8k offline-st-gsm8k orm-gsm8k

eval-gsm8k: install  ## top-1, voting@K and (ORM=<dir>) rerank@K of MODEL (any checkpoint) on the test set
	$(LAUNCH) recipes/evaluate.py --dataset $(DATASET) --cot $(COT) $(DATA_ARG) --model_name_or_path $(MODEL) \
		--num_samples $(K) $(if $(ORM),--orm_model_name_or_path $(ORM),) --output_dir $(OUTPUT)/eval $(ARGS)

online-st-gsm8k: install  ## Online-ST baseline from the warm-up checkpoint (ReFT's loop, SFT on correct samples)
	test -f $(OUTPUT)/sft/accuracy_log.json || $(MAKE) sft-gsm8k
	$(LAUNCH) recipes/online_st.py --config $(REFT_CONFIG) --kl_coef 0 $(DATA_ARG) \
		--output_dir $(OUTPUT)/online-st $(ARGS) \
		--model_name_or_path $$($(PY) recipes/pick_checkpoint.py $(OUTPUT)/sft --epoch $(WARMUP_EPOCH))

offline-st-gsm8k: install  ## Offline-ST baseline: K=100 samples/question from the warm-up, <=10 correct kept, SFT of MODEL
	test -f $(OUTPUT)/sft/accuracy_log.json || $(MAKE) sft-gsm8k
	$(LAUNCH) recipes/offline_st.py --config $(OFFLINE_ST_CONFIG) $(DATA_ARG) --num_train_epochs 20 \
		--num_samples $(K) --model_name_or_path $(MODEL) --output_dir $(OUTPUT)/offline-st $(ARGS) \
		--warmup_model_name_or_path $$($(PY) recipes/pick_checkpoint.py $(OUTPUT)/sft --epoch $(WARMUP_EPOCH))

orm-gsm8k: install  ## ORM for reranking, trained on samples of ORM_FROM (default: the ReFT model) and initialised from it
	$(LAUNCH) recipes/orm.py --dataset $(DATASET) --cot $(COT) $(DATA_ARG) --model_name_or_path $(ORM_FROM) \
		--output_dir $(OUTPUT)/orm $(ARGS)

# ------------------------------------------------------------------------------------------------ embedded demo
DEMO ?= outputs/demo
DEMO_CONFIGS ?= recipes/configs/demo
DEMO_DATA := --dataset synthetic --data_path $(DEMO)/task --cot python
DEMO_WARMUP_EPOCH ?= 4
DEMO_K ?= 8
CPU_RUN := HF_HUB_OFFLINE=1 $(PY)
WARMUP = $$($(PY) recipes/pick_checkpoint.py $(DEMO)/sft --epoch $(DEMO_WARMUP_EPOCH))
WARMUP_STEP = $$($(PY) recipes/pick_checkpoint.py $(DEMO)/sft --epoch $(DEMO_WARMUP_EPOCH) | sed 's/.*checkpoint-//')

.PHONY: demo results seeds

demo: install  ## the README's main job: tiny model from scratch, SFT warm-up, ReFT, held-out comparison + plot (CPU)
	$(CPU_RUN) recipes/tiny_model.py --config $(DEMO_CONFIGS)/task.yaml --output_dir $(DEMO)/base --task_dir $(DEMO)/task
	$(CPU_RUN) recipes/sft.py --config $(DEMO_CONFIGS)/sft.yaml $(DEMO_DATA) --model_name_or_path $(DEMO)/base \
		--output_dir $(DEMO)/sft
	$(CPU_RUN) recipes/reft.py --config $(DEMO_CONFIGS)/reft.yaml $(DEMO_DATA) --output_dir $(DEMO)/reft \
		--model_name_or_path $(WARMUP)
	$(CPU_RUN) recipes/report.py $(DEMO_DATA) --eval_splits test_iid,test_ood --output_dir $(DEMO) \
		--run "SFT warm-up (epoch $(DEMO_WARMUP_EPOCH))=$(WARMUP)" "ReFT (from the warm-up)=$(DEMO)/reft" \
		--offset "ReFT (from the warm-up)=$(WARMUP_STEP)"

# `make results`: every method from the demo's warm-up checkpoint on the same training questions, evaluated greedily
# (top-1) and with DEMO_K samples per question (voting@K, rerank@K by an ORM). CPU-sized: ReFT resumes the demo's
# run to RESULTS_STEPS; Online-ST runs as many steps; SFT continues for 6 more epochs; Offline-ST samples DEMO_ST_K CoTs
# per question and, like SFT-continued, fine-tunes the warm-up (not the base model) on the mixture. A step that
# finished is not rerun (delete its folder to redo it); evaluate.py resumes its own sampling shards.
RESULTS ?= outputs/results
RESULTS_STEPS ?= 200
DEMO_ST_K ?= 2
CONTINUE := --warmup_steps 0 --model_name_or_path $(WARMUP)
EVAL_DEMO = $(CPU_RUN) recipes/evaluate.py $(DEMO_DATA) --eval_split test_iid+test_ood --num_samples $(DEMO_K) \
	--max_new_tokens 72 --batch_size 50 --orm_model_name_or_path $(RESULTS)/orm

# $(call TRAIN_FROM_WARMUP,DIR,SEED,EXTRA): ReFT, SFT continued, Online-ST and Offline-ST from the warm-up, into
# DIR/<method> with seed SEED (EXTRA: more ReFT arguments). A run that finished (its model.safetensors) is not redone.
define TRAIN_FROM_WARMUP
	test -f $(1)/reft/model.safetensors || $(CPU_RUN) recipes/reft.py --config $(DEMO_CONFIGS)/reft.yaml \
		$(DEMO_DATA) --max_steps $(RESULTS_STEPS) --model_name_or_path $(WARMUP) --output_dir $(1)/reft --seed $(2) $(3)
	test -f $(1)/sft-continued/model.safetensors || $(CPU_RUN) recipes/sft.py --config $(DEMO_CONFIGS)/sft.yaml \
		$(DEMO_DATA) $(CONTINUE) --num_train_epochs 6 --output_dir $(1)/sft-continued --seed $(2)
	test -f $(1)/online-st/model.safetensors || $(CPU_RUN) recipes/online_st.py --config $(DEMO_CONFIGS)/reft.yaml \
		$(DEMO_DATA) --kl_coef 0 --max_steps $(RESULTS_STEPS) --model_name_or_path $(WARMUP) \
		--output_dir $(1)/online-st --seed $(2)
	test -f $(1)/offline-st/model.safetensors || $(CPU_RUN) recipes/offline_st.py \
		--config $(DEMO_CONFIGS)/sft.yaml $(DEMO_DATA) $(CONTINUE) --num_train_epochs 1 \
		--num_samples $(DEMO_ST_K) --max_per_question $(DEMO_ST_K) --max_new_tokens 72 --sampling_batch_size 100 \
		--warmup_model_name_or_path $(WARMUP) --output_dir $(1)/offline-st --seed $(2) --sampling_seed $(2)
endef

results: install  ## the README's comparison: SFT, Offline-ST, Online-ST, ReFT (+ voting/ORM rerank), table + plot
	test -f $(DEMO)/reft/model.safetensors || $(MAKE) demo
	$(call TRAIN_FROM_WARMUP,$(RESULTS),0,--resume_from_checkpoint $$(ls -d $(DEMO)/reft/checkpoint-* | sort -t- -k2 -n | tail -1))
	test -f $(RESULTS)/orm/model.safetensors || $(CPU_RUN) recipes/orm.py --config $(DEMO_CONFIGS)/orm.yaml \
		$(DEMO_DATA) --model_name_or_path $(WARMUP) --num_samples $(DEMO_ST_K) \
		--samples_dir $(RESULTS)/offline-st/samples --output_dir $(RESULTS)/orm
	$(EVAL_DEMO) --model_name_or_path $(WARMUP) --output_dir $(RESULTS)/eval-warmup
	$(EVAL_DEMO) --model_name_or_path $(RESULTS)/sft-continued --output_dir $(RESULTS)/eval-sft
	$(EVAL_DEMO) --model_name_or_path $(RESULTS)/offline-st --output_dir $(RESULTS)/eval-offline-st
	$(EVAL_DEMO) --model_name_or_path $(RESULTS)/online-st --output_dir $(RESULTS)/eval-online-st
	$(EVAL_DEMO) --model_name_or_path $(RESULTS)/reft --output_dir $(RESULTS)/eval-reft
	$(CPU_RUN) recipes/report.py $(DEMO_DATA) --eval_splits test_iid,test_ood --output_dir $(RESULTS) \
		--title "Held-out accuracy from the same warm-up" \
		--run "SFT warm-up=$(WARMUP)" "SFT continued=$(RESULTS)/sft-continued" "Offline-ST=$(RESULTS)/offline-st" \
		"Online-ST=$(RESULTS)/online-st" "ReFT=$(RESULTS)/reft" \
		--offset "SFT continued=$(WARMUP_STEP)" "Offline-ST=$(WARMUP_STEP)" "Online-ST=$(WARMUP_STEP)" \
		"ReFT=$(WARMUP_STEP)" \
		--evaluation "SFT warm-up=$(RESULTS)/eval-warmup" "SFT continued=$(RESULTS)/eval-sft" \
		"Offline-ST=$(RESULTS)/eval-offline-st" "Online-ST=$(RESULTS)/eval-online-st" "ReFT=$(RESULTS)/eval-reft"

# `make seeds`: the four trained methods of `make results` again with each seed in SEEDS (the warm-up stays the same
# checkpoint; the seed changes data order, sampling and the value head's initialisation), then the top-1 table over
# seed 0 (`make results`' runs) and SEEDS: mean, standard deviation and every seed's value, and the curves with their
# range over seeds.
SEEDS ?= 1 2
SEED_RUNS = $(1),$(subst $(space),$(comma),$(foreach s,$(SEEDS),$(RESULTS)/seed-$(s)/$(notdir $(1))))
space := $(subst ,, )
comma := ,

$(RESULTS)/seed-%/done: | install
	$(call TRAIN_FROM_WARMUP,$(RESULTS)/seed-$*,$*,)
	touch $@

seeds: install  ## `make results`' four methods with more seeds (SEEDS=1 2): top-1 mean and spread over seeds + plot
	test -f $(RESULTS)/reft/model.safetensors || $(MAKE) results
	$(MAKE) $(foreach s,$(SEEDS),$(RESULTS)/seed-$(s)/done)
	$(CPU_RUN) recipes/report.py $(DEMO_DATA) --eval_splits test_iid,test_ood --output_dir $(RESULTS)/seeds \
		--title "Held-out accuracy over seeds (0 $(SEEDS))" --run "SFT warm-up=$(WARMUP)" \
		"SFT continued=$(call SEED_RUNS,$(RESULTS)/sft-continued)" "Offline-ST=$(call SEED_RUNS,$(RESULTS)/offline-st)" \
		"Online-ST=$(call SEED_RUNS,$(RESULTS)/online-st)" "ReFT=$(call SEED_RUNS,$(RESULTS)/reft)" \
		--offset "SFT continued=$(WARMUP_STEP)" "Offline-ST=$(WARMUP_STEP)" "Online-ST=$(WARMUP_STEP)" \
		"ReFT=$(WARMUP_STEP)"
