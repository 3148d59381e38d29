# captioner: every command a user or CI runs. `make help` lists them.
PY ?= python
SHARED ?= ../shared
TORCH_HOME ?= $(HOME)/.cache/torch
export TORCH_HOME

include mk/weights.mk

.PHONY: help install demo test test-slow lint weights ui
help:  ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## install the package (editable) with its test extras
	$(PY) -m pip install -q -e ".[test]"

lint:  ## ruff check + format check
	ruff check . && ruff format --check .
