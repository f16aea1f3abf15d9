#!/usr/bin/env bash
# synth recipe: the whole story on a CPU with no download.
# Stage ranges (DESIGN.md): 10-19 Zipformer-CTC, 20-29 LLM-ASR/MoSE, 30-39 fine-tuning
# (first-order and zeroth-order), 40-49 TTA, 50-59 stable fine-tuning/metric LR/merging,
# 90-99 report. Data preparation (0-9) lives in prepare.sh.
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=synth
stage=10
stop_stage=100
profile=full        # fast (CI, minutes) or full
usage="Usage: $0 [--stage N] [--stop-stage M] [--profile fast|full]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
stage_times=exp/stage_times.tsv

# Stages are added by the issues that own each range.
echo "run.sh ($profile): stages $stage..$stop_stage done"
