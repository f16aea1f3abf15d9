#!/usr/bin/env bash
# LibriSpeech TTA recipe: wav2vec2-base-960h adapted one utterance at a time on test-other,
# clean and with stored Gaussian noise (std 0.005, 0.01), and on CHiME-3 when prepared.
# Stages 40-49 (test-time adaptation) and 90 (report); prepare.sh holds 0-9. Every stage is
# one call of speechadapt.bin.tta with a conf/tta/*.yaml; the profile only changes paths.
#   ./prepare.sh && ./run.sh                        # the full recipe (a GPU; see README)
#   ../../run.sh --recipe librispeech_tta --smoke true   # every stage on a miniature corpus (CI)
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=librispeech_tta
stage=0
stop_stage=100
smoke=false
work_dir=.
model_dir=
noise_stds=0.005,0.01
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--model-dir D] [--work-dir D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
profile=full; [ "$smoke" = true ] && profile=smoke
. conf/recipe_$profile.sh
stage_times=$exp_root/stage_times.tsv
results=$exp_root/results.jsonl
test_sets=test-other
for std in ${noise_stds//,/ }; do test_sets=$test_sets,test-other-noise$std; done
[ -f $manifests/librispeech_cuts_chime3-et05.jsonl.gz ] && test_sets=$test_sets,chime3-et05
tta() {  # tta CONF [FLAGS]: one run of conf/tta/CONF.yaml on every test set
  python -m speechadapt.bin.tta --config conf/tta/$1.yaml --model hf_ctc --model-dir $model_dir \
    --manifest-dir $manifests --cuts-prefix librispeech --num-workers $num_workers --test-sets $test_sets \
    --results $results --exp-dir $exp_root/tta/$1 ${2:-}
}

if stage_in 40; then
  stage_begin 40 "source model, no adaptation ($test_sets)"
  tta none
  stage_end
fi
if stage_in 41; then
  stage_begin 41 "SUTA, episodic: 10 AdamW steps at 2e-5 per utterance"
  tta suta
  stage_end
fi
if stage_in 42; then
  stage_begin 42 "ZO-TTA, episodic: 40 ZO-ASR steps (q 8) per utterance"
  tta zo_tta "$zo_tta_flags"
  stage_end
fi
if stage_in 43; then
  stage_begin 43 "continual SUTA: one step per utterance along the stream, reset on drift"
  tta continual_suta
  stage_end
fi

if stage_in 90; then
  stage_begin 90 "RESULTS and plots from results.jsonl"
  python -m speechadapt.bin.report --exp-dir $exp_root --out $results_md --plot-dir $plot_dir \
    --title "librispeech_tta recipe, wav2vec2 test-time adaptation ($profile profile)"
  stage_end
fi

stages_done
