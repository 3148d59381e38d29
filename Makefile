# captioner: every command a user or CI runs. `make help` lists them.
PY ?= python
SHARED ?= ../shared
TORCH_HOME ?= $(HOME)/.cache/torch
export TORCH_HOME

include mk/weights.mk
-include mk/bench.mk

.PHONY: help install demo test test-fast test-slow lint ui sweep-smoke sweep search-check report results
help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## install the package (editable) with its test extras
	$(PY) -m pip install -q -e ".[test]"

demo: install weights  ## the main job: train on the generated shapes set, print a caption, write an attention figure
	$(PY) train.py experiment=demo

test: install weights  ## every test, slow ones included (exact resume, DDP, MLflow, golden run): the command CI runs
	$(PY) -m pytest -m "slow or not slow"

test-fast: install weights  ## the default suite only (plain `pytest`: the fast tests, a couple of minutes)
	$(PY) -m pytest

test-slow: install weights  ## slow and data-heavy checks only
	$(PY) -m pytest -m slow

lint:  ## ruff check + format check
	ruff check . && ruff format --check .

ui:  ## MLflow UI on http://127.0.0.1:5000 over the local store (compare runs and sweeps)
	$(PY) -m captioner.ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

SWEEPS := optim_dropout pretrain_finetune teacher_forcing optical_finetune label_smoothing tf_scheduler extra_claims
sweep-smoke: install weights  ## every seed ablation group end to end at smoke scale (2 seeds)
	for s in $(SWEEPS); do $(PY) train.py -m sweep=$$s scale=smoke && $(PY) sweeps/report.py --experiment sweep-$$s-smoke || exit 1; done

GROUP ?= pretrain_finetune
SCALE ?= cpu
sweep: install weights  ## one seed ablation group (versions x seeds) and its report, e.g. make sweep GROUP=label_smoothing SCALE=cpu
	$(PY) train.py -m sweep=$(GROUP) scale=$(SCALE)
	$(PY) sweeps/report.py --experiment sweep-$(GROUP)-$(SCALE)

SEARCH ?= quality
SEEDS ?= 5
search-check: install weights  ## a search's best trial against its base recipe, SEEDS seeds each, paired CIs: make search-check SEARCH=quality SCALE=cpu
	base=$$($(PY) sweeps/search_report.py --experiment search-$(SEARCH)-$(SCALE) --overrides base) && \
	best=$$($(PY) sweeps/search_report.py --experiment search-$(SEARCH)-$(SCALE) --overrides best) || exit 2; \
	check="'trainer.seed=range(0,$(SEEDS))' logger.experiment=sweep-search_$(SEARCH)-$(SCALE)"; \
	eval $(PY) train.py -m scale=$(SCALE) $$base $$check +logger.tags.seed_version=base & pid=$$!; sleep 5; \
	eval $(PY) train.py -m scale=$(SCALE) $$best $$check +logger.tags.seed_version=best; \
	rc=$$?; wait $$pid && test $$rc -eq 0
	$(PY) sweeps/report.py --experiment sweep-search_$(SEARCH)-$(SCALE)

report:  ## mean/CI per version + claim verdicts per sweep experiment in the local MLflow store (sweeps/results/), then the SCALE's overview
	for e in $$($(PY) -c "from mlflow.tracking import MlflowClient as C; print(' '.join(x.name for x in C('sqlite:///mlflow.db').search_experiments() if x.name.startswith('sweep-')))"); do $(PY) sweeps/report.py --experiment $$e; done
	$(PY) sweeps/report.py --overview $(SCALE)

results:  ## docs/results.md and docs/results_summary.md from bench/results/*.json and sweeps/results/*.json (runs nothing)
	$(PY) docs/build_results.py
