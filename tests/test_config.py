"""The nested TrainConfig: groups owned by the components that read them, one JSON/TOML round trip,
and today's flat dicts (old checkpoints, plan files, sweep grids) still accepted.

nest_config: skip (the flat spellings below are what these tests check; the rewrite script leaves them)"""

import dataclasses
import json

import pytest

from budgetlm.config import (FastConfig, OptimConfig, TrainConfig, check_table, flat_dict, from_dict, get_value,
                             leaf_paths, set_value, to_dict)
from budgetlm.errors import BudgetLMError

FLAT_OLD_CHECKPOINT = {  # a train_config as checkpoints wrote it before the tree (every key flat)
    "budget": "10-steps", "batch_size": 4, "total_batch_tokens": None, "seq_len": 32, "lr": 0.003,
    "min_lr_frac": 0.1, "warmup_frac": 0.05, "warmup_steps": 2, "schedule": "wsd", "weight_decay": 0.1,
    "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "seed": 7, "device": "cpu", "dtype": "auto", "compile": "off",
    "threads": 1, "eval_every": 0, "eval_points": 10, "eval_tokens": 65536, "final_eval_tokens": 512,
    "checkpoint_every": 0, "log_every": 10, "log_to": "jsonl", "out_dir": "runs/x", "progress": False,
    "fused_loss": "auto", "ce_kernel": "auto", "recompute": 1, "attn": "auto", "fp8": "off", "fp8_modules": "all",
    "fp8_head": "off", "cuda_graphs": "auto", "half_residual": "auto", "teacher": None, "distill_steps": 200,
    "distill_alpha": 0.5, "distill_temp": 1.0, "max_steps": None, "sample_every": 0, "sample_tokens": 64,
    "hellaswag_every": 0, "hellaswag_items": 0, "hellaswag_file": None, "train_shards": None, "val_shards": None,
    "parallel": "auto", "zero_stage": 0}

# issue 21's fields, at their defaults: an old checkpoint without them loads with these
ISSUE21_FIELDS = {"recipe": "auto", "optimizer": "adamw", "muon_lr": 0.02, "muon_momentum": 0.95,
                  "muon_weight_decay": 0.0, "muon_lr_adjust": "original", "embed_lr": None, "head_lr": None,
                  "decay_frac": 0.2, "batch_warmup_frac": 0.0}

def test_every_flat_field_has_exactly_one_home():
    paths = leaf_paths(TrainConfig)
    # nothing lost, nothing added by the move; issue 21 added the recipe/optimizer fields beside it
    assert set(paths) == set(FLAT_OLD_CHECKPOINT) | set(ISSUE21_FIELDS)
    assert paths["optimizer"] == "optim.optimizer" and paths["decay_frac"] == "schedule.decay_frac"
    assert paths["lr"] == "optim.lr" and paths["warmup_frac"] == "schedule.warmup_frac"
    assert paths["compile"] == "fast.compile" and paths["zero_stage"] == "dist.zero_stage"
    assert paths["train_shards"] == "data.train_shards" and paths["eval_tokens"] == "eval.eval_tokens"
    assert paths["budget"] == "budget" and paths["seed"] == "seed"


def test_old_flat_checkpoint_loads_and_round_trips_nested():
    cfg = from_dict(TrainConfig, FLAT_OLD_CHECKPOINT, "old checkpoint")
    assert (cfg.optim.lr, cfg.schedule.schedule, cfg.schedule.warmup_steps, cfg.fast.recompute) == (0.003, "wsd", 2, 1)
    nested = json.loads(json.dumps(to_dict(cfg)))
    assert nested["optim"]["lr"] == 0.003 and "lr" not in nested  # to_dict is the tree
    assert from_dict(TrainConfig, nested, "checkpoint") == cfg
    assert flat_dict(cfg) == {**FLAT_OLD_CHECKPOINT, **ISSUE21_FIELDS}  # summary.json's "train" keeps flat keys


def test_constructor_and_replace_take_flat_keys_without_sharing_groups():
    a = TrainConfig(lr=1e-3, compile="off")
    assert a == TrainConfig(optim=OptimConfig(lr=1e-3), fast=FastConfig(compile="off"))
    b = dataclasses.replace(a, lr=5e-3)
    assert (a.optim.lr, b.optim.lr, b.fast.compile) == (1e-3, 5e-3, "off")
    b.fast.compile = "on"
    assert a.fast.compile == "off"  # a copy, not a shared sub-config
    set_value(b, "warmup_steps", 3)
    assert get_value(b, "warmup_steps") == b.schedule.warmup_steps == 3


def test_a_flat_attribute_fails_loudly_instead_of_being_ignored():
    cfg = TrainConfig()
    with pytest.raises(AttributeError, match="moved to TrainConfig.optim.lr"):
        cfg.lr
    with pytest.raises(AttributeError, match="moved to TrainConfig.optim.lr"):
        cfg.lr = 1.0  # would otherwise be a new attribute the trainer never reads
    with pytest.raises(TypeError, match="bogus"):
        TrainConfig(bogus=1)


@pytest.mark.parametrize("values, message", [
    ({"lr": "fast"}, "lr in f.toml: expected a number"),
    ({"optim": {"lr": -1.0}}, "optim.lr in f.toml must be positive"),
    ({"optim": {"learning_rate": 1.0}}, "unknown field(s) optim.learning_rate"),
    ({"lrr": 1.0}, "unknown field(s) lrr"),
    ({"optim": 3}, "optim in f.toml: expected a table"),
    ({"schedule": "sometimes"}, "schedule in f.toml must be one of cosine"),  # the leaf, not the group
])
def test_bad_keys_name_the_key_and_the_file(values, message):
    with pytest.raises(BudgetLMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(TrainConfig, values, "f.toml")


def test_toml_train_table_takes_flat_keys_and_sub_tables(tmp_path, synth_data):
    import tomllib
    text = '[train]\nbudget = "2-steps"\nlr = 0.004\n[train.fast]\ncompile = "off"\n[train.schedule]\nschedule = "linear"\n'
    file = tomllib.loads(text)
    check_table(TrainConfig, file["train"], "p.toml", "train")
    cfg = from_dict(TrainConfig, file["train"], "p.toml")
    assert (cfg.optim.lr, cfg.fast.compile, cfg.schedule.schedule) == (0.004, "off", "linear")
    with pytest.raises(BudgetLMError, match=r"train.fast.compil in p.toml: unknown key"):
        check_table(TrainConfig, {"fast": {"compil": "on"}}, "p.toml", "train")
    from budgetlm.cli import main
    (tmp_path / "p.toml").write_text(text + '[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\n')
    assert main(["train", "--data", str(synth_data), "--config", str(tmp_path / "p.toml"), "--out",
                 str(tmp_path / "run"), "--batch-size", "2", "--seq-len", "16", "--no-progress", "--threads", "1"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["train"]["lr"], summary["train"]["schedule"], summary["steps"]) == (0.004, "linear", 2)


def test_sweep_train_table_takes_sub_tables(tmp_path):
    from budgetlm.sweep.runner import build_configs, load_sweep, plan_runs
    path = tmp_path / "s.toml"
    path.write_text(f'[sweep]\ndata = "{tmp_path}"\nbudget = "2-steps"\nout = "{tmp_path / "o"}"\n'
                    '[grid]\nn_layer = [1]\n[train]\nbatch_size = 2\n[train.optim]\nlr = 0.005\n'
                    '[train.fast]\ncompile = "off"\n')
    spec = load_sweep(path)
    _, tcfg = build_configs(spec, plan_runs(spec)[0], tmp_path / "o")
    assert (tcfg.optim.lr, tcfg.fast.compile, tcfg.batch_size) == (0.005, "off", 2)
    path.write_text(path.read_text() + "[train.eval]\nevery = 3\n")
    with pytest.raises(BudgetLMError, match=r"unknown field\(s\) eval.every"):
        load_sweep(path)
