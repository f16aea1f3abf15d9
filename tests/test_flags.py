"""One configuration mechanism: flags generated from dataclass fields, one owner per
flag, --config YAML files (command line wins), and every YAML file the recipes ship
loads into the stage it names."""

import argparse
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import yaml

from speechadapt.utils.flags import add_dataclass_arguments, dataclass_from_args, parse_args

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Example:
    name: str = "tiny"
    rate: float = 0.1
    steps: int = 3
    use_it: bool = True
    maybe: Optional[int] = None
    words: List[str] = field(default_factory=lambda: ["a", "b"])
    dims: Tuple[int, ...] = (1, 2)
    mode: str = field(default="x", metadata={"choices": ("x", "y"), "help": "which mode"})
    needed: str = field(default="", metadata={"required": True, "aliases": ["--also-needed"]})

    def validate(self):
        if self.steps < 0:
            raise ValueError("--steps must be >= 0")


def parser():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Example)
    return p


def test_flags_from_fields_round_trip():
    args = parser().parse_args(["--needed", "n", "--rate", "0.5", "--use-it", "false", "--maybe", "4",
                                "--words", "x,y,z", "--dims", "7,8,9", "--mode", "y"])
    config = dataclass_from_args(Example, args)
    assert config == Example(rate=0.5, use_it=False, maybe=4, words=["x", "y", "z"], dims=(7, 8, 9), mode="y",
                             needed="n")
    assert dataclass_from_args(Example, parser().parse_args(["--also-needed", "n"])) == Example(needed="n")
    with pytest.raises(SystemExit):
        parser().parse_args(["--needed", "n", "--mode", "z"])  # not a choice
    with pytest.raises(SystemExit):
        parser().parse_args([])  # --needed is required
    with pytest.raises(ValueError, match="--steps"):
        dataclass_from_args(Example, parser().parse_args(["--needed", "n", "--steps", "-1"]))
    assert "which mode (default: x)" in parser().format_help()


def test_a_flag_has_one_owner():
    @dataclass
    class Other:
        rate: float = 1.0

    p = parser()
    with pytest.raises(argparse.ArgumentError, match="conflicting option string: --rate"):
        add_dataclass_arguments(p, Other)


def test_config_file_values_and_command_line_precedence(tmp_path):
    conf = tmp_path / "stage.yaml"
    conf.write_text("entry_point: example\nrate: 0.25\nuse-it: false\nwords: [p, q]\nneeded: from-file\nsteps: 9\n")
    args = parse_args(parser(), ["--config", str(conf), "--steps", "5"], entry_point="example")
    config = dataclass_from_args(Example, args)
    assert (config.rate, config.use_it, config.words, config.needed, config.steps) == (0.25, False, ["p", "q"],
                                                                                      "from-file", 5)


@pytest.mark.parametrize("text, message", [
    ("rate: 0.2\ntypo_key: 1\n", "stage.yaml: unknown key\\(s\\) \\['typo_key'\\]"),
    ("entry_point: decode\nrate: 0.2\n", "is for 'decode', not for 'example'"),
    ("rate: {a: 1}\n", "must be flat"),
    ("- just\n- a list\n", "expected a mapping"),
    ("rate: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files_are_named(tmp_path, capsys, text, message):
    conf = tmp_path / "stage.yaml"
    conf.write_text(text)
    with pytest.raises((SystemExit, ValueError)) as exc:
        parse_args(parser(), ["--config", str(conf), "--needed", "n"], entry_point="example")
    shown = str(exc.value) + capsys.readouterr().err
    assert "stage.yaml" in shown
    assert re.search(message, shown), shown


def stage_parser(entry: str, tokens):
    """The parser of the stage a YAML file names: speechadapt.bin.<entry> or a local script."""
    module = None
    if importlib.util.find_spec(f"speechadapt.bin.{entry}") is not None:
        module = importlib.import_module(f"speechadapt.bin.{entry}")
    else:
        scripts = list(ROOT.glob(f"local/{entry}.py")) + list(ROOT.glob(f"egs/*/local/{entry}.py"))
        assert len(scripts) == 1, f"no stage named {entry}"
        spec = importlib.util.spec_from_file_location(f"stage_{entry}", scripts[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    get_parser = module.get_parser
    return get_parser(tokens) if get_parser.__code__.co_argcount else get_parser()


SHIPPED = sorted(ROOT.glob("egs/*/conf/**/*.yaml"))


def test_the_recipes_ship_config_files():
    assert len(SHIPPED) >= 5


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_every_shipped_config_file_loads(path):
    data = yaml.safe_load(path.read_text())
    assert "entry_point" in data, f"{path} must say which stage reads it (entry_point:)"
    entry = data.pop("entry_point")
    tokens = [f"--{k.replace('_', '-')}={v}" for k, v in data.items() if isinstance(v, str)]
    built = stage_parser(entry, tokens)
    given = {k.replace("-", "_") for k in data}
    filler = []
    for action in built._actions:
        if action.required and action.dest not in given:
            filler += [action.option_strings[0], "1"] if action.option_strings else []
    args = parse_args(lambda toks: stage_parser(entry, toks), ["--config", str(path), *filler], entry_point=entry)
    for key, value in data.items():
        got = getattr(args, key.replace("-", "_"))
        assert (list(got) if isinstance(got, tuple) else got) == value, f"{path}: {key}"


def test_one_registry_one_collapse_one_config_mechanism():
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "speechadapt").rglob("*.py"))
    assert len(re.findall(r"^def build_optimizer\(", sources, re.M)) == 1
    assert len(re.findall(r"^def \w*ctc\w*collapse\(", sources, re.M)) == 1
    # flag ownership is argparse's (a duplicate is an error), not decided by hand
    assert "_option_string_actions" not in sources and 'conflict_handler="resolve"' not in sources
    assert "add_dataclass_overrides" not in sources and "def from_args" not in sources
