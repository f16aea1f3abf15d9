#!/usr/bin/env bash
# synth recipe, data preparation: stages 0-9 (synthesise -> manifests -> fbank -> BPE).
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=synth
stage=0
stop_stage=100
profile=full        # fast (CI, minutes) or full
usage="Usage: $0 [--stage N] [--stop-stage M] [--profile fast|full]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
stage_times=exp/stage_times.tsv

# Stages 0-9 are added by the corpus issue.
echo "prepare.sh ($profile): stages $stage..$stop_stage done"
