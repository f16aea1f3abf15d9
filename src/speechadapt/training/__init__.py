"""Training: one loop, checkpoints, schedulers, distributed set-up, metrics."""
