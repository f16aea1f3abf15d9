# commonvoice recipe, smoke profile (CI): the miniature release, a tiny random Whisper.
: "${corpus_dir:=$work_dir/download/smoke}"
: "${whisper_dir:=$work_dir/exp/smoke/models/whisper}"
data_dir=$work_dir/data/smoke
exp_root=$work_dir/exp/smoke
manifests=$data_dir/manifests
results_md=$exp_root/RESULTS-smoke.md
plot_dir=$exp_root/plots-smoke
num_workers=0
max_duration=30
fo_steps=2
zo_steps=2
eval_every_fo=1
eval_every_zo=1
amp_flags=""
