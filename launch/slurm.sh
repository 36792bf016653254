#!/usr/bin/env bash
# Train on a SLURM GPU cluster: writes an sbatch script (one task per node, each driving
# its node's GPUs; coordinator = the first node, process count and id from SLURM) and
# submits it.
#
#   bash launch/slurm.sh [--dry-run] --nodes=2 --gpus_per_node=8 \
#       --config=configs/idml_pa.py:sop --workdir=/shared/runs/idml_sop [--data_dir=/data] \
#       [--partition=P] [--account=A] [--time=24:00:00] [--cpus_per_task=32] [--port=12345] \
#       [--venv=/shared/venv] [--extra="--config.model.dtype=bfloat16"]
#
# --dry-run prints the sbatch script and the sbatch command without submitting. The
# workdir must be on a filesystem all nodes share. The job is --requeue-able: a pre-empted
# or requeued job resumes from the workdir's last checkpoint (same command).
set -euo pipefail
source "$(dirname "$0")/common.sh"

NODES=1 GPUS=8 CONFIG="" WORKDIR="" DATA_DIR="" PARTITION="" ACCOUNT="" TIME="24:00:00"
CPUS=16 PORT=12345 VENV="" EXTRA="" NAME="idml_jax"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --nodes=*) NODES="${arg#*=}" ;;
    --gpus_per_node=*) GPUS="${arg#*=}" ;;
    --config=*) CONFIG="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --data_dir=*) DATA_DIR="${arg#*=}" ;;
    --partition=*) PARTITION="${arg#*=}" ;;
    --account=*) ACCOUNT="${arg#*=}" ;;
    --time=*) TIME="${arg#*=}" ;;
    --cpus_per_task=*) CPUS="${arg#*=}" ;;
    --port=*) PORT="${arg#*=}" ;;
    --venv=*) VENV="${arg#*=}" ;;
    --name=*) NAME="${arg#*=}" ;;
    --extra=*) EXTRA="${arg#*=}" ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $arg (see: bash $0 --help)" ;;
  esac
done
require config "$CONFIG"
require workdir "$WORKDIR"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer; got $NODES"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

script() {
  echo "#!/usr/bin/env bash"
  echo "#SBATCH --job-name=$NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$GPUS"
  echo "#SBATCH --cpus-per-task=$CPUS"
  echo "#SBATCH --time=$TIME"
  echo "#SBATCH --requeue"
  echo "#SBATCH --output=$WORKDIR/slurm-%j.out"
  [[ -n "$PARTITION" ]] && echo "#SBATCH --partition=$PARTITION"
  [[ -n "$ACCOUNT" ]] && echo "#SBATCH --account=$ACCOUNT"
  echo "set -euo pipefail"
  echo "cd $ROOT"
  [[ -n "$VENV" ]] && echo ". $VENV/bin/activate"
  echo 'export COORDINATOR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):'"$PORT"'"'
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"
  # Single quotes: each task expands its own SLURM_PROCID.
  echo "srun --kill-on-bad-exit=1 bash -c 'exec $(train_command) --multihost" \
       '--coordinator_address=$COORDINATOR --num_processes=$SLURM_NTASKS' \
       "--process_id=\$SLURM_PROCID'"
}

JOB="$WORKDIR/job.sbatch"
if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $JOB:"
  script
else
  mkdir -p "$WORKDIR"
  script > "$JOB"
fi
run sbatch "$JOB"
