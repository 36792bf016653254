#!/usr/bin/env bash
# The real-data benchmark (benchmarks/studies/realdata/run.py) on the GPU machine, many rows at once.
# Here, from the repository root (with network):
#   benchmarks/accelerator/fetch_wheels.sh
#   python benchmarks/studies/realdata/make_sets.py --out /tmp/realdata
#   mkdir -p .rd && tar czf .rd/realdata.tgz -C /tmp realdata   # .rd is git-ignored
# There (carry benchmarks/accelerator/wheels and .rd):
#   benchmarks/accelerator/realdata.sh OUT_DIR [WORKERS] [SECONDS]
# Runs the (set, row, variant) jobs of JOBS below, five seeds each, in priority order, WORKERS
# processes sharing the GPU and a persistent compilation cache (the seeds of a job compile
# once); appends every finished row to OUT_DIR/realdata_gpu.jsonl and stops starting rows
# after SECONDS. The rows carry platform=gpu, so `run.py --table` keeps them apart.
set -uo pipefail
OUT=${1:?usage: benchmarks/accelerator/realdata.sh OUT_DIR [WORKERS] [SECONDS]}
WORKERS=${2:-14}
SECONDS_LEFT=${3:-420}
SITE=$(mktemp -d)
[ -n "${SKIP_WHEELS:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  benchmarks/accelerator/wheels/*.whl || exit 1
export PYTHONPATH="$PWD:$SITE" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
[ -d /tmp/realdata ] || tar xzf .rd/realdata.tgz -C /tmp || exit 1
mkdir -p "$OUT" /tmp/realdata_logs
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

# Priority order: the pairwise-form study and the IDML rows first, then the baselines, then
# the activation study.
JOBS=()
for set in glyphs icons; do
  for variant in default a0 anchor raw; do
    JOBS+=("$set idml-ms $variant" "$set idml_iaa-ms $variant")
  done
  JOBS+=("$set idml-pa default" "$set idml-pa a0")
done
for set in glyphs icons; do
  JOBS+=("$set baseline-pa default" "$set baseline-ms default" "$set iaa-ms default")
done
for set in glyphs icons; do
  for variant in softplus_bounded official relu; do
    JOBS+=("$set idml-pa $variant" "$set idml-ms $variant" "$set idml_iaa-ms $variant")
  done
  JOBS+=("$set idml-pa raw" "$set idml-pa anchor")
done
echo "${#JOBS[@]} jobs, $WORKERS workers, ${SECONDS_LEFT}s"

DEADLINE=$(( $(date +%s) + SECONDS_LEFT ))
STEPS=${STEPS:-1200}  # STEPS=40 for a dry run.
export DEADLINE OUT STEPS
job() {  # set row variant: five seeds, no row started after the deadline.
  [ "$(date +%s)" -lt "$DEADLINE" ] || exit 0
  python3 benchmarks/studies/realdata/run.py --data /tmp/realdata --out "$OUT/realdata_gpu.jsonl" \
    --sets "$1" --rows "$2" --variants "$3" --seeds 0,1,2,3,4 --steps "$STEPS" \
    --deadline "$DEADLINE" --override data.num_threads=2 > "/tmp/realdata_logs/$1-$2-$3.log" 2>&1
  echo "$(date +%T) done $1 $2 $3 (rc $?)"
}
export -f job
printf '%s\n' "${JOBS[@]}" | timeout $(( SECONDS_LEFT + 120 )) \
  xargs -P "$WORKERS" -L 1 bash -c 'job $0 $1 $2'
tar czf "$OUT/logs.tgz" -C /tmp realdata_logs
python3 benchmarks/studies/realdata/run.py --out "$OUT/realdata_gpu.jsonl" --table | tee "$OUT/table.md"
