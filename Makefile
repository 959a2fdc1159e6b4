# cifar10-lab: `make train` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
# Extra Hydra overrides for train/eval, e.g. make train ARGS="model=conv3 trainer.max_epochs=4"
ARGS ?=

# A local copy of CIFAR-10 beside the checkout (as on the project's own machines, which cannot
# reach the official download) is unpacked once and used instead of the download.
SHARED_COPY ?= ../shared/data/cifar10-jpeg.tar.gz
CACHE_DIR ?= $(HOME)/.cache/cifar10-lab
LOCAL_DATA := $(CACHE_DIR)/cifar10-jpeg
ifneq ($(wildcard $(SHARED_COPY)),)
DATA_ARGS ?= data.source=folder data.root=$(LOCAL_DATA)
DATA_DEP := $(LOCAL_DATA)/.unpacked
endif

.PHONY: install train test test-all lint format tensorboard report docs-pictures data clean distclean reproduce bench slurm-up slurm-down

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

data: $(DATA_DEP)

$(LOCAL_DATA)/.unpacked: $(SHARED_COPY)
	mkdir -p $(CACHE_DIR)
	tar -xzf $(SHARED_COPY) -C $(CACHE_DIR)
	touch $@

train: install $(DATA_DEP)
	$(PY) -m src.train $(DATA_ARGS) $(ARGS)

# Rerun the seed studies this machine can afford (runs already in results/reproduce.json are kept)
# and rewrite the README's reproduction table; see README "Reproducing the studies".
reproduce: install $(DATA_DEP)
	$(PY) -m src.reproduce $(DATA_ARGS) $(ARGS)

test: install
	$(PY) -m pytest

test-all: install $(DATA_DEP)
	$(PY) -m pytest -m "slow or not slow"

# Speed against the seeds' loop and the machine's limit (README, "Speed"): about 15 minutes on
# 2 CPU cores; writes benchmarks/results/<cpu|gpu>.json and .md. Options go in ARGS.
bench: $(VENV)/.installed-bench $(DATA_DEP)
	$(PY) -m benchmarks $(DATA_ARGS) $(ARGS)

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -e '.[dev,bench]'
	touch $@

# A one-node SLURM cluster on this machine (root; apt-get install slurm-wlm munge), for the
# slurm tests and docs/slurm.md; slurm-down stops it and leaves nothing running.
slurm-up:
	scripts/slurm.sh up

slurm-down:
	scripts/slurm.sh down

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The most recently changed run or sweep folder (a sweep shows every job), or LOGDIR=<folder>.
tensorboard: install
	@logdir="$(LOGDIR)"; \
	[ -n "$$logdir" ] || logdir="$$(ls -dt outputs/runs/*/* outputs/sweeps/*/* 2>/dev/null | head -n 1)"; \
	if [ -z "$$logdir" ]; then echo "no run or sweep in outputs/: train first, or pass LOGDIR=<folder>" >&2; exit 2; fi; \
	echo "TensorBoard on $$logdir"; \
	$(VENV)/bin/tensorboard --logdir "$$logdir" $(TB_ARGS)

# Tables and plots of a sweep (default: the latest one), or SWEEP=<folder>.
report: install
	$(PY) -m src.report $(SWEEP)

# The README's pictures (docs/*.png) from a short real-data sweep (see docs/make_pictures.sh).
docs-pictures: install $(DATA_DEP)
	PY=$(PY) DATA_ARGS="$(DATA_ARGS)" bash docs/make_pictures.sh

clean:
	find outputs -mindepth 1 -not -name .gitkeep -delete
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
