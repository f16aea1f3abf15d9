#!/usr/bin/env bash
# Idempotent set-up. Source it (". tools/setup.sh") so the chosen interpreter stays active.
#  - If the active python3 already has every pinned requirement, use it.
#  - Else make .venv and install torch FIRST (the pinned CPU wheel; an unpinned
#    torch would pull a multi-GB CUDA build), then requirements.txt, then the package.
# Either way src/ is put on PYTHONPATH, so `python -m speechadapt.bin.X` works.
_sa_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_sa_py=${PYTHON:-python3}

_sa_setup() {
  if [ -x "$_sa_root/.venv/bin/python" ] && \
     "$_sa_root/.venv/bin/python" "$_sa_root/tools/check_requirements.py" >/dev/null 2>&1; then
    export VIRTUAL_ENV="$_sa_root/.venv"; export PATH="$_sa_root/.venv/bin:$PATH"
    echo "setup: using $_sa_root/.venv"
  elif "$_sa_py" "$_sa_root/tools/check_requirements.py" >/dev/null 2>&1; then
    echo "setup: using the active interpreter $(command -v "$_sa_py")"
  else
    # (the check exits 1 by design: do not let `set -e -o pipefail` stop here)
    echo "setup: the active interpreter lacks:"; { "$_sa_py" "$_sa_root/tools/check_requirements.py" || true; } | sed 's/^/  /'
    echo "setup: creating $_sa_root/.venv (torch first, then requirements.txt)"
    [ -x "$_sa_root/.venv/bin/python" ] || "$_sa_py" -m venv "$_sa_root/.venv" || return 1
    local pip="$_sa_root/.venv/bin/python -m pip"
    $pip install -q --upgrade pip setuptools wheel || return 1
    $pip install -q "$(grep -E '^torch==' "$_sa_root/requirements.txt")" || return 1
    $pip install -q -r "$_sa_root/requirements.txt" || return 1
    $pip install -q --no-deps -e "$_sa_root" || return 1
    export VIRTUAL_ENV="$_sa_root/.venv"; export PATH="$_sa_root/.venv/bin:$PATH"
  fi
  case ":${PYTHONPATH:-}:" in
    *":$_sa_root/src:"*) ;;
    *) export PYTHONPATH="$_sa_root/src${PYTHONPATH:+:$PYTHONPATH}" ;;
  esac
  # Keep BLAS threads to the cores we have; callers may override.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 2)}
  return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -eo pipefail; _sa_setup; exit $?
else
  _sa_setup
fi
