# librispeech_tta recipe, smoke profile (CI): the miniature tree, a tiny random wav2vec2 CTC.
: "${corpus_dir:=$work_dir/download/smoke/LibriSpeech}"
: "${model_dir:=$work_dir/exp/smoke/models/wav2vec2}"
data_dir=$work_dir/data/smoke
exp_root=$work_dir/exp/smoke
manifests=$data_dir/manifests
results_md=$exp_root/RESULTS-smoke.md
plot_dir=$exp_root/plots-smoke
num_workers=0
zo_tta_flags="--steps 2 --decode-at 1"   # 40 ZO steps x 17 forwards per utterance are minutes on a CPU
