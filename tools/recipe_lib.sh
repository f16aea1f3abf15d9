#!/usr/bin/env bash
# Shared helpers for recipe scripts (sourced). Kept tiny: recipes hold flags, not logic.
#
#   check_stage_range                      # after parse_options.sh: integers, stage <= stop_stage
#   if stage_in 10; then stage_begin 10 "train CTC"; python -m ...; stage_end; fi
#   stages_done                            # at the end: fails when no stage lay in the range
#
#   side_start FUNC ... side_join FUNC     # FUNC (stage blocks) side by side on a core of its own
#                                          # when $side_by_side is true, else run at side_join
#   set_launcher                           # after parse_options.sh: $dist_py from --launcher
#   $dist_py speechadapt.bin.train ...     # a distributed entry point (training, decoding)
#
# stage_end appends "recipe<TAB>stage<TAB>name<TAB>seconds<TAB>profile<TAB>seconds since the run began" to
# $stage_times (default exp/stage_times.tsv), which the report stage reads. With a
# reference of the same format (conf/stage_times_<profile>.tsv: a measured run of the
# profile, committed) it also says how long the rest of the run should take; the
# top-level ./run.sh exports SPEECHADAPT_RUN_START so the elapsed time spans
# prepare.sh and run.sh.

_rl_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_rl_known=()
_rl_ran=0
declare -A _rl_side_pid=() _rl_side_log=()
_rl_threads_before=
: "${SPEECHADAPT_RUN_START:=$(date +%s)}"

check_stage_range() {
  local v
  for v in "${stage:?}" "${stop_stage:?}"; do
    [[ "$v" =~ ^[0-9]+$ ]] || { echo "$(basename "$0"): --stage/--stop-stage must be integers, got '$v'" >&2; exit 1; }
  done
  if [ "$stage" -gt "$stop_stage" ]; then
    echo "$(basename "$0"): --stage $stage is after --stop-stage $stop_stage: nothing would run" >&2
    exit 1
  fi
}

set_launcher() {  # --launcher local: python -m (it spawns --world-size processes itself);
  # slurm: tools/slurm_launch.sh, torchrun on every node of the Slurm job (--world-size unused)
  case "${launcher:-local}" in
    local) dist_py="python -m" ;;
    slurm) dist_py="$_rl_dir/slurm_launch.sh" ;;
    *) echo "$(basename "$0"): --launcher must be local or slurm, got '$launcher'" >&2; exit 1 ;;
  esac
}

stage_in() {  # true when stage $1 lies in [stage, stop_stage]
  _rl_known+=("$1")
  [ "$1" -ge "${stage:?}" ] && [ "$1" -le "${stop_stage:?}" ]
}

stage_begin() {
  _rl_stage=$1; shift; _rl_name="$*"; _rl_t0=$(date +%s.%N); _rl_ran=$((_rl_ran + 1))
  echo "$(date '+%F %T') stage $_rl_stage: $_rl_name"
}

stage_end() {
  local t1 secs file
  t1=$(date +%s.%N)
  secs=$(awk -v a="$_rl_t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  file=${stage_times:-exp/stage_times.tsv}
  mkdir -p "$(dirname "$file")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${recipe_name:-$(basename "$PWD")}" "$_rl_stage" "$_rl_name" "$secs" \
    "${profile:-}" "$(( $(date +%s) - SPEECHADAPT_RUN_START ))" >> "$file"
  echo "$(date '+%F %T') stage $_rl_stage done in ${secs} s$(_rl_eta)"
}

_rl_eta() {  # ", run Xs so far, about Ys left" (Y from the profile's reference stage times:
  # its run's time at the end of the last stage in range minus at the end of this one, so
  # stages that ran side by side count once; without that column, the sum of the stages after)
  local ref=${stage_times_ref:-conf/stage_times_${profile:-}.tsv} elapsed left
  elapsed=$(( $(date +%s) - SPEECHADAPT_RUN_START ))
  if [ -f "$ref" ]; then
    left=$(awk -F'\t' -v cur="$_rl_stage" -v name="$_rl_name" -v last="${stop_stage:-100}" '
      $2 + 0 > cur + 0 && $2 + 0 <= last + 0 {s += $4}
      NF >= 6 && $2 + 0 <= last + 0 && $6 + 0 > end_last {end_last = $6 + 0}
      NF >= 6 && $2 == cur && $3 == name {end_cur = $6 + 0; found = 1}
      END {v = found ? end_last - end_cur : s; printf "%d", v < 0 ? 0 : v}' "$ref")
    printf ', run %d s so far, about %d s left (%s)' "$elapsed" "$left" "$ref"
  else
    printf ', run %d s so far' "$elapsed"
  fi
}

stages_done() {  # after the last stage_in: say what ran, fail when nothing did
  if [ "$_rl_ran" -eq 0 ]; then
    echo "$(basename "$0"): no stage lies in $stage..$stop_stage (this script's stages: ${_rl_known[*]})" >&2
    exit 1
  fi
  echo "$(basename "$0") ($profile): $_rl_ran stage(s) of $stage..$stop_stage done"
}

# ---- side by side: independent stage blocks on the two cores ----------------------------
# side_start FUNC runs FUNC (a function of `if stage_in N; then ...; fi` blocks whose inputs
# are ready) in the background with one thread, logging to $exp_root/logs/FUNC.log; the
# stages in the foreground get one thread too meanwhile. side_join FUNC waits for it (and
# prints its stage lines), or, when it was not started, runs FUNC right there.
side_start() {
  [ "${side_by_side:-false}" = true ] || return 0
  local log="${exp_root:-exp}/logs/$1.log"
  mkdir -p "$(dirname "$log")"
  ( export OMP_NUM_THREADS=1; "$1" ) > "$log" 2>&1 &
  _rl_side_pid[$1]=$!
  _rl_side_log[$1]=$log
  if [ ${#_rl_side_pid[@]} -eq 1 ]; then _rl_threads_before=${OMP_NUM_THREADS-unset}; fi
  export OMP_NUM_THREADS=1
  echo "$(date '+%F %T') $1: started side by side (pid ${_rl_side_pid[$1]}, one thread each; log $log)"
}

side_join() {
  local name=$1 rc=0 log
  if [ -z "${_rl_side_pid[$name]:-}" ]; then "$name"; return; fi
  log=${_rl_side_log[$name]}
  wait "${_rl_side_pid[$name]}" || rc=$?
  unset "_rl_side_pid[$name]"
  grep -E '^[0-9-]+ [0-9:]+ stage ' "$log" | sed "s/^/[$name] /" || true
  _rl_ran=$((_rl_ran + $(grep -cE '^[0-9-]+ [0-9:]+ stage [0-9]+ done' "$log" || true)))
  if [ ${#_rl_side_pid[@]} -eq 0 ]; then
    if [ "$_rl_threads_before" = unset ]; then unset OMP_NUM_THREADS; else export OMP_NUM_THREADS=$_rl_threads_before; fi
  fi
  if [ "$rc" -ne 0 ]; then
    echo "$(basename "$0"): $name (side by side) failed with exit $rc; the end of its log $log:" >&2
    tail -n 30 "$log" >&2
    exit "$rc"
  fi
}

_rl_kill_tree() {  # the side job's subshell and the python under it
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do _rl_kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

_rl_stop_side() {  # the script stopped early: do not leave side-by-side stages running
  local pid
  for pid in "${_rl_side_pid[@]}"; do _rl_kill_tree "$pid"; done
}
trap _rl_stop_side EXIT
