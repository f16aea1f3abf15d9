"""Data: lhotse manifests, fbank, datamodule, augmentation, synthetic speech.

Modules (imported on demand, so ``import speechadapt.data`` stays cheap):
  grammar     command grammar (>= 300 words) for the synthetic text
  espeak      espeak-ng through ctypes (espeakng-loader wheel), voice checks, 16 kHz
  noise       white / pink / babble noise, SNR mixing
  synth       the synthetic corpus: plan, synthesise, target noise, metadata
  manifests   lhotse recordings/supervisions/cuts, bad-input checks
  features    80-dim fbank (LilcomChunkyWriter), speed perturbation
  bpe         sentencepiece model + tokens.txt (icefall layout)
  datamodule  AsrDataModule (DynamicBucketingSampler, SpecAugment, noise mixing)
  summary     per-split corpus summary
"""
