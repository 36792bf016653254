#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create (or reuse) it, install the project on every
# worker, start the same command on all workers, stream logs, stop, delete.
#
#   bash launch/tpu.sh [--dry-run] --name=idml --zone=us-central2-b --accelerator=v4-32 \
#       --config=configs/idml_pa.py:sop --workdir=/gcs/runs/idml_sop \
#       [--data_dir=/gcs/data] [--bucket=my-bucket] [--version=tpu-ubuntu2204-base] \
#       [--project=P] [--spot] [--extra="--config.model.dtype=bfloat16"] [STEP ...]
#
# STEPs (default: create setup train logs): create | setup (copies the committed HEAD) |
# train | logs | stop (Ctrl-C: the last checkpoint is kept) | delete.
# The workdir must be shared by all workers (checkpoints are written together): --bucket
# mounts a GCS bucket with gcsfuse at /gcs on every worker. Resume a pre-empted run by
# running `train` again with the same workdir. jax.distributed.initialize() needs no
# arguments on TPU VMs.
set -euo pipefail
source "$(dirname "$0")/common.sh"

NAME="" ZONE="" ACCEL="" CONFIG="" WORKDIR="" DATA_DIR="" BUCKET="" PROJECT="" SPOT=0
VERSION="tpu-ubuntu2204-base" EXTRA="" STEPS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --name=*) NAME="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --accelerator=*) ACCEL="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --config=*) CONFIG="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --bucket=*) BUCKET="${arg#*=}" ;;
    --spot) SPOT=1 ;;
    --extra=*) EXTRA="${arg#*=}" ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    create|setup|train|logs|stop|delete) STEPS+=("$arg") ;;
    *) die "unknown argument $arg (see: bash $0 --help)" ;;
  esac
done
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(create setup train logs)
require name "$NAME"
require zone "$ZONE"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
REMOTE_DIR="~/idml_jax"
VENV="~/idml_jax_venv"

on_all() { run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }

for step in "${STEPS[@]}"; do
  case "$step" in
    create)
      require accelerator "$ACCEL"
      create=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL"
              --version="$VERSION")
      [[ "$SPOT" == 1 ]] && create+=(--spot)
      if [[ "$DRY_RUN" == 1 ]]; then
        echo "# reuse the TPU VM if it exists, else create it:"
        run "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}"
        run "${create[@]}"
      elif "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
        echo "# TPU VM $NAME exists: reusing it."
      else
        run "${create[@]}"
      fi ;;
    setup)
      archive="/tmp/idml_jax-$NAME.tar.gz"
      run git -C "$(cd "$(dirname "$0")/.." && pwd)" archive --format=tar.gz -o "$archive" HEAD
      run "${GCLOUD[@]}" scp "$archive" "$NAME:~/idml_jax.tar.gz" "${WHERE[@]}" --worker=all
      setup="mkdir -p $REMOTE_DIR && tar xzf ~/idml_jax.tar.gz -C $REMOTE_DIR"
      setup+=" && python3 -m venv $VENV && $VENV/bin/pip install -q -U pip"
      setup+=" && $VENV/bin/pip install -q -e $REMOTE_DIR \"jax[tpu]>=0.10,<0.11\""
      if [[ -n "$BUCKET" ]]; then
        setup+=" && sudo mkdir -p /gcs && sudo chown \$USER /gcs"
        setup+=" && (mountpoint -q /gcs || gcsfuse --implicit-dirs $BUCKET /gcs)"
      fi
      on_all "$setup" ;;
    train)
      require config "$CONFIG"
      require workdir "$WORKDIR"
      cmd="$(train_command) --multihost"
      on_all "cd $REMOTE_DIR && nohup $VENV/bin/$cmd > ~/train.log 2>&1 &" ;;
    logs)
      run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 --command="tail -n +1 -f ~/train.log" ;;
    stop)
      on_all "pkill -INT -f idml_jax.main || true" ;;
    delete)
      run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet ;;
  esac
done
