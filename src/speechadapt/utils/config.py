"""Typed configs (dataclasses) <-> plain dicts.

Checkpoints must stay readable with ``torch.load(weights_only=True)``, so configs go
in as plain dicts (``dataclasses.asdict``) and come back through ``config_from_dict``,
which restores tuple fields (asdict keeps tuples, but JSON and some writers turn
them into lists) and rejects unknown keys with a message naming them.
"""

import dataclasses
import typing
from typing import Any, Dict, Type, TypeVar

T = TypeVar("T")


def config_to_dict(config) -> Dict[str, Any]:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return _plain(dataclasses.asdict(config))


def _plain(value):
    # tuples become lists: both load under weights_only=True, lists also go to JSON.
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_dict(cls: Type[T], data: Dict[str, Any], strict: bool = True) -> T:
    """Build ``cls`` from ``data``; tuple-typed fields accept lists."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown and strict:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in names:
            continue
        kwargs[name] = _coerce(hints.get(name), value)
    return cls(**kwargs)


def _coerce(hint, value):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if (hint is tuple or origin is tuple) and isinstance(value, list):
        return tuple(value)
    if origin is typing.Union:
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            if typing.get_origin(arg) is tuple or arg is tuple:
                return tuple(value) if isinstance(value, list) else value
    return value
