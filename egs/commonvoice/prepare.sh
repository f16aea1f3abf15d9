#!/usr/bin/env bash
# Common Voice data preparation (stages 0-9) for Whisper adaptation to one language:
#   0 the release (a local cv-corpus-*/<lang>/ folder; --smoke true writes a miniature one:
#     the real TSV columns, 48 kHz mp3 clips spoken by espeak-ng)
#   1 lhotse manifests of train/dev/test (clips resampled to 16 kHz; missing or undecodable
#     clips skipped and counted, an error beyond --max-skipped)
#   9 the model folder: checked (smoke: a tiny random Whisper written as a stand-in)
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=commonvoice
stage=0
stop_stage=100
smoke=false
lang=hi              # Common Voice language code (Whisper's language code too)
corpus_dir=          # default: download/cv-corpus (smoke: <work-dir>/download)
work_dir=.           # where download/ (smoke), data/ and exp/ go
whisper_dir=         # default: download/whisper-large-v3 (smoke: a tiny stand-in)
max_skipped=0.01
num_jobs=2
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--lang hi] [--corpus-dir D] [--whisper-dir D] [--work-dir D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
profile=full; [ "$smoke" = true ] && profile=smoke
. conf/recipe_$profile.sh
stage_times=$exp_root/stage_times.tsv

if stage_in 0; then
  stage_begin 0 "the Common Voice release ($lang) at $corpus_dir"
  if [ "$smoke" = true ]; then
    [ -d "$corpus_dir" ] || python3 local/prepare_commonvoice.py --write-miniature "$corpus_dir" --lang $lang \
      --num-jobs $num_jobs
  elif [ ! -d "$corpus_dir" ]; then
    echo "$0: no Common Voice release at $corpus_dir. Download the $lang part of a cv-corpus-* release from" \
         "https://commonvoice.mozilla.org/datasets, unpack it there (or pass --corpus-dir)." >&2
    exit 1
  fi
  stage_end
fi

if stage_in 1; then
  stage_begin 1 "manifests of train, dev, test (cv-$lang)"
  python3 local/prepare_commonvoice.py --corpus-dir "$corpus_dir" --lang $lang --splits train,dev,test \
    --manifest-dir $manifests --max-skipped $max_skipped --num-jobs $num_jobs --texts-out $manifests/text.txt
  stage_end
fi

if stage_in 9; then
  stage_begin 9 "the Whisper folder $whisper_dir"
  if [ "$smoke" = true ] && [ ! -d "$whisper_dir" ]; then
    python3 ../../local/make_fixtures.py --out-dir "$(dirname "$whisper_dir")" --which whisper \
      --text $manifests/text.txt >/dev/null
  fi
  python3 -c "import sys; from speechadapt.models.hf.loading import check_model_dir, read_model_type as t
check_model_dir(sys.argv[1], 'whisper'); t(sys.argv[1]) == 'whisper' or sys.exit(f'{sys.argv[1]}: model_type {t(sys.argv[1])!r}, not a Whisper model')" "$whisper_dir"
  stage_end
fi

stages_done
