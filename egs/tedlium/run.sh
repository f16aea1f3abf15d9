#!/usr/bin/env bash
# TED-LIUM recipe (Speech-FT): HuBERT-base with a fresh CTC head fine-tuned on TED-LIUM 3 by
# plain and by stable fine-tuning, each merged with the pre-trained model over an alpha sweep,
# scored on TED-LIUM test (target) and LibriSpeech test-clean (source), plus the speaker probe
# of every encoder. Stages 50-59 and 90 (report); prepare.sh holds 0-9. Every stage is one call
# of speechadapt.bin.{finetune,merge,probe} with a conf/*.yaml.
#   ./prepare.sh && ./run.sh                     # the full recipe (a GPU; see README)
#   ../../run.sh --recipe tedlium --smoke true    # every stage on miniature corpora (CI)
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=tedlium
stage=0
stop_stage=100
smoke=false
work_dir=.
start_epoch=auto
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--work-dir D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
profile=full; [ "$smoke" = true ] && profile=smoke
. conf/recipe_$profile.sh
command -v sph2pipe >/dev/null || export LHOTSE_AUDIO_BACKEND=${LHOTSE_AUDIO_BACKEND:-LibsndfileBackend}
stage_times=$exp_root/stage_times.tsv
results=$exp_root/results.jsonl
forget=$exp_root/forget
ls_dev=$manifests/librispeech_cuts_dev-clean.jsonl.gz
ls_test=$manifests/librispeech_cuts_test-clean.jsonl.gz
data_flags="--manifest-dir $manifests --cuts-prefix tedlium --num-workers $num_workers --max-duration $max_duration"
finetune() {  # finetune CONF SOURCE_FLAGS STEPS
  python -m speechadapt.bin.finetune --config conf/forget/$1.yaml $2 $data_flags --train-split train \
    --valid-split dev --test-sets test,$ls_test --results $results --exp-dir $forget/$1 --max-steps $3 \
    --eval-every $eval_every --start-epoch $start_epoch
}
merge_sweep() {  # merge_sweep RUN METHOD
  python -m speechadapt.bin.merge --config conf/forget/merge.yaml --base $forget/pretrained/last.pt \
    --finetuned $forget/$1/best.pt --alphas "$alphas" --tune-sets $ls_dev,dev --test-sets test,$ls_test \
    --out $forget/merge_$1/merged.pt --method $2 $data_flags --results $results
}
hubert="--model hf_ctc --model-dir $ctc_dir"

if stage_in 50; then
  stage_begin 50 "the pre-trained HuBERT (fresh CTC head), then plain fine-tuning ($ft_steps updates)"
  finetune pretrained "$hubert" 0
  finetune plain_ft "$hubert" $ft_steps
  stage_end
fi
if stage_in 51; then
  stage_begin 51 "stable fine-tuning: front end frozen, head first, tri-stage rate ($ft_steps updates)"
  finetune stable_ft "$hubert" $ft_steps
  stage_end
fi
if stage_in 52; then
  stage_begin 52 "merging: alpha $alphas for plain and stable FT, the pick on the tests"
  merge_sweep plain_ft plain-ft+merge
  merge_sweep stable_ft speech-ft
  stage_end
fi
probe_runs="pre-trained $forget/pretrained $forget/pretrained/last.pt
plain-ft $forget/plain_ft $forget/plain_ft/best.pt
stable-ft $forget/stable_ft $forget/stable_ft/best.pt
plain-ft+merge $forget/merge_plain_ft $forget/merge_plain_ft/merged.pt
speech-ft $forget/merge_stable_ft $forget/merge_stable_ft/merged.pt"
if stage_in 55; then
  stage_begin 55 "speaker-identification probe of every encoder (pre-trained, fine-tuned, merged)"
  while read -r method dir weights; do
    [[ " $probe_methods " == *" $method "* ]] || continue
    python -m speechadapt.bin.probe --config conf/probe.yaml --source-exp-dir $dir --checkpoint $weights \
      --method $method --exp-dir $forget/probe/$method $data_flags --results $results
  done <<< "$probe_runs"
  stage_end
fi

if stage_in 90; then
  stage_begin 90 "RESULTS and plots from results.jsonl"
  python -m speechadapt.bin.report --exp-dir $exp_root --out $results_md --plot-dir $plot_dir \
    --title "tedlium recipe, HuBERT Speech-FT ($profile profile)"
  stage_end
fi

stages_done
