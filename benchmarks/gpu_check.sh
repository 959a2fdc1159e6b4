#!/usr/bin/env bash
# `make gpu-check` (or `bash benchmarks/gpu_check.sh [gpu_check options]` where make is missing):
# on a CUDA machine, install what .gpu-bundle/ carries (no network), unpack the data, run the
# GPU check (benchmarks/gpu_check.py), which writes results/gpu/check.json and check.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PY:-python3}
BUNDLE=${BUNDLE:-.gpu-bundle}
CACHE=${CIFAR10_LAB_CACHE:-$HOME/.cache/cifar10-lab}
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu-check: no CUDA GPU visible to $PY here; run it on a GPU machine (docs/gpu.md)" >&2
  exit 2
fi
if [ ! -d "$BUNDLE/wheels" ]; then
  echo "gpu-check: $BUNDLE/wheels is missing: run \`make device-bundle\` on a machine with network and carry $BUNDLE" >&2
  exit 2
fi
"$PY" -m pip install -q --no-index --find-links "$BUNDLE/wheels" hydra-core omegaconf cloudpickle filelock
if [ ! -f "$CACHE/cifar10-jpeg/.unpacked" ]; then
  mkdir -p "$CACHE"
  tar -xzf "$BUNDLE/cifar10-jpeg.tar.gz" -C "$CACHE"
  touch "$CACHE/cifar10-jpeg/.unpacked"
fi
exec "$PY" -m benchmarks.gpu_check --data "$CACHE/cifar10-jpeg" "$@"
