#!/usr/bin/env bash
# Run on a machine with network, from the repository root:
#   benchmarks/accelerator/fetch_wheels.sh
# Downloads, for Python 3.12 manylinux x86-64, the dependencies of the project that the GPU
# image (JAX 0.11 + CUDA, flax, optax, orbax-checkpoint, PyTorch, timm, numpy, scikit-learn,
# Pillow, matplotlib, ...) does not have, into benchmarks/accelerator/wheels/ (git-ignored),
# without their own dependencies (those are in the image), and prints the folder's size.
# TensorFlow Datasets is left out: the kit uses synthetic data and generated JPEGs.
set -euo pipefail
cd "$(dirname "$0")"
WHEELS=wheels
mkdir -p "$WHEELS"
PACKAGES=(
  "ml-collections>=1.0,<2"
  "grain>=0.2.15,<0.3"
  "array_record>=0.8,<0.9"
  "dm-tree>=0.1.8"
  "portpicker>=1.6"
  "tensorboardX>=2.6"
  "scann>=1.4,<1.5"
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
ls -1 "$WHEELS"
du -sh "$WHEELS"
