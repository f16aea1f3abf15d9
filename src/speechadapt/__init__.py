"""speechadapt: recipes for training and adapting speech foundation models."""

__version__ = "0.1.0"
