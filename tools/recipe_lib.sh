#!/usr/bin/env bash
# Shared helpers for recipe scripts (sourced). Kept tiny: recipes hold flags, not logic.
#
#   if stage_in 10; then stage_begin 10 "train CTC"; python -m ...; stage_end; fi
#
# stage_end appends "recipe<TAB>stage<TAB>name<TAB>seconds<TAB>profile" to
# $stage_times (default exp/stage_times.tsv), which the report stage reads.

stage_in() {  # true when stage $1 lies in [stage, stop_stage]
  [ "$1" -ge "${stage:?}" ] && [ "$1" -le "${stop_stage:?}" ]
}

stage_begin() {
  _rl_stage=$1; shift; _rl_name="$*"; _rl_t0=$(date +%s.%N)
  echo "$(date '+%F %T') stage $_rl_stage: $_rl_name"
}

stage_end() {
  local t1 secs file
  t1=$(date +%s.%N)
  secs=$(awk -v a="$_rl_t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  file=${stage_times:-exp/stage_times.tsv}
  mkdir -p "$(dirname "$file")"
  printf '%s\t%s\t%s\t%s\t%s\n' "${recipe_name:-$(basename "$PWD")}" "$_rl_stage" "$_rl_name" "$secs" "${profile:-}" >> "$file"
  echo "$(date '+%F %T') stage $_rl_stage done in ${secs} s"
}
