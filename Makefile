# gzoo: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-slow train tensorboard clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install gzoo (editable) with its dev tools; quick when nothing changed

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install ## run the fast test suite (CPU, no network)
	$(PY) -m pytest -q

test-slow: install ## run the slow tests too
	$(PY) -m pytest -q -m "slow or not slow"

train: install ## the main job: both phases of the recipe on the Kaggle data in GZOO_DATA (default data/gz2)
	$(PY) -m gzoo.train phase=finetune $(ARGS)
	$(PY) -m gzoo.train phase=fulltune $(ARGS)

tensorboard: install ## open TensorBoard on every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove caches (keeps .venv, data and outputs)
	rm -rf .pytest_cache build src/*.egg-info
