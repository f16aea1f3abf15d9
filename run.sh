#!/usr/bin/env bash
# Run a recipe end to end: data preparation (stages 0-9, the recipe's prepare.sh), then
# training/adaptation stages (10+, its run.sh). --stage/--stop-stage choose which of the
# two run; every other option goes to the script(s) that know it (an option neither
# knows is an error).
#   ./run.sh                                  # the default synth recipe, default profile (about 2 h on 2 cores, measured)
#   ./run.sh --profile full                   # the longer, stronger run (hours)
#   ./run.sh --profile fast                   # every stage in minutes (CI)
#   ./run.sh --recipe synth --stage 10 --stop-stage 19 --world-size 2
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
export SPEECHADAPT_RUN_START=${SPEECHADAPT_RUN_START:-$(date +%s)}  # progress lines count from here
[ -d "$dir" ] || { echo "$(basename "$0"): no recipe '$recipe' (have: $(ls "$root/egs" | tr '\n' ' '))" >&2; exit 1; }
cd "$dir"

# The options a recipe script takes, from its --help (parse_options.sh lists them).
known_options() { [ -x "./$1" ] && "./$1" --help 2>/dev/null | sed -n 's/^  \(--[a-z0-9-]*\) .*/\1/p; s/^  \(--[a-z0-9-]*\)$/\1/p'; }
prep_known=" $(known_options prepare.sh | tr '\n' ' ') "
run_known=" $(known_options run.sh | tr '\n' ' ') "
prep_args=(); run_args=(); first=0; last=100
set -- "${args[@]+"${args[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) name=${1%%=*}; value=${1#*=}; shift ;;
    --*) name=$1; [ $# -ge 2 ] || { echo "$(basename "$0"): option $1 needs a value" >&2; exit 1; }; value=$2; shift 2 ;;
    *) echo "$(basename "$0"): unexpected argument '$1'" >&2; exit 1 ;;
  esac
  case "$name" in --stage) first=$value ;; --stop-stage) last=$value ;; esac
  taken=false
  if [[ "$prep_known" == *" $name "* ]]; then prep_args+=("$name" "$value"); taken=true; fi
  if [[ "$run_known" == *" $name "* ]]; then run_args+=("$name" "$value"); taken=true; fi
  [ "$taken" = true ] || { echo "$(basename "$0"): unknown option $name for recipe $recipe" >&2; exit 1; }
done
for v in "$first" "$last"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "$(basename "$0"): --stage/--stop-stage must be integers, got '$v'" >&2; exit 1; }
done
[ "$first" -le "$last" ] || { echo "$(basename "$0"): --stage $first is after --stop-stage $last" >&2; exit 1; }
if [ -x ./prepare.sh ] && [ "$first" -le 9 ]; then ./prepare.sh "${prep_args[@]+"${prep_args[@]}"}"; fi
if [ "$prepare_only" = false ] && [ -x ./run.sh ] && [ "$last" -ge 10 ]; then ./run.sh "${run_args[@]+"${run_args[@]}"}"; fi
