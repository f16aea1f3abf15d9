#!/usr/bin/env bash
# Run a recipe end to end: data preparation (stages 0-9), then training/adaptation
# stages (10+), forwarding --stage/--stop-stage/--profile and any other flags.
#   ./run.sh                                  # the default synth recipe, full profile
#   ./run.sh --profile fast                   # every stage in minutes (CI)
#   ./run.sh --recipe synth --stage 10 --stop-stage 19
# ./prepare.sh is the same with --prepare-only (stages 0-9 only).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
recipe=synth
prepare_only=false
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --recipe) recipe=$2; shift 2 ;;
    --recipe=*) recipe=${1#*=}; shift ;;
    --prepare-only) prepare_only=true; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
dir="$root/egs/$recipe"
[ -d "$dir" ] || { echo "$(basename "$0"): no recipe '$recipe' (have: $(ls "$root/egs" | tr '\n' ' '))" >&2; exit 1; }
cd "$dir"
if [ -x ./prepare.sh ]; then ./prepare.sh "${args[@]+"${args[@]}"}"; fi
if [ "$prepare_only" = false ] && [ -x ./run.sh ]; then ./run.sh "${args[@]+"${args[@]}"}"; fi
