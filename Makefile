# Two commands for a fresh clone:  `make run`  (main job on the embedded default)  and  `make test`.
# Both create/reuse the virtual environment in .venv.
#
# torch: `torch==2.13.0` is a CPU build on the project's CPU machines; on Linux x86_64 from PyPI it is
# the CUDA build, which is what GPU users want. CPU-only users elsewhere can pass a CPU wheel index:
#   make setup TORCH_PIP_ARGS="--index-url <your CPU wheel index>"
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXPERIMENTS := secrecy panic inner_conflict sycophancy sarcasm toxic_persona ai_entity

.PHONY: setup run test results results-em results-gemma3 results-posttrain tables sae sae-gemma3 sae-posttrain clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[test,gemma3]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m psm_repro run experiment=steer_secrecy

test: setup
	$(PY) -m pytest -q

# Regenerate the committed result cards (earlier cards are moved to runs/replaced/, never deleted).
results: setup
	@for p in $(EXPERIMENTS); do \
	  if [ -d results/steer_$$p ]; then mkdir -p runs/replaced && mv results/steer_$$p runs/replaced/steer_$$p.$$(date +%s); fi; \
	  $(PY) -m psm_repro run experiment=steer_$$p hydra.run.dir=results/steer_$$p || exit 1; \
	done
	@if [ -d results/judge_validation ]; then mkdir -p runs/replaced && mv results/judge_validation runs/replaced/judge_validation.$$(date +%s); fi
	$(PY) -m psm_repro validate-judge judge.out_dir=results/judge_validation
	$(PY) -m psm_repro tables

# The emergent-misalignment card (fine-tuning included, ~20 min on 2 cores); the old card is moved aside.
results-em: setup
	@if [ -d results/em_risky_finance ]; then mkdir -p runs/replaced && mv results/em_risky_finance runs/replaced/em_risky_finance.$$(date +%s); fi
	$(PY) -m psm_repro finetune experiment=em_risky_finance hydra.run.dir=results/em_risky_finance
	$(PY) -m psm_repro tables

# The embedded model's SAE from scratch: finish (or check) the committed corpus, then train (~1 h on 2 cores;
# a killed run resumes from its checkpoint when re-run). The SAE already in saes/ is moved aside, never overwritten.
sae: setup
	$(PY) -m psm_repro build-corpus
	$(PY) -m psm_repro train-sae

# The second real model, Gemma 3 270M (base), with its own SAE: the 7 persona cards and the EM card under
# results/gemma3_270m/ (~10-15 min per persona card and ~46 min for EM on 2 cores; the old cards are moved to
# runs/replaced/, never deleted), then the judge validity per model (Gemma's labels included) and the tables.
GEMMA3 := model=gemma3_270m sae=gemma3_270m_l12_topk
results-gemma3: setup
	@for p in $(EXPERIMENTS); do \
	  d=results/gemma3_270m/steer_$$p; \
	  if [ -d $$d ]; then mkdir -p runs/replaced && mv $$d runs/replaced/gemma3_270m_steer_$$p.$$(date +%s); fi; \
	  $(PY) -m psm_repro run experiment=steer_$$p $(GEMMA3) hydra.run.dir=$$d || exit 1; \
	done
	@if [ -d results/gemma3_270m/em_risky_finance ]; then mkdir -p runs/replaced && mv results/gemma3_270m/em_risky_finance runs/replaced/gemma3_270m_em_risky_finance.$$(date +%s); fi
	$(PY) -m psm_repro finetune experiment=em_risky_finance $(GEMMA3) hydra.run.dir=results/gemma3_270m/em_risky_finance
	@if [ -d results/judge_validation ]; then mkdir -p runs/replaced && mv results/judge_validation runs/replaced/judge_validation.$$(date +%s); fi
	$(PY) -m psm_repro validate-judge judge.out_dir=results/judge_validation
	$(PY) -m psm_repro tables

# Gemma 3 270M's SAE from scratch: the corpus (SmolLM2's re-encoded + Gemma's own text), then ~25 min of training.
sae-gemma3: setup
	$(PY) -m psm_repro build-corpus experiment=sae_gemma3_270m
	$(PY) -m psm_repro train-sae experiment=sae_gemma3_270m

# Post-training Gemma 3 270M (base) into an assistant beside a narrative control, read through its SAE
# (~45 min on 2 cores, most of it the two LoRA runs; a killed run resumes). The old card is moved aside. The blind
# sheet it writes (results/gemma3_270m/posttrain/reading/) is read by people; `make tables` adds their labels.
# The post-trained arm's adapter goes to models/gemma3_270m_posttrained (model=gemma3_270m_posttrained loads it);
# the reused-vs-new stage reads the two committed SAEs that `make sae-posttrain` trains.
results-posttrain: setup
	@if [ -d results/gemma3_270m/posttrain ]; then mkdir -p runs/replaced && mv results/gemma3_270m/posttrain runs/replaced/gemma3_270m_posttrain.$$(date +%s); fi
	$(PY) -m psm_repro posttrain experiment=posttrain_gemma3_270m hydra.run.dir=results/gemma3_270m/posttrain
	$(PY) -m psm_repro tables

# The SAEs posttrain's reused-vs-new stage compares with the base SAE (each ~27 min on 2 cores, resumable): one of
# the same shape on the post-trained model (needs models/gemma3_270m_posttrained), and a second seed of the base SAE.
sae-posttrain: setup
	$(PY) -m psm_repro train-sae experiment=sae_gemma3_270m_posttrained
	$(PY) -m psm_repro train-sae experiment=sae_gemma3_270m_seed1

tables: setup
	$(PY) -m psm_repro tables

clean-venv:
	rm -rf $(VENV)
