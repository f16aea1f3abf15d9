"""Data: lhotse manifests, fbank, datamodule, augmentation, synthetic speech."""
