# synth recipe, fast profile (CI): every stage in minutes, numbers meaningless.
data_dir=data/fast
exp_root=exp/fast
results_md=RESULTS-fast.md
vocab_size=100
num_workers=0
num_buckets=5
average_period=2
ctc_preset=tiny
ctc_epochs=2
ctc_avg=1
ctc_max_duration=60
# second encoder for MoSE: another preset (every stack two layers deep), another seed
ctc2_preset=tiny-deep
ctc2_epochs=1
lm_epochs=3
lm_min_copy_accuracy=0  # wiring only: 3 epochs do not teach copying
lm_scrambled_copy_fraction=0  # measured (default profile, LLM-ASR source / target / untuned): 0 gave 4.24 / 14.88 / 28.05, 0.2 gave 3.44 / 16.34 / 31.95, 0.5 gave 3.09 / 17.00 / 32.75
llm_compress=ctc-tokens  # each encoder's output shortened by its CTC head, its posteriors read through the pieces' token embeddings (models/ctc_compress.py)
llm_stack_k=1     # one vector per CTC run already
lora_r=8
lora_alpha=16
llm_epochs=1
llm_avg=1
llm_max_duration=60
llm_lr=5e-4
mose_slot_dropouts="0.3"  # one MoSE each, chosen on the dev sets (stage 25)
plot_dir=plots-fast
# fine-tuning on target_adapt (stages 30-37)
ft_max_duration=60
ft_steps_fo=4
ft_steps_zo=4
ft_steps_zo_q8=2
ft_selections_fo="all norms frontend"  # stage 31 (AdamW): all, norms, frontend
ft_selections_zo="all norms frontend"  # stages 32-35 (zeroth-order)
# the fast profile's 100-piece BPE lacks some letters of the target text
aug_steps=4  # stage 54: augmented and plain FT, the same updates each
ft_max_bad_transcripts=0.2
# test-time adaptation (stages 40-43): one grid point each, 2 steps
tta_grid_suta="base_lr=3e-2"
tta_grid_zo="base_lr=1"
tta_grid_guarded="base_lr=3e-2"
tta_grid_continual="base_lr=1e-2"
tta_steps="--steps 2 --decode-at 1"
# stage 23 beside 10-22, the tiny-deep LLM-ASR beside MoSE (24-25), the TTA stages 40-45 beside
# the fine-tuning stages 30-55, one core each
side_by_side=true
