"""Small, dependency-light helpers shared by every room of the package."""

from speechadapt.utils.args import str2bool
from speechadapt.utils.config import config_from_dict, config_to_dict
from speechadapt.utils.io import atomic_save, atomic_write_text
from speechadapt.utils.log import setup_logger

__all__ = [
    "str2bool",
    "config_from_dict",
    "config_to_dict",
    "atomic_save",
    "atomic_write_text",
    "setup_logger",
]
