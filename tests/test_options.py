"""One source for every option: each command's flags, and each recipe TOML section's keys, are the
options dataclasses' fields, with their defaults, the registries' choices and their help."""

import argparse
from dataclasses import MISSING, dataclass, fields

import pytest

from edgediff.cli.calibrate import SOURCE_DEFAULTS
from edgediff.cli.main import build_parser, main
from edgediff.compiler.build import section_keys
from edgediff.compiler.jobs import prune_to_dir
from edgediff.compiler.pipeline import compile_model
from edgediff.compiler.recipe import Recipe
from edgediff.core.errors import EdgediffError
from edgediff.core.options import (
    UNSET,
    add_options,
    option,
    option_names,
    options_from_args,
    options_from_table,
    positive_int,
    verb_defaults,
)
from edgediff.core.schedule import SPACINGS
from edgediff.distill.distill import METHODS, DistillOptions, distill
from edgediff.lower.registry import LOWERINGS
from edgediff.prune.importance import IMPORTANCES
from edgediff.prune.prune import FinetuneOptions, PruneOptions
from edgediff.quantize.calibration.observers import OBSERVERS
from edgediff.quantize.calibration.select import SELECTORS
from edgediff.quantize.w8a8 import SCHEMES, QuantizeOptions
from edgediff.runtimes.samplers import SOLVERS

# command -> [(options dataclass, the fields it takes (None: all), fields whose default is the source's)]
COMMANDS = {
    "compile": [(Recipe, None, SOURCE_DEFAULTS), (QuantizeOptions, None, ())],
    "calibrate": [(Recipe, SOURCE_DEFAULTS, SOURCE_DEFAULTS)],
    "prune": [(PruneOptions, None, ()), (FinetuneOptions, None, ())],
    "distill": [(DistillOptions, None, ())],
}
# (dataclass, field) -> the registry its choices must equal
REGISTRIES = {
    (Recipe, "sampler"): tuple(SOLVERS),
    (Recipe, "quantize"): SCHEMES,
    (Recipe, "weights"): tuple(dict.fromkeys(w for lo in LOWERINGS.values() for w in lo.weights)),
    (QuantizeOptions, "observer"): tuple(OBSERVERS),
    (QuantizeOptions, "selection"): tuple(SELECTORS),
    (PruneOptions, "importance"): tuple(IMPORTANCES),
}
MINIMAL = {  # the required arguments of each command
    "compile": ["src", "-o", "out"],
    "calibrate": ["src", "-o", "out.npz"],
    "prune": ["src", "--ratio", "0.3", "-o", "out"],
    "distill": ["src", "--method", "progressive", "-o", "out"],
}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _option_fields(cls, only):
    return [f for f in fields(cls) if f.metadata.get("cli", True) and (only is None or f.name in only)]


def _flag(f) -> str:
    sw = f.metadata.get("switch")
    return "--" + (sw[0] if sw else f.metadata.get("name") or f.name).replace("_", "-")


def _cases():
    for cmd, groups in COMMANDS.items():
        for cls, only, unset in groups:
            for f in _option_fields(cls, only):
                yield pytest.param(cmd, cls, f, unset, id=f"{cmd}-{cls.__name__}.{f.name}")


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("cmd, cls, f, unset", list(_cases()))
def test_flag_default_and_choices_come_from_the_dataclass(parser, cmd, cls, f, unset):
    actions = _subparser(parser, cmd)._option_string_actions
    flag = _flag(f)
    assert flag in actions, f"{cmd} has no {flag} for {cls.__name__}.{f.name}"
    a = actions[flag]
    assert a.help and f.metadata["help"] in a.help
    if f.name in unset:
        assert a.default is UNSET  # filled from the source, else from the dataclass
    elif isinstance(a, argparse._AppendAction):
        assert a.default is None and f.default == ()  # no flag given: the dataclass's empty tuple
    else:
        assert a.default == f.default, (a.default, f.default)
    if (cls, f.name) in REGISTRIES:
        assert tuple(a.choices) == REGISTRIES[cls, f.name]
    elif f.name == "spacing":
        assert tuple(a.choices[: len(SPACINGS)]) == SPACINGS and set(a.choices) - set(SPACINGS) == {"lcm"}
    elif a.choices is not None:  # a Literal field: the annotation is the registry
        from typing import get_args, get_type_hints

        assert tuple(a.choices) == get_args(get_type_hints(cls)[f.name])


@pytest.mark.parametrize("cmd", COMMANDS)
def test_no_flags_give_the_dataclass_defaults(parser, cmd):
    ns = parser.parse_args([cmd, *MINIMAL[cmd]])
    for cls, _, _ in COMMANDS[cmd]:
        assert options_from_args(cls, ns) == cls()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_lists_every_field(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cls, only, _ in COMMANDS[cmd]:
        for f in _option_fields(cls, only):
            assert _flag(f) in text, (cmd, f.name)


def test_verb_arguments_default_to_the_verbs_signature(parser):
    ns = parser.parse_args(["distill", *MINIMAL["distill"]])
    d = verb_defaults(distill)
    assert (ns.steps, ns.guidance, ns.guidance_distill, ns.data) == (
        d["steps"],
        d["guidance"],
        d["guidance_distill"],
        d["data"],
    )
    assert tuple(_subparser(parser, "distill")._option_string_actions["--method"].choices) == METHODS
    assert parser.parse_args(["compile", *MINIMAL["compile"]]).target == verb_defaults(compile_model)["target"]
    assert parser.parse_args(["prune", *MINIMAL["prune"]]).data == verb_defaults(prune_to_dir)["data"]


def test_source_defaults_fill_unset_flags(parser):
    ns = parser.parse_args(["compile", *MINIMAL["compile"], "--steps", "6"])
    r = options_from_args(Recipe, ns, fill={"sampler": "ddim", "steps": 4, "spacing": "trailing"})
    # the student's values where no flag was given, the flag where one was, the Recipe's elsewhere
    assert (r.sampler, r.steps, r.spacing, r.guidance) == ("ddim", 6, "trailing", Recipe().guidance)


@pytest.mark.parametrize(
    "section, cmd, not_keys",
    [
        ("prune", "prune", {"nproc", "output"}),
        ("distill", "distill", {"nproc", "output", "checkpoint_dir"}),  # build puts checkpoints in BUNDLE.stages
        ("compile", "compile", {"output", "json"}),
    ],
)
def test_recipe_keys_are_the_commands_flags(parser, section, cmd, not_keys):
    dests = {a.dest for a in _subparser(parser, cmd)._actions if a.option_strings and a.dest != "help"}
    assert section_keys(section) == dests - not_keys


def test_table_and_flags_build_the_same_options(parser):
    ns = parser.parse_args(
        ["prune", *MINIMAL["prune"], "--finetune-steps", "5", "--layer-ratio", "down*=0.5", "--protect", "mid*"]
        + ["--scope", "global", "--quiet", "--no-default-protect", "--lr", "1e-3"]
    )
    table = {
        "finetune_steps": 5,
        "layer_ratio": ["down*=0.5"],
        "protect": ["mid*"],
        "scope": "global",
        "progress": False,
        "default_protect": False,
        "lr": 1e-3,
    }
    for cls in (PruneOptions, FinetuneOptions):
        assert options_from_table(cls, table, "r.toml [prune]") == options_from_args(cls, ns)
    # a pair can be written as a TOML list too
    assert options_from_table(PruneOptions, {"layer_ratio": [["down*", 0.5]]}, "w").layer_ratios == (("down*", 0.5),)
    d = options_from_table(DistillOptions, {"guidance_range": [2, 4], "train_steps": 3}, "w")
    assert d.guidance_range == (2.0, 4.0) and d.train_steps == 3


@pytest.mark.parametrize(
    "cls, table, match",
    [
        (FinetuneOptions, {"batch_size": 0}, r"r.toml \[s\]: field batch_size: must be a positive integer"),
        (FinetuneOptions, {"finetune_steps": 2.5}, "field finetune_steps must be an integer"),
        (FinetuneOptions, {"lr": "fast"}, "field lr must be a number"),
        (PruneOptions, {"importance": "random"}, "field importance is 'random'; choose one of taylor, magnitude"),
        (PruneOptions, {"protect": "conv_in"}, "field protect must be a list"),
        (PruneOptions, {"layer_ratio": ["down*"]}, "field layer_ratio: 'down\\*': expected PATTERN=RATIO"),
        (PruneOptions, {"layer_ratio": ["down*=1.5"]}, r"r.toml \[s\]: prune: ratio must lie"),  # the dataclass's check
        (QuantizeOptions, {"selection": "uniform"}, "selection_budget"),
        (DistillOptions, {"guidance_range": [1, 2, 3]}, "a list of 2 values"),
        (DistillOptions, {"progress": "no"}, "field progress must be true or false"),
    ],
)
def test_table_errors_name_the_file_and_field(cls, table, match):
    with pytest.raises(EdgediffError, match=match):
        options_from_table(cls, table, "r.toml [s]")


def test_prefix_and_only():
    @dataclass(frozen=True)
    class Knobs:
        steps: int = option(3, parse=positive_int, help="how many")
        mode: str = option("a", choices=lambda: ("a", "b"), help="which")

    p = argparse.ArgumentParser()
    add_options(p, Knobs, prefix="teacher_")
    add_options(p, Knobs, only=("mode",))
    ns = p.parse_args(["--teacher-steps", "7", "--mode", "b"])
    assert options_from_args(Knobs, ns, prefix="teacher_") == Knobs(steps=7)
    assert options_from_args(Knobs, ns) == Knobs(mode="b")
    assert option_names(Knobs, prefix="teacher_") == {"teacher_steps", "teacher_mode"}
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    with pytest.raises(TypeError, match="no option field"):
        add_options(argparse.ArgumentParser(), Knobs, only=("stpes",))


def test_a_field_without_option_metadata_is_refused():
    @dataclass(frozen=True)
    class Plain:
        steps: int = 3

    with pytest.raises(TypeError, match="declare it with"):
        add_options(argparse.ArgumentParser(), Plain)
    assert all(f.default is not MISSING for f in fields(Recipe))  # every option has a default


def test_targets_prints_through_the_listing(capsys, monkeypatch):
    import edgediff.targets
    from edgediff.targets import available_targets, load_target
    from edgediff.targets.listing import format_targets_table, targets_json

    loaded = {n: load_target(n) for n in available_targets()}  # host-cpu measures free memory: load once
    monkeypatch.setattr(edgediff.targets, "load_target", loaded.__getitem__)
    profiles = list(loaded.values())
    assert main(["targets"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == format_targets_table(profiles)
    assert main(["targets", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(targets_json(profiles)))


def test_calibrate_takes_a_students_defaults_as_compile_does(tmp_path, capsys):
    import json

    from edgediff.compiler.capture import recipe_defaults
    from edgediff.quantize.calibration import load_calibration

    source = "builtin:digits-lcm-4"
    student = recipe_defaults(source)
    assert student["sampler"] != Recipe().sampler and student["steps"] != Recipe().steps
    out = tmp_path / "c.npz"
    assert main(["calibrate", source, "--samples", "1", "--batch-size", "1", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == student["steps"]
    assert load_calibration(out).meta.sampler == student["sampler"]
