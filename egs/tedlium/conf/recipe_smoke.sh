# tedlium recipe, smoke profile (CI): miniature TED-LIUM and LibriSpeech, a tiny random HuBERT.
: "${corpus_dir:=$work_dir/download/smoke/TEDLIUM_release-3}"
: "${librispeech_dir:=$work_dir/download/smoke/LibriSpeech}"
: "${hubert_dir:=$work_dir/exp/smoke/models/hubert}"
data_dir=$work_dir/data/smoke
exp_root=$work_dir/exp/smoke
manifests=$data_dir/manifests
ctc_dir=$exp_root/models/hubert-ctc
results_md=$exp_root/RESULTS-smoke.md
plot_dir=$exp_root/plots-smoke
num_workers=0
max_duration=30
ft_steps=4
eval_every=2
alphas="0:1:0.5"
probe_methods="pre-trained speech-ft"   # the stage runs; three more probes are 15 s of CI
