"""The CLI's flags come from the config fields: every verb spells a knob one way, with the field's
choices, and every flag says what it does."""

import argparse
import tomllib
from importlib import import_module
from pathlib import Path

import pytest
import torch

from budgetlm.cli import build_parser
from budgetlm.config import ModelConfig, TrainConfig, leaf_paths

CONFIG_FIELDS = set(leaf_paths(ModelConfig)) | set(leaf_paths(TrainConfig))


def verb_actions():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings:
                yield verb, action


def test_every_flag_of_every_verb_has_help():
    missing = [f"{verb} {'/'.join(a.option_strings)}" for verb, a in verb_actions() if not a.help]
    assert not missing, missing


def test_config_knobs_are_generated_from_their_field():
    """A flag that sets a config field is built by cli.flags from the field, never declared by hand."""
    by_hand = [f"{verb} {'/'.join(a.option_strings)}" for verb, a in verb_actions()
               if a.dest in CONFIG_FIELDS and getattr(a, "config_field", None) != a.dest
               and not isinstance(a, argparse._StoreConstAction)]  # --zero1 = --zero-stage 1
    assert not by_hand, by_hand


def test_no_two_verbs_spell_or_bound_a_field_differently():
    """Long spellings and choices of a field are the same in every verb (short llm.c letters are train's)."""
    seen: dict[str, dict] = {}
    for verb, a in verb_actions():
        if getattr(a, "config_field", None) is None:
            continue
        spelling = (tuple(o for o in a.option_strings if o.startswith("--")), tuple(a.choices or ()))
        seen.setdefault(a.dest, {}).setdefault(spelling, []).append(verb)
    differing = {dest: v for dest, v in seen.items() if len(v) > 1}
    assert not differing, differing
    # the knobs the issue found spelled three ways: now one flag each, in every verb that has it
    assert seen["seq_len"].keys() == {(("--seq-len", "--seq"), ())}
    assert seen["batch_size"].keys() == {(("--batch-size", "--micro-batch"), ())}
    assert seen["compile"].keys() == {(("--compile",), ("auto", "on", "off"))}
    assert {"train", "speedrun", "bench", "plan", "eval"} <= {v for s in seen["seq_len"].values() for v in s}


def test_old_spellings_still_parse():
    p = build_parser()
    a = p.parse_args(["bench", "--seq", "64", "--micro-batch", "2", "4", "--compile", "off"])
    assert (a.seq_len, a.batch_size, a.compile) == (64, [2, 4], "off")
    a = p.parse_args(["train", "--total-batch", "4096", "-t", "32", "-b", "4", "-l", "0.01"])
    assert (a.total_batch_tokens, a.seq_len, a.batch_size, a.lr) == (4096, 32, 4, 0.01)
    a = p.parse_args(["plan", "--fused-loss", "--recompute"])  # bare switches, as before
    assert (a.fused_loss, a.recompute) == ("on", 2)
    assert p.parse_args(["plan"]).fused_loss == "off"


@pytest.mark.parametrize("argv, flag", [(["bench", "--seq-len", "0"], "--seq-len"),
                                        (["eval", "run", "--batch-size", "-1"], "--batch-size"),
                                        (["speedrun", "--lr", "nan"], "--lr"),
                                        (["bench", "--compile", "maybe"], "--compile")])
def test_field_rules_apply_at_parse_time_in_every_verb(argv, flag, capsys):
    from budgetlm.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and err[0].startswith(f"budgetlm {argv[0]}: error:")


def test_bench_decides_auto_as_the_trainer_does():
    from budgetlm.cli.bench import resolved_switches
    args = build_parser().parse_args(["bench", "--compile", "auto", "--dtype", "auto", "--half-residual", "auto"])
    assert resolved_switches(args, torch.device("cpu")) == (False, "float32", False)
    args = build_parser().parse_args(["bench"])  # bench's own defaults: the GPU fast path
    assert resolved_switches(args, torch.device("cpu")) == (True, "bfloat16", True)


def test_console_script_and_module_entry_points_resolve():
    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["budgetlm"].partition(":")
    assert getattr(import_module(module), attr) is import_module("budgetlm.cli").main
    assert "from budgetlm.cli import main" in (Path(__file__).parents[1] / "budgetlm" / "__main__.py").read_text()


def test_each_verb_module_registers_one_way():
    from budgetlm.cli import VERBS
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for module in VERBS:
        name = module.__name__.rsplit(".", 1)[1]
        assert callable(module.register) and callable(module.run), name
        assert sub.choices[name].get_default("fn") is module.run, name


def test_a_bool_field_is_a_switch_pair_that_stays_unset_unless_given():
    from budgetlm.cli.flags import OneLineParser, field_flag, picked
    p = OneLineParser(prog="t")
    action = field_flag(p, "tie_embeddings")
    assert action.option_strings == ["--tie-embeddings", "--no-tie-embeddings"] and action.help
    assert picked(p.parse_args([]), ("tie_embeddings",)) == {}
    assert picked(p.parse_args(["--no-tie-embeddings"]), ("tie_embeddings",)) == {"tie_embeddings": False}
