# synth recipe, default profile: every stage, 72-123 min on 2 CPU cores (measured 4,297 s and 7,362 s on two machines; 30 min was the aim)
# (full profile: the longer, stronger run; fast: CI).
data_dir=data/default
exp_root=exp/default
results_md=RESULTS.md
vocab_size=500
num_workers=1
num_buckets=30
average_period=50
ctc_preset=tiny
# Measured: 6 epochs of 60 s batches (744 updates, 541 s) left the CTC at 21.8 / 51.4 (source /
# target test, mostly deletions); the full profile passed 2% at ~1,500 updates of 100 s. So:
# 16 epochs of 80 s batches over 3,000 utterances (~1,650 updates) reached 5.97 / 32.42 with the
# validation loss flat from ~1,000 updates (overfitting; the full profile's 7,000 utterances
# kept falling). So the same compute over 7,000 distinct utterances: 7 epochs of 80 s batches.
ctc_epochs=7
ctc_avg=3
ctc_max_duration=80
# second encoder for MoSE: another preset (every stack two layers deep), another seed
ctc2_preset=tiny-deep
ctc2_epochs=7  # 4 epochs of 3,000 utterances (496 updates) left it at 66.1 / 82.4
# LLM-ASR / MoSE
lm_epochs=4  # 8 epochs of 3,000 sentences reached copy accuracy 0.977; 4 of 7,000 are as many updates
lm_min_copy_accuracy=0.9  # held-out copy accuracy the tiny LM must reach (bin/pretrain_text_lm.py)
lm_scrambled_copy_fraction=0  # measured (default profile, LLM-ASR source / target / untuned): 0 gave 4.24 / 14.88 / 28.05, 0.2 gave 3.44 / 16.34 / 31.95, 0.5 gave 3.09 / 17.00 / 32.75
llm_compress=ctc-tokens  # each encoder's output shortened by its CTC head, its posteriors read through the pieces' token embeddings (models/ctc_compress.py)
llm_stack_k=1     # one vector per CTC run already
lora_r=64
lora_alpha=16
llm_epochs=2  # 4 epochs of 3,000 utterances before: as many updates
llm_avg=1
llm_max_duration=60
llm_lr=5e-4
mose_slot_dropouts="0.3"  # one MoSE each, chosen on the dev sets (stage 25)
plot_dir=plots-default
# fine-tuning on target_adapt (stages 30-37): 30 s batches; budgets per optimiser family
ft_max_duration=30
ft_steps_fo=100
ft_steps_zo=300
ft_steps_zo_q8=40
# one selection each: AdamW on all parameters, zeroth-order on the front end (the best ZO
# selection of the full profile: MeZO front end -26.6% target against 6-12% on all parameters)
ft_selections_fo="all"  # stage 31 (AdamW): all, norms, frontend
ft_selections_zo="frontend"  # stages 32-35 (zeroth-order)
aug_steps=200  # stage 54: augmented and plain FT, the same updates each
ft_max_bad_transcripts=0.01
# test-time adaptation (stages 40-43): grids evaluated on target_dev, the best kept for the tests
tta_grid_suta="base_lr=3e-2,1e-1"
tta_grid_zo="base_lr=3e-1"
tta_grid_guarded="base_lr=1e-1;em_coef=0.3,1"
tta_grid_continual="base_lr=1e-2"
tta_steps=""  # the confs' steps (10; continual 1)
# stage 23 beside 10-22, the tiny-deep LLM-ASR beside MoSE (24-25), the TTA stages 40-45 beside
# the fine-tuning stages 30-55, one core each
side_by_side=true
