"""Thin CLI entry points, one per Python stage: ``python -m speechadapt.bin.NAME``."""
