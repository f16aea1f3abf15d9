# librispeech_tta recipe, full profile: wav2vec2-base-960h on one GPU (sourced by prepare.sh and run.sh).
: "${corpus_dir:=$work_dir/download/LibriSpeech}"
: "${model_dir:=$work_dir/download/wav2vec2-base-960h}"
data_dir=$work_dir/data
exp_root=$work_dir/exp/full
manifests=$data_dir/manifests
results_md=RESULTS.md
plot_dir=plots
num_workers=2
zo_tta_flags=""
