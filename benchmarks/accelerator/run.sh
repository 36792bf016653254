#!/usr/bin/env bash
# Run on the GPU machine (no network needed), from the repository root, after
# benchmarks/accelerator/fetch_wheels.sh filled benchmarks/accelerator/wheels/:
#   benchmarks/accelerator/run.sh OUT_DIR [extra benchmarks/accelerator/accelerator.py flags]
# Installs the wheels into a temporary site (no dependency resolution: the machine's JAX,
# flax, optax, orbax and torch stay as they are), puts the project on the path, and runs
# benchmarks/accelerator/accelerator.py within 6 minutes of wall time, writing accelerator.json and
# accelerator.md to OUT_DIR.
set -euo pipefail
OUT=${1:?usage: benchmarks/accelerator/run.sh OUT_DIR [flags]}
shift
WHEELS=benchmarks/accelerator/wheels
SITE=$(mktemp -d)
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU in one process: JAX takes 60 % up front (not 75 %).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
mkdir -p "$OUT"
# 330 s of figures, the rest for start-up; the timeout is the 6-minute wall.
timeout 360 python3 benchmarks/accelerator/accelerator.py --out "$OUT" --budget_s 300 "$@" \
  2>&1 | tee "$OUT/accelerator.log"
