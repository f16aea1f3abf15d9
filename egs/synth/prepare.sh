#!/usr/bin/env bash
# synth recipe, data preparation: stages 0-9 (synthesise -> manifests -> fbank -> BPE).
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=synth
stage=0
stop_stage=100
profile=default     # default (the whole story, 72-123 min on 2 cores), full (hours, stronger) or fast (CI, minutes)
data_dir=           # default: data/<profile> (full: data), so CI never clobbers another profile's corpus
corpus_conf=        # default: conf/corpus_$profile.yaml
num_jobs=2
vocab_size=         # default: 500 (default, full) or 100 (fast)
speed_perturb=false # true: add 0.9/1.1 speed-perturbed copies of source_train (3x the fbank)
usage="Usage: $0 [--stage N] [--stop-stage M] [--profile default|full|fast] [--num-jobs N] [--vocab-size V] [--speed-perturb true|false]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range

case "$profile" in
  full) : "${data_dir:=data}"; : "${vocab_size:=500}"; num_rirs=200 ;;
  default) : "${data_dir:=data/default}"; : "${vocab_size:=500}"; num_rirs=100 ;;
  fast) : "${data_dir:=data/fast}"; : "${vocab_size:=100}"; num_rirs=20 ;;
  *) echo "$0: unknown profile '$profile' (default, full or fast)" >&2; exit 1 ;;
esac
: "${corpus_conf:=conf/corpus_$profile.yaml}"
stage_times=exp/$profile/stage_times.tsv   # read by the report stage
local_dir=../../local
prefix=synth        # manifest names: <prefix>_cuts_<split>.jsonl.gz
splits=source_train,source_dev,source_test,target_adapt,target_dev,target_test
eval_splits=source_dev,source_test,target_adapt,target_dev,target_test,noise
lang_dir=$data_dir/lang_bpe_$vocab_size
t_start=$(date +%s)

if stage_in 0; then
  stage_begin 0 "synthesise the corpus ($profile)"
  python3 local/synthesise_corpus.py --config "$corpus_conf" \
    --audio-dir $data_dir/audio --num-jobs $num_jobs
  stage_end
fi

# evaluation-only splits of the corpus config (source_test by synthesiser, the held-out
# neural voice), listed by stage 0
extra_splits=$( [ -f $data_dir/audio/extra_splits.txt ] && paste -sd, $data_dir/audio/extra_splits.txt || true)
splits=$splits${extra_splits:+,$extra_splits}
eval_splits=$eval_splits${extra_splits:+,$extra_splits}

if stage_in 1; then
  stage_begin 1 "lhotse manifests"
  python3 $local_dir/prepare_manifests.py --audio-dir $data_dir/audio \
    --manifest-dir $data_dir/manifests --prefix $prefix --splits $splits --noise-splits noise
  stage_end
fi

if stage_in 2; then
  stage_begin 2 "fbank: eval, target and noise splits"
  python3 $local_dir/compute_fbank.py --manifest-dir $data_dir/manifests \
    --fbank-dir $data_dir/fbank --prefix $prefix --splits $eval_splits --num-jobs $num_jobs
  stage_end
fi

if stage_in 3; then
  stage_begin 3 "fbank: source_train (speed perturbation: $speed_perturb)"
  python3 $local_dir/compute_fbank.py --manifest-dir $data_dir/manifests \
    --fbank-dir $data_dir/fbank --prefix $prefix --splits source_train --speed-perturb $speed_perturb \
    --num-jobs $num_jobs
  stage_end
fi

if stage_in 4; then
  stage_begin 4 "BPE model ($vocab_size pieces) from source_train text"
  python3 $local_dir/train_bpe.py --manifest-dir $data_dir/manifests --prefix $prefix \
    --train-split source_train --lang-dir $lang_dir --vocab-size $vocab_size
  stage_end
fi

if stage_in 5; then
  stage_begin 5 "split summary"
  python3 $local_dir/corpus_summary.py --fbank-dir $data_dir/fbank --prefix $prefix --splits $splits \
    --out $data_dir/corpus_summary.json
  stage_end
fi

if stage_in 6; then
  stage_begin 6 "synthetic room impulse responses ($num_rirs) for reverberation in augmented fine-tuning"
  python3 $local_dir/make_rirs.py --out-dir $data_dir/rirs --num $num_rirs --seed 42
  stage_end
fi

stages_done
echo "prepare.sh: $(( $(date +%s) - t_start )) s; data in $data_dir (under $PWD unless absolute)"
