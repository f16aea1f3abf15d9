# librispeech recipe, smoke profile (CI): the miniature tree, tiny stand-ins for every model.
data_dir=data/smoke
exp_root=exp/smoke
results_md=RESULTS-smoke.md
plot_dir=plots-smoke
num_workers=0
num_buckets=2
encoder_preset=tiny
llm_dir=exp/smoke/models/tiny_qwen2
encoder_ckpt=exp/smoke/models/icefall/transducer/exp/pretrained.pt
mose_encoder_ckpts=exp/smoke/models/icefall/transducer/exp/pretrained.pt,exp/smoke/models/icefall/cr-ctc/exp/pretrained.pt,exp/smoke/models/icefall/cr-ctc-aed/exp/pretrained.pt,exp/smoke/models/icefall/transducer-large/exp/pretrained.pt
llm_epochs=1
llm_avg=1
max_duration=30
average_period=2
amp_flags=""
