#!/usr/bin/env bash
# LibriSpeech data preparation, icefall's stage layout (stages 0-9):
#   0 the corpus (a local LibriSpeech/ tree; --download true fetches it where the network allows;
#     --smoke true writes a miniature tree in the real layout, spoken by espeak-ng)
#   1 metadata + lhotse manifests (audio checked)   2 fbank of the dev/test parts (+ MUSAN)
#   3 fbank of the training parts, speed-perturbed 0.9/1.1   4 train-all-shuf (the training parts, shuffled)
#   5 the BPE model (icefall's, copied, when --bpe-model is given; else trained)
# Every stage skips work already done for the same inputs (done markers).
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=librispeech
stage=0
stop_stage=100
smoke=false          # true: the miniature tree and data/smoke (CI)
corpus_dir=          # default: download/LibriSpeech (smoke: download/smoke/LibriSpeech)
data_dir=            # default: data (smoke: data/smoke)
download=false       # true: stage 0 downloads the corpus with lhotse (network)
train_parts=train-clean-100,train-clean-360,train-other-500
eval_parts=dev-clean,dev-other,test-clean,test-other
musan_dir=           # a local MUSAN folder: noise manifests for augmentation
bpe_model=           # icefall's data/lang_bpe_500/bpe.model of the checkpoints, when you have it
vocab_size=500
speed_perturb=true
on_the_fly_feats=false  # true: no stored fbank (stages 2-3 copy the manifests; train with --on-the-fly-feats true)
num_jobs=2
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--corpus-dir D] [--download true] [--bpe-model F] ..."
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
if [ "$smoke" = true ]; then
  : "${corpus_dir:=download/smoke/LibriSpeech}"; : "${data_dir:=data/smoke}"
  train_parts=train-clean-100; vocab_size=100; profile=smoke
else
  : "${corpus_dir:=download/LibriSpeech}"; : "${data_dir:=data}"; profile=full
fi
stage_times=exp/$profile/stage_times.tsv
local_dir=../../local
prefix=librispeech
meta=$data_dir/meta
manifests=$data_dir/manifests
fbank=$data_dir/fbank
lang_dir=$data_dir/lang_bpe_$vocab_size
all_parts=$eval_parts,$train_parts
noise_flags=""; [ -n "$musan_dir" ] && noise_flags="--noise-splits musan"

if stage_in 0; then
  stage_begin 0 "the LibriSpeech tree at $corpus_dir"
  if [ "$smoke" = true ]; then
    [ -d "$corpus_dir" ] || python3 local/make_mini_librispeech.py --out-dir "$corpus_dir" --num-jobs $num_jobs
  elif [ ! -d "$corpus_dir" ]; then
    if [ "$download" = true ]; then
      lhotse download librispeech --full "$(dirname "$corpus_dir")" || {
        echo "$0: the download failed (no network?). Fetch https://www.openslr.org/12 by hand and unpack it" \
             "so that $corpus_dir/<part>/ exists, then rerun from stage 1." >&2; exit 1; }
    else
      echo "$0: no LibriSpeech tree at $corpus_dir. Unpack the parts from https://www.openslr.org/12 there" \
           "(or pass --corpus-dir), or rerun with --download true where the network allows." >&2
      exit 1
    fi
  fi
  stage_end
fi

if stage_in 1; then
  stage_begin 1 "metadata and lhotse manifests of $all_parts"
  python3 $local_dir/parse_librispeech.py --corpus-dir "$corpus_dir" --parts $all_parts --out-dir $meta \
    ${musan_dir:+--musan-dir "$musan_dir"}
  python3 $local_dir/prepare_manifests.py --audio-dir $meta --manifest-dir $manifests --prefix $prefix \
    --splits $all_parts $noise_flags
  stage_end
fi

fbank_flags="--manifest-dir $manifests --fbank-dir $fbank --prefix $prefix --num-jobs $num_jobs"
[ "$on_the_fly_feats" = true ] && fbank_flags="$fbank_flags --no-features true"
if stage_in 2; then
  stage_begin 2 "fbank of $eval_parts${musan_dir:+ and MUSAN}"
  python3 $local_dir/compute_fbank.py $fbank_flags --splits $eval_parts${musan_dir:+,musan}
  stage_end
fi

if stage_in 3; then
  stage_begin 3 "fbank of $train_parts (speed perturbation: $speed_perturb)"
  python3 $local_dir/compute_fbank.py $fbank_flags --splits $train_parts --speed-perturb $speed_perturb
  stage_end
fi

if stage_in 4; then
  stage_begin 4 "train-all-shuf: $train_parts, shuffled"
  python3 $local_dir/combine_cuts.py --fbank-dir $fbank --prefix $prefix --splits $train_parts \
    --out-split train-all-shuf
  stage_end
fi

if stage_in 5; then
  stage_begin 5 "BPE model ($lang_dir)"
  if [ -n "$bpe_model" ]; then
    [ -f "$bpe_model" ] || { echo "$0: --bpe-model $bpe_model: no such file" >&2; exit 1; }
    mkdir -p $lang_dir && cp "$bpe_model" $lang_dir/bpe.model
  else
    python3 $local_dir/train_bpe.py --manifest-dir $manifests --prefix $prefix --train-split $train_parts \
      --lang-dir $lang_dir --vocab-size $vocab_size
  fi
  stage_end
fi

stages_done
