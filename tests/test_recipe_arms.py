"""The recipe benchmark's arms measure what they say: each switch on the plain recipe, modern as the bundle."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from budgetlm.speedrun.pipeline import _apply_overrides, choose_setup

_spec = importlib.util.spec_from_file_location("recipe_arms", Path(__file__).parents[1] / "benchmarks/recipe_arms.py")
recipe_arms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe_arms)


def _arm_setup(name: str):
    setup = choose_setup("5m", "cpu")
    _apply_overrides(setup, recipe_arms.arm_overrides(name))
    return setup


def test_only_the_modern_arm_trains_the_bundle() -> None:
    # the default recipe (auto) is modern for the speedrun's shape; an arm that left it unnamed measured modern
    for name in recipe_arms.ARMS:
        assert _arm_setup(name).train.recipe == ("modern" if name == "modern" else "plain"), name


def test_a_switch_arm_differs_from_plain_by_its_switch_alone() -> None:
    plain = _arm_setup("plain")
    for name, switch in [("qk_norm", {"qk_norm": True}), ("relu2", {"mlp": "relu2"}), ("untied", {"tie_embeddings": False})]:
        arm = _arm_setup(name)
        assert dataclasses.asdict(arm.model) == {**dataclasses.asdict(plain.model), **switch}, name
        assert arm.train == plain.train
    assert _arm_setup("muon").train.optim.optimizer == "muon" and plain.train.optim.optimizer == "adamw"
