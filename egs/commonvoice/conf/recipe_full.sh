# commonvoice recipe, full profile: Whisper-large-v3 on one GPU (sourced by prepare.sh and run.sh;
# $work_dir, $lang and the overrides from the command line are set before).
: "${corpus_dir:=$work_dir/download/cv-corpus}"
: "${whisper_dir:=$work_dir/download/whisper-large-v3}"
data_dir=$work_dir/data
exp_root=$work_dir/exp/full
manifests=$data_dir/manifests
results_md=RESULTS.md
plot_dir=plots
num_workers=2
# ZO-ASR's batch of 24 clips: Common Voice clips average ~5 s
max_duration=120
fo_steps=4000        # AdamW at 1e-5 for 4000 updates (the Hugging Face Whisper fine-tuning blog's setting)
zo_steps=30000       # ZO-ASR's 30k SGD updates
eval_every_fo=500
eval_every_zo=2000
amp_flags="--use-bf16 true --dtype bf16"
