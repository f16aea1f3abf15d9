# synth recipe, full profile: the longer, stronger run (hours on 2 CPU cores; default: conf/recipe_default.sh).
data_dir=data
exp_root=exp/full
results_md=RESULTS-full.md
vocab_size=500
num_workers=1
num_buckets=30
average_period=50
# Zipformer-CTC: ~195 updates an epoch at 100 s batches over 5.4 h of source audio.
ctc_preset=tiny
ctc_epochs=8
ctc_avg=3
ctc_max_duration=100
# second encoder for MoSE: another preset (every stack two layers deep), another seed
ctc2_preset=tiny-deep
ctc2_epochs=8
# LLM-ASR / MoSE
lm_epochs=8
lm_min_copy_accuracy=0.9  # held-out copy accuracy the tiny LM must reach (bin/pretrain_text_lm.py)
lm_scrambled_copy_fraction=0  # measured (default profile, LLM-ASR source / target / untuned): 0 gave 4.24 / 14.88 / 28.05, 0.2 gave 3.44 / 16.34 / 31.95, 0.5 gave 3.09 / 17.00 / 32.75
llm_compress=ctc-tokens  # each encoder's output shortened by its CTC head, its posteriors read through the pieces' token embeddings (models/ctc_compress.py)
llm_stack_k=1     # one vector per CTC run already
lora_r=64
lora_alpha=16
llm_epochs=6
llm_avg=3
llm_max_duration=100
llm_lr=5e-4
mose_slot_dropouts="0.0 0.3"  # one MoSE each, chosen on the dev sets (stage 25)
plot_dir=plots
# fine-tuning on target_adapt (stages 30-37): 30 s batches; budgets per optimiser family
ft_max_duration=30
ft_steps_fo=200
ft_steps_zo=800
ft_steps_zo_q8=100
ft_selections_fo="all norms frontend"  # stage 31 (AdamW): all, norms, frontend
ft_selections_zo="all norms frontend"  # stages 32-35 (zeroth-order)
aug_steps=600  # stage 54: augmented and plain FT, the same updates each
ft_max_bad_transcripts=0.01
# test-time adaptation (stages 40-43): grids evaluated on target_dev, the best kept for the tests
tta_grid_suta="base_lr=1e-2,3e-2,1e-1"
tta_grid_zo="base_lr=1e-1,3e-1"
tta_grid_guarded="base_lr=3e-2,1e-1;em_coef=0.3,1"
tta_grid_continual="base_lr=3e-3,1e-2,3e-2"
tta_steps=""  # the confs' steps (10; continual 1)
# stage 23 beside 10-22, the tiny-deep LLM-ASR beside MoSE (24-25), the TTA stages 40-45 beside
# the fine-tuning stages 30-55, one core each
side_by_side=true
