#!/usr/bin/env bash
# TED-LIUM data preparation (stages 0-9) for Speech-FT with HuBERT:
#   0 the corpora: TEDLIUM_release-3 and LibriSpeech dev-clean/test-clean (the source domain);
#     --smoke true writes miniature ones in the real layouts, spoken by espeak-ng
#   1 TED-LIUM manifests (one cut per scored STM segment; bad segments skipped and counted) and
#     the speaker-probe halves of dev + test (the same talks in both)
#   2 LibriSpeech dev-clean and test-clean manifests (the shared parser and manifest stage)
#   9 the model folder: HuBERT-base + a fresh CTC head over 32 characters (local/add_ctc_head.py;
#     smoke: from a tiny random HuBERT)
# Without the sph2pipe binary lhotse cannot read .sph: the recipe has it read them with
# libsndfile (TED-LIUM 3's files are plain 16-bit PCM).
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=tedlium
stage=0
stop_stage=100
smoke=false
corpus_dir=          # TEDLIUM_release-3 (default download/TEDLIUM_release-3)
librispeech_dir=     # LibriSpeech/ with dev-clean and test-clean (default download/LibriSpeech)
hubert_dir=          # facebook/hubert-base-ls960 (default download/hubert-base-ls960)
work_dir=.
num_jobs=2
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--corpus-dir D] [--librispeech-dir D] [--hubert-dir D] [--work-dir D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
profile=full; [ "$smoke" = true ] && profile=smoke
. conf/recipe_$profile.sh
command -v sph2pipe >/dev/null || export LHOTSE_AUDIO_BACKEND=${LHOTSE_AUDIO_BACKEND:-LibsndfileBackend}
stage_times=$exp_root/stage_times.tsv
local_dir=../../local

if stage_in 0; then
  stage_begin 0 "the corpora: $corpus_dir and $librispeech_dir"
  if [ "$smoke" = true ]; then
    [ -d "$corpus_dir" ] || python3 local/prepare_tedlium.py --write-miniature "$(dirname "$corpus_dir")"
    [ -d "$librispeech_dir" ] || python3 ../librispeech/local/make_mini_librispeech.py --out-dir "$librispeech_dir" \
      --num-jobs $num_jobs
  else
    [ -d "$corpus_dir/legacy" ] || { echo "$0: no TED-LIUM 3 at $corpus_dir (expected legacy/{train,dev,test}):" \
      "unpack https://www.openslr.org/51 there or pass --corpus-dir" >&2; exit 1; }
    [ -d "$librispeech_dir/test-clean" ] || { echo "$0: no LibriSpeech test-clean at $librispeech_dir:" \
      "unpack dev-clean and test-clean from https://www.openslr.org/12 or pass --librispeech-dir" >&2; exit 1; }
  fi
  stage_end
fi

if stage_in 1; then
  stage_begin 1 "TED-LIUM manifests (train, dev, test) and the speaker-probe halves"
  python3 local/prepare_tedlium.py --corpus-dir "$corpus_dir" --splits train,dev,test --manifest-dir $manifests \
    --probe-split dev,test
  stage_end
fi

if stage_in 2; then
  stage_begin 2 "LibriSpeech dev-clean and test-clean manifests (the source domain)"
  python3 $local_dir/parse_librispeech.py --corpus-dir "$librispeech_dir" --parts dev-clean,test-clean \
    --out-dir $data_dir/meta
  python3 $local_dir/prepare_manifests.py --audio-dir $data_dir/meta --manifest-dir $manifests --prefix librispeech \
    --splits dev-clean,test-clean
  stage_end
fi

if stage_in 9; then
  stage_begin 9 "HuBERT + CTC head at $ctc_dir (from $hubert_dir)"
  if [ "$smoke" = true ] && [ ! -d "$hubert_dir" ]; then
    python3 $local_dir/make_fixtures.py --out-dir "$(dirname "$hubert_dir")" --which hubert >/dev/null
  fi
  [ -d "$ctc_dir" ] || python3 local/add_ctc_head.py --encoder-dir "$hubert_dir" --out-dir "$ctc_dir"
  stage_end
fi

stages_done
