# Run `make help` for the list of targets.
PYTHON ?= python
# pip takes these torch builds from local disk on the project's CI machines; elsewhere any
# torch>=2.4 works (pyproject.toml), so override with `make install TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install test test-slow train lint clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

install: ## Install the package (editable) with test tools
	$(PYTHON) -m pip install $(if $(TORCH_SPEC),$(TORCH_SPEC),)
	$(PYTHON) -m pip install -e ".[dev]"

test: ## Run the default test suite (6 to 7 minutes on 2 idle CPU cores)
	$(PYTHON) -m pytest

test-slow: ## Run only the slow tests (quality gates, real-size builds)
	$(PYTHON) -m pytest -m slow

train: ## Unlearn the Eiffel Tower on the default model with 2 images
	$(PYTHON) train.py concept=eiffel shots=2

lint: ## Check the code with ruff
	$(PYTHON) -m ruff check src tests train.py

clean: ## Remove run outputs (not the few-shot image and sample caches, see cache_dir)
	rm -rf outputs multirun wandb .pytest_cache

-include Makefile.toyworld
-include Makefile.bench
