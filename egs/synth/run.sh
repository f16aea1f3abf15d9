#!/usr/bin/env bash
# synth recipe: the whole story on a CPU with no download.
# Stage ranges (docs/architecture.md): 10-19 Zipformer-CTC, 20-29 LLM-ASR/MoSE, 30-39 fine-tuning
# (first-order and zeroth-order), 40-49 TTA, 50-59 stable fine-tuning/metric LR/merging,
# 90-99 report. Data preparation (0-9) lives in prepare.sh. Every stage is one call of a
# speechadapt.bin entry point; the profile only changes sizes (conf/recipe_<profile>.sh).
set -euo pipefail
cd "$(dirname "$0")"
recipe_name=synth
stage=10
stop_stage=100
profile=default     # default (the whole story, 72-123 min on 2 cores), full (hours, stronger) or fast (CI, minutes)
world_size=1
launcher=local      # local, or slurm: distributed stages via tools/slurm_launch.sh (docs/scale.md)
start_epoch=auto    # training stages resume from their newest checkpoint; 1 = fresh (refuses an old run)
side_by_side=      # true: stage 23 beside 10-22, the tiny-deep LLM-ASR beside MoSE (24-25), stages 40-45 beside 30-55, one core each (default: the profile's)
mose_slot_dropouts= # stages 24-25: these slot dropouts ("0.0 0.3") instead of the profile's grid
usage="Usage: $0 [--stage N] [--stop-stage M] [--profile default|full|fast] [--world-size N] [--launcher local|slurm] [--start-epoch auto|N] [--mose-slot-dropouts 'P ...'] [--side-by-side true|false]"
. ../../tools/parse_options.sh
. ../../tools/setup.sh >/dev/null
. ../../tools/recipe_lib.sh
check_stage_range
set_launcher
case "$profile" in default|fast|full) ;; *) echo "$0: unknown profile '$profile'" >&2; exit 1 ;; esac
_mose_grid=$mose_slot_dropouts
_side=$side_by_side
. conf/recipe_$profile.sh   # data_dir, exp_root and the per-profile sizes below
mose_slot_dropouts=${_mose_grid:-$mose_slot_dropouts}
side_by_side=${_side:-${side_by_side:-false}}

stage_times=$exp_root/stage_times.tsv
fbank=$data_dir/fbank
lang=$data_dir/lang_bpe_$vocab_size
results=$exp_root/results.jsonl
data_flags="--manifest-dir $fbank --cuts-prefix synth --num-workers $num_workers --num-buckets $num_buckets"
ctc_exp=$exp_root/ctc
ctc2_exp=$exp_root/ctc2_$ctc2_preset
ctc_model=epoch-$ctc_epochs-avg-$ctc_avg.pt
lm_dir=$exp_root/tiny_qwen2
# Settings shared by both profiles are in conf/*.yaml; sizes come from the profile.
ctc_flags="--config conf/ctc.yaml --lang-dir $lang $data_flags --encoder-preset $ctc_preset \
  --max-duration $ctc_max_duration --average-period $average_period --world-size $world_size \
  --start-epoch $start_epoch"
# decoders also score the corpus's evaluation-only splits (prepare.sh stage 0 lists them):
# source_test by synthesiser and the held-out neural-voice set
extra_sets=$( [ -f $data_dir/audio/extra_splits.txt ] && paste -sd, $data_dir/audio/extra_splits.txt || true)
decode_flags="--config conf/decode.yaml $data_flags --results $results \
  --test-sets source_test,target_test${extra_sets:+,$extra_sets}"
# Every method (fine-tuning, TTA, merging) is scored on these; untuned_test, when the corpus
# has it, is a shift no method or hyper-parameter choice ever sees.
eval_sets=source_test,target_test$(grep -qsx untuned_test $data_dir/audio/extra_splits.txt && echo ,untuned_test || true)
# The tiny LLM stages run on one thread: more only contend on a shared CPU.
llm_env="env OMP_NUM_THREADS=1"

# Stage 23 needs only the data: with --side-by-side it trains beside stage 10 (and the text
# LM), each on one core; side_join below waits for it where it would have run.
second_encoder() {
  if stage_in 23; then
    stage_begin 23 "second Zipformer-CTC encoder for MoSE ($ctc2_preset, another seed)"
    $dist_py speechadapt.bin.train $ctc_flags --encoder-preset $ctc2_preset --exp-dir $ctc2_exp \
      --num-epochs $ctc2_epochs --seed 7
    python -m speechadapt.bin.average_checkpoints --exp-dir $ctc2_exp --epoch $ctc2_epochs \
      --avg $ctc_avg --use-averaged-model true
    $dist_py speechadapt.bin.decode --exp-dir $ctc2_exp --epoch $ctc2_epochs --avg $ctc_avg \
      --use-averaged-model true --method zipformer-ctc-$ctc2_preset $decode_flags
    stage_end
  fi
}

# ---- 10-19 Zipformer-CTC -----------------------------------------------------------
side_start second_encoder
if stage_in 10; then
  stage_begin 10 "train Zipformer-CTC ($ctc_preset) on source_train"
  $dist_py speechadapt.bin.train $ctc_flags --exp-dir $ctc_exp --num-epochs $ctc_epochs --seed 42
  stage_end
fi

if stage_in 11; then
  stage_begin 11 "average Zipformer-CTC checkpoints ($ctc_model)"
  python -m speechadapt.bin.average_checkpoints --exp-dir $ctc_exp --epoch $ctc_epochs \
    --avg $ctc_avg --use-averaged-model true
  stage_end
fi

if stage_in 12; then
  stage_begin 12 "decode Zipformer-CTC on source and target tests"
  $dist_py speechadapt.bin.decode --exp-dir $ctc_exp --checkpoint $ctc_exp/$ctc_model $decode_flags
  stage_end
fi

# ---- 20-29 LLM-ASR and MoSE --------------------------------------------------------
if stage_in 20; then
  stage_begin 20 "text pre-training of the tiny Qwen2 on source_train text, plain and as copy examples"
  $llm_env python -m speechadapt.bin.pretrain_text_lm --train-text $fbank/synth_cuts_source_train.jsonl.gz \
    --valid-text $fbank/synth_cuts_source_dev.jsonl.gz --out-dir $lm_dir --exp-dir $exp_root/tiny_qwen2_train \
    --num-epochs $lm_epochs --hidden-size 256 --num-hidden-layers 2 --min-copy-accuracy $lm_min_copy_accuracy \
    --scrambled-copy-fraction $lm_scrambled_copy_fraction
  stage_end
fi

llm_flags="--config conf/llm_asr.yaml --llm-dir $lm_dir --lora-r $lora_r --lora-alpha $lora_alpha $data_flags \
  --encoder-compress $llm_compress --stack-k $llm_stack_k \
  --num-epochs $llm_epochs --max-duration $llm_max_duration --base-lr $llm_lr --average-period $average_period \
  --world-size $world_size --start-epoch $start_epoch"
if stage_in 21; then
  stage_begin 21 "train LLM-ASR (frozen CTC encoder + projector + LoRA)"
  $llm_env $dist_py speechadapt.bin.train $llm_flags --exp-dir $exp_root/llm_asr --encoder-ckpt $ctc_exp/$ctc_model
  stage_end
fi

# Every LLM-ASR run is decoded twice: greedy (the LLM alone), and METHOD+ctc, joint CTC/LLM
# decoding (models/llm_asr_rescore.py): the LLM's 4 best and each encoder's CTC transcript
# rescored by (1 - w) log P_LLM + w log P_CTC + b words, w and b chosen on the dev sets from
# the grids (the bonus b: summed log-likelihoods favour short transcripts, and deletions led).
llm_rescore_flags="--decoding-method beam --beam-size 4 --ctc-weight-grid 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9 \
  --length-bonus-grid 0,1,2,3,4 --tune-sets source_dev,target_dev"
llm_decode() {  # llm_decode EXP_NAME METHOD [FLAGS]: both decodings of exp_root/EXP_NAME's averaged model
  local run
  for run in "--method $2" "--method $2+ctc $llm_rescore_flags"; do
    $llm_env $dist_py speechadapt.bin.decode --exp-dir $exp_root/$1 --epoch $llm_epochs --avg $llm_avg \
      --use-averaged-model true $decode_flags ${3:-} $run
  done
}
if stage_in 22; then
  stage_begin 22 "decode LLM-ASR (greedy, batched generate; and joint CTC/LLM rescoring)"
  llm_decode llm_asr llm-asr
  stage_end
fi

side_join second_encoder  # started beside stage 10 (--side-by-side), or run here

ctc2_model=$ctc2_exp/epoch-$ctc2_epochs-avg-$ctc_avg.pt
mose_encoders="$ctc_exp/$ctc_model,$ctc2_model"
# First the single-encoder LLM-ASR on the second encoder (MoSE must beat the better of the
# two), then one MoSE per slot dropout of the profile's grid; the dev WERs of stage 25 choose
# among them. The two are independent: with --side-by-side the baseline trains beside MoSE.
dev_and_test_sets="--test-sets source_dev,target_dev,source_test,target_test${extra_sets:+,$extra_sets}"
ctc2_llm_stages() {
  if stage_in 24; then
    stage_begin 24 "train LLM-ASR on the second encoder alone ($ctc2_preset), the MoSE baseline"
    $llm_env $dist_py speechadapt.bin.train $llm_flags --exp-dir $exp_root/llm_asr_ctc2 --encoder-ckpt $ctc2_model \
      --encoder-preset $ctc2_preset
    stage_end
  fi
  if stage_in 25; then
    stage_begin 25 "decode LLM-ASR on the second encoder ($ctc2_preset) on the dev and test sets"
    llm_decode llm_asr_ctc2 llm-asr-$ctc2_preset "$dev_and_test_sets"
    stage_end
  fi
}
side_start ctc2_llm_stages
for p in $mose_slot_dropouts; do
  if stage_in 24; then
    stage_begin 24 "train MoSE ($ctc_preset + $ctc2_preset encoders, slot dropout $p)"
    $llm_env $dist_py speechadapt.bin.train $llm_flags --exp-dir $exp_root/mose_p$p --encoder-ckpt $mose_encoders \
      --encoder-preset $ctc_preset,$ctc2_preset --mose-slot-dropout $p
    stage_end
  fi
  if stage_in 25; then
    stage_begin 25 "decode MoSE (slot dropout $p, all slots) on the dev and test sets"
    llm_decode mose_p$p mose-p$p "$dev_and_test_sets"
    stage_end
  fi
done
side_join ctc2_llm_stages  # 24-25 on the second encoder: beside MoSE (--side-by-side), or run here

# ---- 30-39 fine-tuning on the target domain (first-order and zeroth-order) ----------
# One conf/ft/<run>.yaml per method (optimiser, what is tuned, rates chosen on
# target_dev); budgets from the profile; 8 dev evaluations per run.
ft_data="$data_flags --train-split target_adapt --valid-split target_dev --test-sets $eval_sets \
  --results $results --max-duration $ft_max_duration --max-bad-transcripts $ft_max_bad_transcripts \
  --start-epoch $start_epoch"
ctc_source="--source-exp-dir $ctc_exp --checkpoint $ctc_exp/$ctc_model"
llm_source="--source-exp-dir $exp_root/llm_asr --epoch $llm_epochs --avg $llm_avg --use-averaged-model true"
finetune() {  # finetune SOURCE_FLAGS CONF OUT_DIR STEPS [ENV] [FLAGS] [RUN]: one run of conf/ft/CONF.yaml
  local every=$(( $4 / 8 > 0 ? $4 / 8 : 1 ))
  ${5:-} $dist_py speechadapt.bin.finetune --config conf/ft/$2.yaml $1 $ft_data --exp-dir $exp_root/$3/${7:-$2} \
    --max-steps $4 --eval-every $every ${6:-}
}
# ---- 40-49 test-time adaptation of the Zipformer-CTC (one utterance at a time) --------
# One conf/tta/<method>.yaml per method; the rate is chosen on target_dev by the profile's
# grid (exp_dir/grid.jsonl), then source_test and target_test are adapted with it.
tta_data="$data_flags --test-sets $eval_sets --tune-set target_dev --results $results"
tta() {  # tta CONF GRID [FLAGS] [RUN]: one run of conf/tta/CONF.yaml
  OMP_NUM_THREADS=1 python -m speechadapt.bin.tta --config conf/tta/$1.yaml $ctc_source $tta_data \
    --exp-dir $exp_root/tta_ctc/${4:-$1} ${2:+--grid "$2"} ${3:-}
}
tta_stages() {  # 40-45; with --side-by-side, beside the fine-tuning stages 30-38 and 50-55
  if stage_in 40; then
    stage_begin 40 "Zipformer-CTC without test-time adaptation (the TTA path, 0 steps)"
    tta none ""
    stage_end
  fi
  if stage_in 41; then
    stage_begin 41 "SUTA, episodic, AdamW on the norms (rate from a target_dev grid)"
    tta suta "$tta_grid_suta" "$tta_steps"
    stage_end
  fi
  if stage_in 42; then
    stage_begin 42 "ZO-TTA, episodic, ZO-ASR q 8 on the norms (rate from a target_dev grid)"
    tta zo_tta "$tta_grid_zo" "$tta_steps"
    stage_end
  fi
  if stage_in 43; then
    stage_begin 43 "continual SUTA, one step per utterance, reset on drift (rate from a target_dev grid)"
    tta continual_suta "$tta_grid_continual" "$tta_steps"
    stage_end
  fi
  if stage_in 44; then
    stage_begin 44 "SUTA with a source guard: rate and steps from target_dev, source_dev within 5%"
    tta suta_guarded "$tta_grid_guarded" "$tta_steps"
    stage_end
  fi
  if stage_in 45; then  # the report weighs each TTA gain against this spread
    stage_begin 45 "ZO-TTA again with another seed (--zo-seed: its random directions): the seed-to-seed spread"
    tta zo_tta "$tta_grid_zo" "$tta_steps --seed 2 --zo-seed 2 --method zo-tta-zo-asr-seed2" zo_tta_seed2  # stage 42's name + -seed2
    stage_end
  fi
}
side_start tta_stages

if stage_in 30; then
  stage_begin 30 "Zipformer-CTC zero-shot on the target domain"
  finetune "$ctc_source" zero_shot ft_ctc 0
  stage_end
fi
ft_stage=31
for method in adamw mezo zoasr hizoo lozo; do  # stages 31-35, on the profile's parameter selections
  case $method in adamw) steps=$ft_steps_fo ;; zoasr) steps=$ft_steps_zo_q8 ;; *) steps=$ft_steps_zo ;; esac
  selections=$( [ $method = adamw ] && echo "$ft_selections_fo" || echo "$ft_selections_zo")
  if stage_in $ft_stage; then
    stage_begin $ft_stage "Zipformer-CTC fine-tuning: $method on: $selections"
    for selection in $selections; do finetune "$ctc_source" ${method}_$selection ft_ctc $steps; done
    stage_end
  fi
  ft_stage=$((ft_stage + 1))
done
if stage_in 36; then
  stage_begin 36 "LLM-ASR zero-shot and AdamW on LoRA + projector"
  finetune "$llm_source" zero_shot ft_llm 0 "$llm_env"
  finetune "$llm_source" llm_adamw_lora ft_llm $ft_steps_fo "$llm_env"
  stage_end
fi
if stage_in 37; then
  stage_begin 37 "LLM-ASR zeroth-order (ZO-ASR, q 8) on LoRA, encoder and projector cached"
  finetune "$llm_source" llm_zoasr_lora ft_llm $ft_steps_zo_q8 "$llm_env"
  stage_end
fi
if stage_in 38; then  # the report weighs each fine-tuning gain against this spread
  stage_begin 38 "MeZO on the front end again with another seed (--zo-seed: its random directions): the seed-to-seed spread"
  finetune "$ctc_source" mezo_frontend ft_ctc $ft_steps_zo "" "--seed 2 --zo-seed 2 --method mezo-frontend-seed2" mezo_frontend_seed2
  stage_end
fi


# ---- 50-59 fine-tuning without forgetting: stable FT, merging, metric-driven rate, augmentation ----
# The source Zipformer-CTC on target_adapt, each run scored on source_test (what is
# forgotten), target_test (what is gained) and a speaker-identification probe (stage 55).
forget_root=$exp_root/forget
forget() {  # forget CONF STEPS [FLAGS] [DIR]: one run of conf/forget/CONF.yaml, 20 dev evaluations
  local every=$(( $2 / 20 > 0 ? $2 / 20 : 1 ))
  $dist_py speechadapt.bin.finetune --config conf/forget/$1.yaml $ctc_source $ft_data \
    --exp-dir $forget_root/${4:-$1} --max-steps $2 --eval-every $every ${3:-}
}
merge_sweep() {  # merge_sweep RUN METHOD: the alpha sweep of RUN's best weights with the source
  python -m speechadapt.bin.merge --config conf/forget/merge.yaml --base $ctc_exp/$ctc_model \
    --finetuned $forget_root/$1/best.pt --out $forget_root/merge_$1/merged.pt --method $2 \
    --test-sets $eval_sets $data_flags --results $results
}
if stage_in 50; then
  stage_begin 50 "the pre-trained model, then plain fine-tuning (all parameters, constant rate)"
  forget pretrained 0
  forget plain_ft $ft_steps_fo
  stage_end
fi
if stage_in 51; then
  stage_begin 51 "stable fine-tuning: front end frozen, head first, tri-stage rate"
  forget stable_ft $ft_steps_fo
  stage_end
fi
if stage_in 52; then
  stage_begin 52 "merging: alpha sweep on the dev sets for plain and stable FT, the pick on the tests"
  merge_sweep plain_ft plain-ft+merge
  merge_sweep stable_ft speech-ft
  stage_end
fi
if stage_in 53; then
  stage_begin 53 "metric-driven rate: halve on a dev plateau, stop after 3"
  forget metric_lr $ft_steps_fo
  stage_end
fi
# Augmentation is a regulariser: it pays once plain FT has fitted target_adapt's 200
# utterances, so both run for the longer budget $aug_steps (at 200 updates every mix
# measured was level with plain FT or behind it; see conf/forget/augmented_ft.yaml).
if stage_in 54; then
  stage_begin 54 "augmented fine-tuning (speed, tempo, noise; fbank on the fly) and plain FT, $aug_steps updates each"
  forget plain_ft $aug_steps "--method plain-ft-$aug_steps" plain_ft_$aug_steps
  forget augmented_ft $aug_steps
  stage_end
fi
# Each encoder's probe: METHOD EXP_DIR WEIGHTS (the methods of the forgetting table)
probe_runs="pre-trained $ctc_exp $ctc_exp/$ctc_model
plain-ft $forget_root/plain_ft $forget_root/plain_ft/best.pt
stable-ft $forget_root/stable_ft $forget_root/stable_ft/best.pt
plain-ft+merge $forget_root/merge_plain_ft $forget_root/merge_plain_ft/merged.pt
speech-ft $forget_root/merge_stable_ft $forget_root/merge_stable_ft/merged.pt
metric-lr $forget_root/metric_lr $forget_root/metric_lr/best.pt
plain-ft-$aug_steps $forget_root/plain_ft_$aug_steps $forget_root/plain_ft_$aug_steps/best.pt
augmented-ft $forget_root/augmented_ft $forget_root/augmented_ft/best.pt"
if stage_in 55; then
  stage_begin 55 "speaker-identification probe on each encoder (pre-trained, fine-tuned, merged)"
  while read -r method dir weights; do
    python -m speechadapt.bin.probe --config conf/probe.yaml --source-exp-dir $dir --checkpoint $weights \
      --method $method --exp-dir $forget_root/probe/$method $data_flags --results $results
  done <<< "$probe_runs"
  stage_end
fi

side_join tta_stages  # 40-45: started beside stage 30 (--side-by-side, beside 30-55 then), or run here

# ---- 90-99 report ------------------------------------------------------------------
if stage_in 90; then
  stage_begin 90 "RESULTS and plots from results.jsonl"
  python -m speechadapt.bin.report --exp-dir $exp_root --out $results_md --plot-dir $plot_dir \
    --title "synth recipe ($profile profile)" --gain-set target_test
  stage_end
  cat $results_md
fi

stages_done
