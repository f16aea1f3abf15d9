# librispeech recipe, full profile: the published setting (4 GPUs, bf16, max-duration 200, 10 epochs,
# decoding epoch 10 avg 5). Point the model paths at your downloads (README: which and where).
data_dir=data
exp_root=exp/full
results_md=RESULTS.md
plot_dir=plots
num_workers=4
num_buckets=30
encoder_preset=large
llm_dir=download/Qwen2-1.5B-Instruct
encoder_ckpt=download/icefall/zipformer-large-transducer/exp/pretrained.pt
mose_encoder_ckpts=download/icefall/zipformer-large-transducer/exp/pretrained.pt,download/icefall/zipformer-large-cr-ctc-transducer/exp/pretrained.pt,download/icefall/zipformer-large-cr-ctc-aed/exp/pretrained.pt,download/icefall/zipformer-large-cr-ctc/exp/pretrained.pt
llm_epochs=10
llm_avg=5
max_duration=200
average_period=200
amp_flags="--use-bf16 true --llm-dtype bf16"
