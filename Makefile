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

.PHONY: install train test test-all lint format tensorboard report docs-pictures data clean distclean reproduce bench device-bundle gpu-check slurm-up slurm-down

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
# and rewrite the reproduction table; see docs/reproducing.md.
reproduce: install $(DATA_DEP)
	$(PY) -m src.reproduce $(DATA_ARGS) $(ARGS)

# Tests run on pytest-xdist workers, one per core (at most 4): most of their time is
# subprocesses that import torch and Lightning, one core each. A module's tests stay on one worker
# (its module fixtures, such as the SLURM cluster, are set up once).
XDIST := -n auto --maxprocesses=4 --dist loadscope

test: install
	$(PY) -m pytest $(XDIST)

test-all: install $(DATA_DEP)
	$(PY) -m pytest $(XDIST) -m "slow or not slow"

# Speed against the seeds' loop and the machine's limit (docs/speed.md): about 15 minutes on
# 2 CPU cores; writes results/bench/<cpu|gpu>.json and .md. Options go in ARGS.
bench: $(VENV)/.installed-bench $(DATA_DEP)
	$(PY) -m benchmarks $(DATA_ARGS) $(ARGS)

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -e '.[dev,bench]'
	touch $@

# What the GPU machine lacks (docs/gpu.md): wheels for its Python 3.12 at this venv's versions,
# antlr4's runtime built from its source archive (it ships no wheel), and the data archive, in a
# git-ignored folder that the device tool carries (under 64 MiB).
BUNDLE ?= .gpu-bundle
BUNDLE_PACKAGES := hydra-core omegaconf cloudpickle pyyaml filelock
device-bundle: install
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)/wheels
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(BUNDLE)/wheels \
	  $$($(PY) -m pip freeze | grep -iE '^($(shell echo $(BUNDLE_PACKAGES) | tr ' ' '|'))==')
	$(PY) -m pip wheel -q --no-deps -w $(BUNDLE)/wheels \
	  $$($(PY) -m pip freeze | grep -i '^antlr4-python3-runtime==')
	cp $(SHARED_COPY) $(BUNDLE)/cifar10-jpeg.tar.gz
	@ls $(BUNDLE)/wheels; du -sh $(BUNDLE)

# On a CUDA machine with $(BUNDLE) beside the checkout: steps (a)-(h) of docs/gpu.md, into
# results/gpu/check.json and check.md. Uses the machine's own python3 (GPU_PY), not the venv.
gpu-check:
	bash benchmarks/gpu_check.sh $(ARGS)

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

# The run or sweep folder (a sweep shows every job) with the newest TensorBoard events, or
# LOGDIR=<folder>. Runs stopped by a mistake before training write none, so they are never picked.
tensorboard: install
	@logdir="$(LOGDIR)"; \
	[ -n "$$logdir" ] || logdir="$$(find outputs/runs outputs/sweeps -name 'events.out.tfevents.*' \
		-printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2- | cut -d/ -f1-4)"; \
	if [ -z "$$logdir" ]; then echo "no TensorBoard logs in outputs/: train first, or pass LOGDIR=<folder>" >&2; exit 2; fi; \
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
