"""Shared fixtures; `slow` tests run with --runslow (or BUDGETLM_SLOW=1), `gpu` tests need CUDA."""

import os
from pathlib import Path

import pytest
import torch

SHARED_STORIES = Path(__file__).resolve().parents[1].parent / "shared/data/tinystories-lower/stories.txt"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("BUDGETLM_SLOW") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow or BUDGETLM_SLOW=1"))
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)"))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """~60k tokens of synthetic stories with a 512-token BPE, prepared once per session."""
    from budgetlm.data.prepare import prepare
    out = tmp_path_factory.mktemp("synth_data")
    prepare("synth", "bpe:512", out, max_tokens=60_000, log=lambda *_: None)
    return out


@pytest.fixture
def stories_path():
    if not SHARED_STORIES.is_file():
        pytest.skip(f"shared TinyStories sample not found at {SHARED_STORIES}")
    return SHARED_STORIES
