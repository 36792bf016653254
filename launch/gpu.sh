#!/usr/bin/env bash
# Train on one machine with one or more GPUs: one process drives all visible GPUs
# (data-parallel over the ("data",) mesh; no jax.distributed needed).
#
#   bash launch/gpu.sh [--dry-run] [--install] [--gpus=0,1,2,3] \
#       --config=configs/idml_pa.py:cub --workdir=runs/idml_cub [--data_dir=/data] \
#       [--extra="--config.model.dtype=bfloat16"]
#
# --install pip-installs the project with CUDA 12 jaxlib first. Re-running the same command
# resumes from the workdir's last checkpoint (after a crash, Ctrl-C or pre-emption).
set -euo pipefail
source "$(dirname "$0")/common.sh"

CONFIG="" WORKDIR="" DATA_DIR="" GPUS="" EXTRA="" INSTALL=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --install) INSTALL=1 ;;
    --gpus=*) GPUS="${arg#*=}" ;;
    --config=*) CONFIG="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --extra=*) EXTRA="${arg#*=}" ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument $arg (see: bash $0 --help)" ;;
  esac
done
require config "$CONFIG"
require workdir "$WORKDIR"
cd "$(dirname "$0")/.."

if [[ "$INSTALL" == 1 ]]; then
  run python -m pip install -q -e . "jax[cuda12]>=0.10,<0.11"
fi
env_vars=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.9)
[[ -n "$GPUS" ]] && env_vars+=(CUDA_VISIBLE_DEVICES="$GPUS")
read -r -a cmd <<< "$(train_command)"
run env "${env_vars[@]}" "${cmd[@]}"
