#!/usr/bin/env bash
# LibriSpeech TTA data preparation (stages 0-9):
#   0 the LibriSpeech tree (a local LibriSpeech/ with test-other; --smoke true writes a miniature
#     tree in the real layout, spoken by espeak-ng, with egs/librispeech's writer)
#   1 metadata + lhotse manifests of test-other (the shared LibriSpeech parser and manifest stage)
#   2 test-other with Gaussian noise of std 0.005 and 0.01 added once and stored (seed 0)
#   3 CHiME-3's et05 sets from the LDC layout, when --chime3-dir is given (else skipped, said so)
#   9 the wav2vec2 folder: checked (smoke: a tiny random wav2vec2 CTC as a stand-in)
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=librispeech_tta
stage=0
stop_stage=100
smoke=false
corpus_dir=          # default: download/LibriSpeech (smoke: <work-dir>/download/smoke/LibriSpeech)
chime3_dir=          # CHiME3/ of the LDC release (LDC2017S24), optional
work_dir=.
model_dir=           # default: download/wav2vec2-base-960h (smoke: a tiny stand-in)
noise_stds=0.005,0.01
noise_seed=0
num_jobs=2
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--corpus-dir D] [--chime3-dir D] [--model-dir D] [--work-dir D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
profile=full; [ "$smoke" = true ] && profile=smoke
. conf/recipe_$profile.sh
stage_times=$exp_root/stage_times.tsv
local_dir=../../local

if stage_in 0; then
  stage_begin 0 "the LibriSpeech tree at $corpus_dir"
  if [ "$smoke" = true ]; then
    [ -d "$corpus_dir" ] || python3 ../librispeech/local/make_mini_librispeech.py --out-dir "$corpus_dir" \
      --num-jobs $num_jobs
  elif [ ! -d "$corpus_dir/test-other" ]; then
    echo "$0: no LibriSpeech test-other at $corpus_dir/test-other. Unpack test-other.tar.gz from" \
         "https://www.openslr.org/12 there (or pass --corpus-dir)." >&2
    exit 1
  fi
  stage_end
fi

if stage_in 1; then
  stage_begin 1 "metadata and manifests of test-other"
  python3 $local_dir/parse_librispeech.py --corpus-dir "$corpus_dir" --parts test-other --out-dir $data_dir/meta
  python3 $local_dir/prepare_manifests.py --audio-dir $data_dir/meta --manifest-dir $manifests --prefix librispeech \
    --splits test-other
  stage_end
fi

if stage_in 2; then
  stage_begin 2 "test-other with Gaussian noise (std $noise_stds, seed $noise_seed), stored once"
  python3 local/make_noisy_sets.py --manifest-dir $manifests --prefix librispeech --split test-other \
    --stds $noise_stds --seed $noise_seed --audio-dir $data_dir/noisy
  stage_end
fi

if stage_in 3; then
  stage_begin 3 "CHiME-3 et05 (enhanced) from ${chime3_dir:-nowhere}"
  if [ -n "$chime3_dir" ]; then
    python3 local/prepare_chime3.py --chime3-dir "$chime3_dir" --manifest-dir $manifests --prefix librispeech
  else
    echo "no --chime3-dir: CHiME-3 (LDC2017S24) left out; run.sh scores the LibriSpeech sets only"
  fi
  stage_end
fi

if stage_in 9; then
  stage_begin 9 "the wav2vec2 CTC folder $model_dir"
  if [ "$smoke" = true ] && [ ! -d "$model_dir" ]; then
    python3 $local_dir/make_fixtures.py --out-dir "$(dirname "$model_dir")" --which wav2vec2 >/dev/null
  fi
  python3 -c "import sys; from speechadapt.models.hf.loading import check_model_dir, ctc_kind
check_model_dir(sys.argv[1], ctc_kind(sys.argv[1]))" "$model_dir"
  stage_end
fi

stages_done
