#!/usr/bin/env bash
# Common Voice recipe: Whisper adapted to one language (Hindi by default) by supervised
# fine-tuning, first-order (AdamW) and zeroth-order (ZO-ASR), against zero-shot. Stages 30-39
# (fine-tuning) and 90 (report); prepare.sh holds 0-9. Every stage is one call of
# speechadapt.bin.finetune with a conf/ft/*.yaml; the profile only changes sizes and paths.
# Each record carries WER and CER after Whisper's own normaliser (--text-norm whisper), the
# updates, forward/backward passes and the peak memory of training (one step's, the steps are
# alike) and of inference: stages 31 and 32 record the memory of an AdamW and of a ZO step.
#   ./prepare.sh && ./run.sh                    # the full recipe (a GPU; see README)
#   ../../run.sh --recipe commonvoice --smoke true   # every stage on a miniature corpus (CI)
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=commonvoice
stage=0
stop_stage=100
smoke=false
lang=hi
work_dir=.
whisper_dir=
start_epoch=auto
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--lang hi] [--whisper-dir D] [--work-dir D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
profile=full; [ "$smoke" = true ] && profile=smoke
. conf/recipe_$profile.sh
stage_times=$exp_root/stage_times.tsv
results=$exp_root/results.jsonl
ft_flags="--model whisper --model-dir $whisper_dir --language $lang --manifest-dir $manifests --cuts-prefix cv-$lang \
  --train-split train --valid-split dev --test-sets dev,test --results $results --max-duration $max_duration \
  --num-workers $num_workers --start-epoch $start_epoch $amp_flags"
finetune() {  # finetune CONF STEPS EVERY
  python -m speechadapt.bin.finetune --config conf/ft/$1.yaml $ft_flags --exp-dir $exp_root/ft/$1 \
    --max-steps $2 --eval-every $3
}

if stage_in 30; then
  stage_begin 30 "Whisper zero-shot on cv-$lang dev and test"
  finetune zero_shot 0 0
  stage_end
fi
if stage_in 31; then
  stage_begin 31 "first-order fine-tuning: AdamW on every parameter ($fo_steps updates)"
  finetune adamw $fo_steps $eval_every_fo
  stage_end
fi
if stage_in 32; then
  stage_begin 32 "zeroth-order fine-tuning: ZO-ASR (q 8, eps 1e-3, SGD) on every parameter ($zo_steps updates)"
  finetune zo_asr $zo_steps $eval_every_zo
  stage_end
fi

if stage_in 90; then
  stage_begin 90 "RESULTS and plots from results.jsonl"
  python -m speechadapt.bin.report --exp-dir $exp_root --out $results_md --plot-dir $plot_dir \
    --title "commonvoice recipe, Whisper on cv-$lang ($profile profile)"
  stage_end
fi

stages_done
