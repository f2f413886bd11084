# gzoo: `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-gpu lint format train bench gpu-check tensorboard clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install gzoo (editable) with its dev tools; quick when nothing changed

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install ## run the fast test suite (CPU, no network; two processes, one per core)
	$(PY) -m pytest -q -n 2

test-slow: install ## run the slow tests (minutes: interrupted and resumed runs, DDP, sweeps, notebooks, learning); CI runs them after make test
	$(PY) -m pytest -q -m slow

test-gpu: install ## run the tests that need a CUDA GPU
	$(PY) -m pytest -q -m gpu

lint: install ## ruff: the code's style and imports; mypy: the types of src/gzoo (CI runs it)
	$(VENV)/bin/ruff check src tests notebooks
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

format: install ## ruff: fix what can be fixed by itself
	$(VENV)/bin/ruff check --fix src tests notebooks
	$(VENV)/bin/ruff format src tests

# `make train` runs the demo on synthetic galaxies; `make train DATA=/path/to/kaggle` runs the paper's recipe.
RUN  ?= $(if $(DATA),recipe,demo)-$(shell date +%Y%m%d-%H%M%S)
ifdef DATA
TRAIN := data.root=$(DATA) name=$(RUN)
FINETUNE_EPOCHS ?= 50
FULLTUNE_EPOCHS ?= 50
else
# the tree head with the per-question soft-label loss in both phases: measured best on real galaxies (README)
TRAIN := experiment=demo name=$(RUN) model.head=tree optim.loss=soft_ce
FINETUNE_EPOCHS ?= 30
FULLTUNE_EPOCHS ?= 6
FINETUNE := phase.cache_features=true
FULLTUNE := optim=best
endif

train: install ## the main job: both phases from ImageNet Lite0 on synthetic galaxies (CPU, minutes); DATA=/kaggle/folder runs the recipe
	$(PY) -m gzoo.train $(TRAIN) phase=finetune trainer.max_epochs=$(FINETUNE_EPOCHS) $(FINETUNE) $(ARGS)
	$(PY) -m gzoo.train $(TRAIN) phase=fulltune trainer.max_epochs=$(FULLTUNE_EPOCHS) $(FULLTUNE) $(ARGS)

bench: install ## where time goes: decode, transforms, loader, model (images from GZOO_DATA; ARGS="model=b3 steps=3")
	$(PY) -m gzoo.tools.bench images=$${GZOO_DATA:-data/gz2}/images_training_rev1 out=outputs/bench.json $(ARGS)

gpu-check: install ## the GPU path in one table (B0/B4, bf16, channels_last, compile, each input path) + a short real run; without a GPU a CPU dry run
	$(PY) -m gzoo.tools.gpu_check out=outputs/gpu_check $(ARGS)

tensorboard: install ## open TensorBoard on every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean: ## remove caches (keeps .venv, data and outputs)
	rm -rf .pytest_cache build src/*.egg-info
