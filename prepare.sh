#!/usr/bin/env bash
# Data preparation only (stages 0-9) of a recipe: ./prepare.sh [--recipe synth] [--profile fast] ...
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
[ -x "$dir/prepare.sh" ] || { echo "prepare.sh: no recipe '$recipe' with a prepare.sh" >&2; exit 1; }
cd "$dir" && ./prepare.sh "${args[@]+"${args[@]}"}"
