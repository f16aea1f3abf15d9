"""Command-line flags from dataclass fields, and stage flags from a YAML file.

The one configuration mechanism of the project:

* every option lives in a dataclass field; ``add_dataclass_arguments(parser, Cls)``
  makes one ``--field-name`` flag per field (type, default, help and choices from the
  field), and ``dataclass_from_args(Cls, args)`` builds the dataclass back through
  :func:`speechadapt.utils.config.config_from_dict`, the one dict -> dataclass
  converter. argparse refuses a flag defined twice, so every flag has one owner.
* ``parse_args(make_parser, argv, entry_point)`` validates every config class the
  parser holds (a bad value is a usage error naming the flag) and adds ``--config FILE``: a flat YAML
  mapping of flag names (``base_lr: 0.04`` or ``base-lr: 0.04``) read as if those
  flags came first on the command line, so flags given on the command line win and
  every value goes through the same argparse type conversion. An unknown key is an
  error naming the file and the key; an ``entry_point:`` key, when present, must name
  the stage that reads the file.

List and tuple fields take comma-separated values (``--lora-targets q_proj,v_proj``),
as icefall does for per-stack Zipformer options.
"""

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from speechadapt.utils.args import str2bool
from speechadapt.utils.config import config_from_dict

ENTRY_POINT_KEY = "entry_point"


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(hint):
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _item_parser(hint) -> Callable[[str], Any]:
    if hint is bool:
        return str2bool
    if hint in (int, float, str):
        return hint
    if hint is Path:
        return str
    raise TypeError(f"no flag parser for type {hint!r}")


def _list_parser(item: Callable[[str], Any], as_tuple: bool) -> Callable[[Any], Any]:
    def parse(value):
        if isinstance(value, (list, tuple)):
            values = [item(v) if isinstance(v, str) else v for v in value]
        else:
            values = [item(v.strip()) for v in str(value).split(",") if v.strip()]
        return tuple(values) if as_tuple else values

    parse.__name__ = "comma-separated list"
    return parse


def int_or_auto(value) -> Any:
    """'auto' or an int (``--start-epoch auto``)."""
    if isinstance(value, int) or str(value).strip() == "auto":
        return value if isinstance(value, int) else "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {value!r}") from None


NAMED_PARSERS = {"int_or_auto": int_or_auto}


def field_parser(hint) -> Callable[[Any], Any]:
    """The argparse ``type`` for a field annotation (Optional, List and Tuple included)."""
    hint = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if origin in (list, tuple) or hint in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = _item_parser(args[0]) if args else str
        return _list_parser(item, as_tuple=origin is tuple or hint is tuple)
    return _item_parser(hint)


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls,
    title: Optional[str] = None,
    exclude: Iterable[str] = (),
    defaults: Optional[Dict[str, Any]] = None,
) -> argparse._ArgumentGroup:
    """One flag per field of ``cls``. Field metadata may hold ``help``, ``choices``,
    ``aliases`` (extra flag spellings) and ``required``. ``defaults`` overrides the
    dataclass defaults (an entry point's own defaults)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or cls.__name__)
    # parse_args validates every config class of the parser, so a bad value is a
    # usage error at parse time, not a traceback later
    parser.__dict__.setdefault("_config_classes", []).append(cls)
    skip = set(exclude)
    overrides = dict(defaults or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise KeyError(f"defaults for unknown {cls.__name__} fields: {unknown}")
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        meta = f.metadata or {}
        default = overrides.get(f.name, _default_of(f))
        parse = NAMED_PARSERS[meta["type"]] if "type" in meta else field_parser(hints[f.name])
        kwargs: Dict[str, Any] = dict(dest=f.name, type=parse, default=default)
        if meta.get("required"):
            kwargs["required"] = True
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        note = "required" if meta.get("required") else f"default: {shown}"
        kwargs["help"] = f"{meta.get('help', '')} ({note})".strip()
        group.add_argument(flag_name(f.name), *meta.get("aliases", ()), **kwargs)
    return group


def dataclass_from_args(cls, args: argparse.Namespace):
    """``cls`` built from the parsed flags of its fields (missing ones keep defaults);
    ``validate()`` is called when the class has it."""
    values = vars(args)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    config = config_from_dict(cls, {n: values[n] for n in names if n in values})
    if hasattr(config, "validate"):
        config.validate()
    return config


# ---- YAML ---------------------------------------------------------------------------


class ConfigFileError(ValueError):
    """A --config file that cannot be used; the message names the file."""


def find_flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``), last one wins."""
    value = None
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(flag + "="):
            value = token[len(flag) + 1:]
    return value


def read_config_file(path, entry_point: Optional[str] = None) -> Dict[str, Any]:
    """The flat mapping of a stage YAML file (``entry_point`` checked and removed)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigFileError(f"--config {path}: not valid YAML ({e})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigFileError(f"--config {path}: expected a mapping of flag names to values, "
                              f"found {type(data).__name__}")
    declared = data.pop(ENTRY_POINT_KEY, None)
    if declared is not None and entry_point is not None and str(declared) != entry_point:
        raise ConfigFileError(f"--config {path} is for '{declared}', not for '{entry_point}'")
    nested = sorted(k for k, v in data.items() if isinstance(v, dict))
    if nested:
        raise ConfigFileError(f"--config {path}: keys {nested} hold mappings; the file must be flat "
                              f"(one flag per key)")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _tokens_for(action: argparse.Action, value: Any) -> List[str]:
    flag = action.option_strings[0]
    if action.nargs == 0:  # store_true-like switches
        return [flag] if str2bool(value) else []
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag, "true" if value else "false"]
    if isinstance(value, (list, tuple)):
        if action.nargs in ("+", "*") or isinstance(action.nargs, int):
            return [flag, *map(str, value)]
        return [flag, ",".join(map(str, value))]
    return [flag, str(value)]


def config_tokens(parser: argparse.ArgumentParser, values: Dict[str, Any], source: str) -> List[str]:
    """Command-line tokens equivalent to a config mapping; unknown keys name ``source``."""
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(k for k in values if k not in by_dest)
    if unknown:
        raise ConfigFileError(
            f"{source}: unknown key(s) {unknown}; this stage's flags are "
            f"{sorted(d for d in by_dest if d not in ('help', 'config'))}")
    tokens: List[str] = []
    for key, value in values.items():
        tokens += _tokens_for(by_dest[key], value)
    return tokens


ParserFactory = Callable[[Sequence[str]], argparse.ArgumentParser]


def parse_args(make_parser, argv: Optional[Sequence[str]] = None,
               entry_point: Optional[str] = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config FILE`` support (command-line flags win).

    ``make_parser`` is a parser, or a function of the tokens (config file first, then
    the command line) that builds one: an entry point whose flags depend on an earlier
    flag (``train --model KIND``) reads it from them.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = find_flag_value(argv, "--config")
    values = read_config_file(path, entry_point) if path else {}
    values.pop("config", None)
    pre_tokens = _naive_tokens(values)
    parser = make_parser(pre_tokens + argv) if callable(make_parser) and not isinstance(
        make_parser, argparse.ArgumentParser) else make_parser
    if not any("--config" in a.option_strings for a in parser._actions):
        parser.add_argument("--config", default=None,
                            help="YAML file of flag values (command-line flags win)")
    try:
        tokens = config_tokens(parser, values, f"--config {path}") if values else []
    except ConfigFileError as e:
        parser.error(str(e))
    args = parser.parse_args(tokens + argv)
    for cls in parser.__dict__.get("_config_classes", []):
        try:
            dataclass_from_args(cls, args)
        except (ValueError, TypeError) as e:
            parser.error(str(e))
    return args


def _naive_tokens(values: Dict[str, Any]) -> List[str]:
    """Tokens for a factory to peek at before the parser exists (e.g. ``--model``)."""
    tokens = []
    for key, value in values.items():
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            tokens += [flag_name(key), str(value)]
    return tokens
