#!/usr/bin/env bash
# One-script GPU check (fits in 5 minutes on one H100/H200): training images/s of histomlf's
# simplecnn, resnet50 and vgg16 at 50x50, batch 256, mixed precision, Keras 3 on JAX.
#
# The GPU image has JAX, PyTorch, h5py, ml-dtypes, rich, absl-py, numpy, packaging but no
# TensorFlow, no keras and no network. Fetch the missing wheels here once (2.2 MB; /.whl/ is
# git-ignored), for the image's Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex optree
# Then run it there with `.whl` carried (device tool: command "bash benchmarks/gpu_check.sh",
# carry [".whl"], timeout_s 360). The result lands in $OUT/gpu_check.json (copy it to
# benchmarks/results/gpu_check.json to have `benchmarks.run` report it) and $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/histomlf-site .whl/*.whl
export PYTHONPATH="/tmp/histomlf-site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 280 python3 -m benchmarks.gpu_check --json "$out/gpu_check.json" "$@" 2>&1 \
  | tee "$out/gpu_check.log"
