#!/usr/bin/env bash
# LibriSpeech recipe: LLM-ASR (a frozen icefall Zipformer + projector + Qwen2 with LoRA) and MoSE
# (four frozen encoders). Stages 20-29 (prepare.sh holds 0-9), 90 the report. Every stage is
# one call of a speechadapt.bin entry point; the profile only changes sizes and model paths.
#   ./prepare.sh && ./run.sh                       # the full recipe (GPUs; see README)
#   ../../run.sh --recipe librispeech --smoke true   # prepare + every stage on a miniature corpus (CI)
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=librispeech
stage=0
stop_stage=100
smoke=false
world_size=1        # GPUs (mp.spawn); under torchrun leave 1, torchrun sets the ranks
launcher=local      # local, or slurm: distributed stages via tools/slurm_launch.sh (docs/scale.md)
start_epoch=auto    # training stages resume from their newest checkpoint
llm_dir=            # override the profile's model paths
encoder_ckpt=
mose_encoder_ckpts=
usage="Usage: $0 [--stage N] [--stop-stage M] [--smoke true] [--world-size N] [--launcher local|slurm] [--llm-dir D] [--encoder-ckpt F] [--mose-encoder-ckpts A,B,C,D]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
set_launcher
profile=full; [ "$smoke" = true ] && profile=smoke
_llm_dir=$llm_dir; _encoder_ckpt=$encoder_ckpt; _mose=$mose_encoder_ckpts
. conf/recipe_$profile.sh
llm_dir=${_llm_dir:-$llm_dir}; encoder_ckpt=${_encoder_ckpt:-$encoder_ckpt}
mose_encoder_ckpts=${_mose:-$mose_encoder_ckpts}

stage_times=$exp_root/stage_times.tsv
fbank=$data_dir/fbank
results=$exp_root/results.jsonl
data_flags="--manifest-dir $fbank --cuts-prefix librispeech --num-workers $num_workers --num-buckets $num_buckets"
train_flags="--config conf/llm_asr.yaml --llm-dir $llm_dir $data_flags --num-epochs $llm_epochs \
  --max-duration $max_duration --average-period $average_period --world-size $world_size \
  --start-epoch $start_epoch $amp_flags"
decode_flags="--config conf/decode.yaml $data_flags --results $results --epoch $llm_epochs --avg $llm_avg \
  --use-averaged-model true --max-duration $max_duration"

if [ "$smoke" = true ] && stage_in 20; then
  stage_begin 20 "smoke only: tiny stand-ins for icefall's Zipformers and Qwen2"
  python3 local/make_tiny_icefall_encoders.py --out-dir $exp_root/models/icefall
  python -m speechadapt.bin.pretrain_text_lm --train-text $fbank/librispeech_cuts_train-all-shuf.jsonl.gz \
    --valid-text $fbank/librispeech_cuts_dev-clean.jsonl.gz --out-dir $llm_dir --exp-dir $exp_root/models/lm_train \
    --num-epochs 60 --hidden-size 64 --num-hidden-layers 1 --tokenizer-vocab-size 300 --start-epoch $start_epoch \
    --copy-examples false  # a stand-in for wiring; the real recipe's Qwen2 copies already (this 1-layer
    # LM overfits the copy examples of the mini corpus and then loses to the unigram baseline)
  stage_end
fi

train_llm() {  # train_llm EXP_NAME ENCODER_CKPTS: LLM-ASR with one encoder, MoSE with several
  $dist_py speechadapt.bin.train $train_flags --exp-dir $exp_root/$1 --encoder-ckpt $2 --encoder-preset $encoder_preset
}
decode_llm() {  # decode_llm EXP_NAME: greedy and beam 4 on the dev/test parts
  for method in greedy beam; do
    $dist_py speechadapt.bin.decode --exp-dir $exp_root/$1 $decode_flags --decoding-method $method
  done
}
if stage_in 21; then
  stage_begin 21 "train LLM-ASR (frozen $encoder_preset Zipformer, projector, LoRA)"
  train_llm llm_asr $encoder_ckpt
  stage_end
fi
if stage_in 22; then
  stage_begin 22 "decode LLM-ASR: greedy and beam 4"
  decode_llm llm_asr
  stage_end
fi
if stage_in 23; then
  stage_begin 23 "train MoSE (four frozen Zipformers)"
  train_llm mose $mose_encoder_ckpts
  stage_end
fi
if stage_in 24; then
  stage_begin 24 "decode MoSE: greedy and beam 4"
  decode_llm mose
  stage_end
fi

if stage_in 90; then
  stage_begin 90 "RESULTS and plots from results.jsonl"
  python -m speechadapt.bin.report --exp-dir $exp_root --out $results_md --plot-dir $plot_dir \
    --title "librispeech recipe ($profile profile)"
  stage_end
fi

stages_done
