"""Shared fixtures; `slow` tests run with --runslow (or BUDGETLM_SLOW=1), `gpu` tests need CUDA."""

import importlib.util
import os
import subprocess
import sys
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


def end_spawned_rank(rank: int, world: int, ok: bool) -> None:
    """End a test's mp.spawn worker as the trainer ends its own group (budgetlm's DistContext
    teardown), then, after a clean run, skip interpreter finalization: there gloo's worker threads
    sometimes abort the process ("terminate called without an active exception", ~3-5% of runs,
    with or without the teardown; cf. pytorch/pytorch#179291) after the results are written."""
    from budgetlm.train.distributed import DistContext
    DistContext(rank=rank, world=world, owned=True).teardown(clean=ok)
    if ok:
        os._exit(0)


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


@pytest.fixture
def run_interpreted():
    """Run a script under Triton's interpreter (TRITON_INTERPRET=1 is read when a kernel is
    decorated, hence a fresh process); it must print "ok". Skips where Triton is absent (CPU wheels)
    or where the script exits 77 because the interpreter cannot run here."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (CPU wheels)")

    def run(script: str) -> None:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        if r.returncode == 77:
            pytest.skip(r.stdout.strip())
        assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
    return run
