"""argparse helpers with icefall-familiar semantics."""

import argparse


def str2bool(value) -> bool:
    """Parse the usual spellings of a boolean flag value (``--use-fp16 true``)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("yes", "true", "t", "y", "1"):
        return True
    if v in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def comma_ints(value: str) -> tuple:
    """'2,2,3' -> (2, 2, 3): icefall passes per-stack Zipformer values this way."""
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return tuple(int(v) for v in str(value).split(",") if v.strip())
