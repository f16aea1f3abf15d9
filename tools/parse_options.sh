#!/usr/bin/env bash
# Source this AFTER defining defaults: every `--some-name value` (or `--some-name=value`)
# sets the existing shell variable some_name. Unknown options are an error, so a typo
# never silently runs the wrong stages. `--help` prints $usage (if set) and the options.
#
#   stage=0; stop_stage=100; profile=full
#   . tools/parse_options.sh
#
# Positional arguments are left in "$@".
_po_positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      [ -n "${usage:-}" ] && echo "$usage"
      echo "Options (current values):"
      # the options are the variables assigned before this file is sourced
      sed '/parse_options.sh/q' "$0" 2>/dev/null | grep -oE '^[a-z_][a-z0-9_]*=' | tr -d '=' | grep -vxE 'usage|recipe_name' | while read -r _po_v; do
        echo "  --${_po_v//_/-} ${!_po_v:-}"
      done
      exit 0 ;;
    --*=*)
      _po_name=${1%%=*}; _po_value=${1#*=}; shift ;;
    --*)
      _po_name=$1
      if [ $# -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      _po_value=$2; shift 2 ;;
    *)
      _po_positional+=("$1"); shift; continue ;;
  esac
  _po_var=${_po_name#--}; _po_var=${_po_var//-/_}
  if ! [[ "$_po_var" =~ ^[a-z_][a-z0-9_]*$ ]] || [ -z "${!_po_var+set}" ]; then
    echo "$0: unknown option $_po_name" >&2
    [ -n "${usage:-}" ] && echo "$usage" >&2
    exit 1
  fi
  printf -v "$_po_var" '%s' "$_po_value"
done
set -- "${_po_positional[@]+"${_po_positional[@]}"}"
unset _po_name _po_value _po_var _po_positional _po_v
