# tedlium recipe, full profile: HuBERT-base on one GPU (sourced by prepare.sh and run.sh).
: "${corpus_dir:=$work_dir/download/TEDLIUM_release-3}"
: "${librispeech_dir:=$work_dir/download/LibriSpeech}"
: "${hubert_dir:=$work_dir/download/hubert-base-ls960}"
data_dir=$work_dir/data
exp_root=$work_dir/exp/full
manifests=$data_dir/manifests
ctc_dir=$exp_root/models/hubert-base-ctc
results_md=RESULTS.md
plot_dir=plots
num_workers=2
max_duration=200
ft_steps=20000
eval_every=2000
alphas="0:1:0.1"
probe_methods="pre-trained plain-ft stable-ft plain-ft+merge speech-ft"
