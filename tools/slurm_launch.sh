#!/usr/bin/env bash
# Run a speechadapt entry point under torchrun on every node of a Slurm allocation (or
# on this machine when not in a Slurm job), e.g. from a recipe stage with --launcher slurm:
#
#   tools/slurm_launch.sh [options] MODULE [ARGS...]
#   tools/slurm_launch.sh speechadapt.bin.train --config conf/llm_asr.yaml ...
#
# Options (before MODULE):
#   --nproc-per-node N   processes per node (default: $SLURM_GPUS_ON_NODE, $SLURM_GPUS_PER_NODE,
#                        the GPUs nvidia-smi lists, else 1)
#   --nnodes N           nodes (default: $SLURM_JOB_NUM_NODES, else 1)
#   --port P             rendezvous port on the first node (default: 29500 + job id % 20000;
#                        a free port outside Slurm)
#   --log-dir D          torchrun's per-rank logs, D/node-K/<run>/attempt_0/<local rank>/
#                        (default: log/launch-<job id or time>)
#   --dry-run            print the command, run nothing
#
# Rendezvous: torchrun's c10d on the first host of $SLURM_JOB_NODELIST, id $SLURM_JOB_ID;
# srun starts one torchrun per node. Preemption: Slurm's --signal=USR1@T reaches every
# process of the step (outside Slurm, a SIGUSR1 to this script is passed down to the
# ranks); torchrun ignores SIGUSR1 (set here), the ranks catch it, save and
# exit 75, and so does this script (the ranks' status does not pass through torchrun:
# rank 0 writes $SPEECHADAPT_PREEMPT_MARKER, read here). Exit status: 75 preempted
# (resume: the same command; recipes pass --start-epoch auto), else torchrun's.
set -uo pipefail
nproc_per_node="" nnodes="" port="" log_dir="" dry_run=false
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc-per-node) nproc_per_node=$2; shift 2 ;;
    --nnodes) nnodes=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --log-dir) log_dir=$2; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    --help|-h) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --*) echo "$(basename "$0"): unknown option $1 (options come before the module)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $(basename "$0") [options] MODULE [ARGS...] (--help)" >&2; exit 2; }
module=$1; shift
python=${PYTHON:-python}

in_slurm=false
[ -n "${SLURM_JOB_ID:-}" ] && in_slurm=true

first_host() {  # the first host of a Slurm node list: gpu[03-04,07],cpu1 -> gpu03
  local list=$1 first prefix inner
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$list" | head -n 1
    return
  fi
  first=${list%%,*}
  case "$first" in
    *"["*) prefix=${first%%\[*}; inner=${list#*\[}; inner=${inner%%\]*}; echo "$prefix${inner%%[-,]*}" ;;
    *) echo "$first" ;;
  esac
}

if [ -z "$nproc_per_node" ]; then
  gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
  gpus=${gpus##*:}  # "h100:8" -> 8
  if [ -z "$gpus" ] && command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || gpus=""
  fi
  nproc_per_node=${gpus:-1}
  [ "$nproc_per_node" -ge 1 ] 2>/dev/null || nproc_per_node=1
fi
if $in_slurm; then
  nnodes=${nnodes:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}
  head=$(first_host "${SLURM_JOB_NODELIST:?SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not}")
  port=${port:-$((29500 + SLURM_JOB_ID % 20000))}
  run_id=$SLURM_JOB_ID
else
  nnodes=${nnodes:-1}
  [ "$nnodes" -eq 1 ] || { echo "$(basename "$0"): --nnodes $nnodes outside a Slurm job: start it with sbatch/salloc" >&2; exit 2; }
  head=127.0.0.1
  port=${port:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  run_id=local-$$
fi
log_dir=${log_dir:-log/launch-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$log_dir"
log_dir=$(cd "$log_dir" && pwd)  # every node sees the same absolute path (a shared file system)
marker=$log_dir/preempted-$run_id.json
rm -f "$marker"

torchrun=("$python" -m torch.distributed.run --nnodes="$nnodes" --nproc-per-node="$nproc_per_node"
  --rdzv-backend=c10d --rdzv-endpoint="$head:$port" --rdzv-id="$run_id" --max-restarts=0
  --tee=3 -m "$module" "$@")
# One torchrun per node, with SIGUSR1 ignored by it (the ranks install their own handler)
# and its logs in a folder of its node: after "python -m torch.distributed.run" comes
# --log-dir with this node's number, known only on the node.
per_node='trap "" USR1; log_dir=$1; shift; exec "${@:1:3}" --log-dir="$log_dir/node-${SLURM_NODEID:-0}" "${@:4}"'
if $in_slurm; then
  cmd=(srun --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1
       bash -c "$per_node" per-node "$log_dir" "${torchrun[@]}")
else
  cmd=(bash -c "$per_node" per-node "$log_dir" "${torchrun[@]}")
fi

echo "$(basename "$0"): $nnodes node(s) x $nproc_per_node process(es), rendezvous $head:$port (id $run_id), logs $log_dir" >&2
if $dry_run; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi

export SPEECHADAPT_PREEMPT_MARKER=$marker
descendants() { local child; for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done; }
forward_usr1() {  # outside Slurm nothing else signals the ranks: pass it down the process tree
  local p
  for p in $(descendants "$pid"); do kill -USR1 "$p" 2>/dev/null; done
}
# The script waits for the ranks to save whatever it is sent; Slurm's SIGKILL ends it anyway.
if $in_slurm; then trap '' USR1; else trap forward_usr1 USR1; fi
trap 'echo "$(basename "$0"): SIGTERM: waiting for the ranks to save" >&2' TERM
"${cmd[@]}" &
pid=$!
while true; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break  # wait returns early when a trapped signal arrives
done
if [ -f "$marker" ]; then
  echo "$(basename "$0"): preempted: $(cat "$marker"); run the same command again to resume" >&2
  exit 75
fi
exit "$rc"
