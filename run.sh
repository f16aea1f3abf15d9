#!/usr/bin/env bash
# Run a recipe end to end: data preparation (stages 0-9), then training/adaptation
# stages (10+), forwarding --stage/--stop-stage/--profile and any other flags.
#   ./run.sh                                  # the default synth recipe, full profile
#   ./run.sh --profile fast                   # every stage in minutes (CI)
#   ./run.sh --recipe synth --stage 10 --stop-stage 19
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
recipe=synth
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --recipe) recipe=$2; shift 2 ;;
    --recipe=*) recipe=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
dir="$root/egs/$recipe"
[ -d "$dir" ] || { echo "run.sh: no recipe '$recipe' (have: $(ls "$root/egs" | tr '\n' ' '))" >&2; exit 1; }
cd "$dir"
[ -x ./prepare.sh ] && ./prepare.sh "${args[@]+"${args[@]}"}"
[ -x ./run.sh ] && ./run.sh "${args[@]+"${args[@]}"}"
