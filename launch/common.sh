# Shared by the launch scripts: --dry-run printing and flag parsing.
# shellcheck shell=bash

DRY_RUN=0

# quote ARG: ARG as the shell reads it back (single quotes only where needed).
quote() {
  local re='^[][A-Za-z0-9_./:=,+@%^~-]+$' key val
  if [[ "$1" =~ $re ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    key="${BASH_REMATCH[1]}" val="${BASH_REMATCH[2]}"
    printf "%s'%s'" "$key" "${val//\'/\'\\\'\'}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# run CMD...: prints the command (copy-pasteable), then runs it unless --dry-run.
run() {
  printf '+'
  local arg
  for arg in "$@"; do printf ' '; quote "$arg"; done
  printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

die() {
  echo "error: $*" >&2
  exit 2
}

# require NAME VALUE FLAG: fails naming the missing flag.
require() {
  [[ -n "$2" ]] || die "missing --$1 (see: bash $0 --help)"
}

# The training command every process runs, from the flags the user gave.
train_command() {
  local cmd="python -m idml_jax.main --config=$CONFIG --workdir=$WORKDIR"
  [[ -n "${DATA_DIR:-}" ]] && cmd+=" --config.data.data_dir=$DATA_DIR"
  [[ -n "${EXTRA:-}" ]] && cmd+=" $EXTRA"
  echo "$cmd"
}
