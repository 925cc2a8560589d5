"""Checkpoints an attacker, a kill, a full disk or a diverged run cannot turn into lost work or run code:
no pickle (state_codec), `latest` kept inside its folder, rename-aside replace, manifest + fallback,
NaN weights never latest, write failures cleaned up, sweeps that never delete a checkpointed run."""

import errno
import json
import time
import math
import random
import shutil

import numpy as np
import pytest
import torch

from budgetlm import cli
from budgetlm.config import TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.sweep.runner import load_sweep, run_sweep
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train import state_codec
from budgetlm.train.trainer import train

MODEL_FLAGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--batch-size", "4", "--seq-len", "32",
               "--threads", "1"]


def tiny():
    return model_config(n_layer=2, n_head=2, n_embd=32)


def cfg(out, **kw):
    base = dict(budget="12-steps", batch_size=4, seq_len=32, lr=3e-3, out_dir=str(out), progress=False,
                log_every=1, final_eval_tokens=1024, seed=7, checkpoint_every=4)
    return TrainConfig(**{**base, **kw})


class Payload:
    """Unpickling it creates `marker`: stands for any code a crafted pickle would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Killed(BaseException):
    """A kill: no except clause of the code under test catches it, as none runs on SIGKILL."""


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """A 12-step run stopped at step 8: step_00000004 and step_00000008 (latest); tests work on copies."""
    out = tmp_path_factory.mktemp("ckpt_run") / "run"
    train(tiny(), cfg(out), synth_data, stop_after_steps=8, log=lambda *_: None)
    return out


@pytest.fixture
def run(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def step(run, n):
    return run / "checkpoints" / f"step_{n:08d}"


def make_legacy(folder, extra=None):
    """Rewrite a checkpoint as the old format wrote it: the state pickled in state.pt, no manifest."""
    state = ckpt_mod.load_checkpoint(folder)[4]
    torch.save({**state, **(extra or {})}, folder / "state.pt")
    for name in ("state.json", "state.safetensors", "manifest.json"):
        (folder / name).unlink(missing_ok=True)
    return state


def same(a, b):
    """Equal as trees, with types, dtypes, tuple-vs-list and NaN all counted."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


# ---- the codec ----
def test_codec_round_trips_training_state_exactly(tmp_path):
    from safetensors.torch import load_file, save_file
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), foreach=True)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    np.random.standard_normal()  # a cached gaussian in numpy's state
    tree = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                                   "numpy": np.random.get_state(),
                                                   "cuda": [torch.get_rng_state(), torch.get_rng_state()]},
            "losses": [1.5, float("nan"), float("inf"), -float("inf"), -0.0], "step": 2 ** 70,
            "odd keys": {1: "int", (2, 3): "tuple", None: 0, "__tuple__": 1}, "marker-like": {"__tuple__": [1]},
            "dtypes": [torch.ones(2, dtype=d) for d in (torch.bfloat16, torch.float16, torch.int64, torch.bool)],
            "np": [np.arange(5, dtype=np.uint32), np.zeros((0, 3)), np.float32(1.25), np.int64(-3)],
            "shared": [torch.arange(6)[:3], torch.arange(6)], "nested": ([], {}, ())}
    tensors, doc = state_codec.encode(tree)
    save_file(tensors, str(tmp_path / "s.safetensors"))
    text = state_codec.dumps(doc)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))  # strict JSON
    back = state_codec.decode(load_file(str(tmp_path / "s.safetensors")), state_codec.loads(text))
    assert same(back, tree)
    assert list(back["optimizer"]["state"]) == [0, 1]  # int keys stay ints: load_state_dict needs them
    fresh = torch.optim.AdamW(model.parameters(), foreach=True)
    fresh.load_state_dict(back["optimizer"])
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])


def test_codec_refuses_what_it_cannot_store():
    with pytest.raises(state_codec.StateCodecError, match=r"state\['x'\]: cannot store set"):
        state_codec.encode({"x": {1}})
    with pytest.raises(state_codec.StateCodecError, match="names tensor"):
        state_codec.decode({}, {"__tensor__": "t0"})


# ---- nothing runs from a file ----
def test_crafted_old_state_file_runs_nothing_on_resume(run, synth_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    make_legacy(step(run, 8), {"evil": Payload(marker)})
    with pytest.raises(BudgetLMError, match="state.pt: refused"):
        train(tiny(), cfg(run), synth_data, resume=str(run), log=lambda *_: None)
    other = ["--n-layer", "3", "--n-head", "2", "--n-embd", "32"]  # a config mismatch is refused later still
    for extra in (["--resume"], ["-y", "1"]):
        argv = ["train", "--data", str(synth_data), "--out", str(run), "--budget", "12-steps", "--no-progress"]
        assert cli.main(argv + other + extra) == 2
        assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_planted_state_pt_beside_state_json_is_never_read(run, synth_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"evil": Payload(marker)}, step(run, 8) / "state.pt")
    argv = ["train", "--data", str(synth_data), "--out", str(run), "--budget", "12-steps", "--no-progress", "-y", "1"]
    assert cli.main(argv + MODEL_FLAGS) == 0
    assert not marker.exists()


def test_crafted_state_runs_nothing_on_eval_sample_export(run, synth_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    make_legacy(step(run, 8), {"evil": Payload(marker)})
    assert cli.main(["eval", str(run), "--data", str(synth_data), "--max-tokens", "256", "--device", "cpu"]) == 0
    assert cli.main(["sample", str(run), "--max-tokens", "4", "--device", "cpu"]) == 0
    assert cli.main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert not marker.exists()


def test_old_state_pt_converts_safely_and_resumes_exactly(synth_data, tmp_path):
    straight = train(tiny(), cfg(tmp_path / "a", budget="4-steps", checkpoint_every=0), synth_data,
                     log=lambda *_: None)
    half = tmp_path / "b"
    train(tiny(), cfg(half, budget="4-steps", checkpoint_every=0), synth_data, stop_after_steps=2,
          log=lambda *_: None)
    original = make_legacy(step(half, 2))
    converted = ckpt_mod.load_checkpoint(half)[4]
    assert same(converted, original)
    resumed = train(tiny(), cfg(half, budget="4-steps", checkpoint_every=0), synth_data, resume=str(half),
                    log=lambda *_: None)
    assert resumed.extra["losses"] == straight.extra["losses"]
    assert (step(half, 4) / "state.json").is_file() and not (step(half, 4) / "state.pt").exists()


def test_latest_pointing_outside_is_not_followed(run, tmp_path, capsys):
    mine = tmp_path / "mine" / "checkpoints"
    mine.mkdir(parents=True)
    for target in (str(step(run, 8)), f"../../run/checkpoints/{step(run, 8).name}"):
        (mine / "latest").write_text(target)
        with pytest.raises(BudgetLMError, match="no checkpoint found"):
            ckpt_mod.resolve_checkpoint(mine.parent)
        assert "ignoring" in capsys.readouterr().err
    (mine / "latest").write_text("step_00000008")
    (mine / "step_00000008").symlink_to(step(run, 8), target_is_directory=True)
    with pytest.raises(BudgetLMError, match="link out of its checkpoints folder"):
        ckpt_mod.load_checkpoint(mine.parent, with_state=False)


# ---- a kill while replacing a step folder ----
def test_kill_inside_the_replace_window_loses_nothing(run, synth_data, monkeypatch):
    real_replace = ckpt_mod.os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp_step_00000008"):  # the old step_8 is already moved aside
            raise Killed
        real_replace(src, dst)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    with pytest.raises(Killed):  # resuming to stop at step 8 again rewrites step_8
        train(tiny(), cfg(run), synth_data, resume=str(run), stop_after_steps=8, log=lambda *_: None)
    monkeypatch.undo()
    assert ckpt_mod.load_checkpoint(run, with_state=False)[4] is None  # readable as it lies
    logs = []
    info = train(tiny(), cfg(run), synth_data, resume=str(run), stop_after_steps=8, log=logs.append)
    assert any("step_00000008 at step 8" in m for m in logs) and info.steps == 8
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["latest", "step_00000004", "step_00000008"]


def test_kill_before_the_aside_folder_is_deleted(run, synth_data, monkeypatch):
    real_rmtree = shutil.rmtree

    def rmtree(path, *a, **k):
        if str(path).endswith(".old_step_00000008"):
            raise Killed
        real_rmtree(path, *a, **k)
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        train(tiny(), cfg(run), synth_data, resume=str(run), stop_after_steps=8, log=lambda *_: None)
    monkeypatch.undo()
    assert ckpt_mod.resolve_checkpoint(run) == step(run, 8)
    ckpt_mod.load_checkpoint(run)  # the resume path tidies the leftover
    assert not (run / "checkpoints" / ".old_step_00000008").exists()


# ---- fallback to the newest intact checkpoint ----
@pytest.mark.parametrize("damage", ["truncate_weights", "garbage_state", "garbage_old_state_pt"])
def test_broken_newest_checkpoint_falls_back(run, synth_data, tmp_path, capsys, damage):
    if damage == "truncate_weights":
        w = step(run, 8) / "model.safetensors"
        w.write_bytes(w.read_bytes()[:1000])
    elif damage == "garbage_state":
        (step(run, 8) / "state.json").write_text("{not json")
    else:  # an old-format folder (no manifest) whose state.pt is damaged, not crafted: fall back, not refuse
        make_legacy(step(run, 8))
        (step(run, 8) / "state.pt").write_bytes(b"\x80\x02garbage" * 50)
    logs = []
    info = train(tiny(), cfg(run, checkpoint_every=0), synth_data, resume=str(run), log=logs.append)
    assert any("step_00000004 at step 4" in m for m in logs) and info.steps == 12
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step_00000008" in err[0] and "using" in err[0] and "step_00000004" in err[0]
    if damage == "garbage_old_state_pt":
        return  # without a manifest, pruning cannot tell the old folder is damaged
    # pruning keeps the intact step_4 as the one earlier checkpoint, not the broken step_8
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000012"]


def test_broken_newest_falls_back_on_eval_sample_export(run, synth_data, tmp_path, capsys):
    w = step(run, 8) / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    assert cli.main(["eval", str(run), "--data", str(synth_data), "--max-tokens", "256", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(step(run, 4))
    assert cli.main(["sample", str(run), "--max-tokens", "4", "--device", "cpu"]) == 0
    assert cli.main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert err.count("broken checkpoint") == 2 and "model.safetensors" in err
    # named explicitly, a broken folder is an error naming it, not a traceback
    assert cli.main(["sample", str(step(run, 8)), "--max-tokens", "4", "--device", "cpu"]) == 2
    assert f"{step(run, 8)}: broken checkpoint" in capsys.readouterr().err


def test_nothing_intact_is_a_clear_error(run):
    for n in (4, 8):
        (step(run, n) / "config.json").write_text("[]")
    with pytest.raises(BudgetLMError, match="no intact checkpoint found.*step_00000008.*step_00000004"):
        ckpt_mod.load_checkpoint(run)


# ---- disk full, leftovers ----
def test_disk_full_leaves_no_temp_files_and_the_previous_checkpoint(run, synth_data, monkeypatch):
    real = ckpt_mod.save_file

    def full(tensors, filename, *a, **k):  # the disk fills up halfway through the weights
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ckpt_mod, "save_file", full)
    with pytest.raises(BudgetLMError, match=r"step_00000012: could not write the checkpoint \(No space left"):
        train(tiny(), cfg(run), synth_data, resume=str(run), log=lambda *_: None)
    assert not list((run / "checkpoints").glob(".tmp*"))
    assert ckpt_mod.resolve_checkpoint(run) == step(run, 8)
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert train(tiny(), cfg(run), synth_data, resume=str(run), log=lambda *_: None).steps == 12


def test_a_real_write_failure_is_caught_too(run):
    """Not a mock: the file-size limit makes the kernel fail the writes (EFBIG), as a full disk would;
    safetensors reports that as SafetensorError, not OSError."""
    resource = pytest.importorskip("resource")
    import signal
    from budgetlm.report.summary import load_model
    model, tok, _ = load_model(run)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # the weights are ~200 KB
    try:
        with pytest.raises(BudgetLMError, match=r"step_00000012: could not write the checkpoint \(.*File too large"):
            ckpt_mod.save_checkpoint(run / "checkpoints", 12, model, model.cfg, tok, {"step": 12})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not list((run / "checkpoints").glob(".tmp*")) and not step(run, 12).exists()
    assert ckpt_mod.resolve_checkpoint(run) == step(run, 8)


def test_leftover_temp_folders_are_cleaned_on_save_and_load(run, synth_data):
    root = run / "checkpoints"
    for name in (".tmp_step_00000099", ".tmp_step_00000003"):
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"\0" * 4096)
    ckpt_mod.load_checkpoint(run)
    assert not list(root.glob(".tmp*"))
    (root / ".tmp_step_00000099").mkdir()
    train(tiny(), cfg(run), synth_data, resume=str(run), log=lambda *_: None)
    assert not list(root.glob(".tmp*"))


# ---- a diverged run ----
def test_nan_weights_never_become_latest(run, synth_data):
    def poison(step_, frac, x, y, logits, loss):  # inf gradients in the last step; its logged loss is finite
        return loss * float("inf") if step_ == 11 else None
    with pytest.raises(BudgetLMError, match="step_00000012: not written: weight .* NaN/inf .* diverged"):
        train(tiny(), cfg(run, checkpoint_every=0), synth_data, resume=str(run),
              loss_hook=poison, log=lambda *_: None)
    assert ckpt_mod.resolve_checkpoint(run) == step(run, 8)
    assert not list((run / "checkpoints").glob(".tmp*")) and not step(run, 12).exists()


def test_eval_sample_export_refuse_nan_weights(run, synth_data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    from budgetlm.train.manifest import write_manifest
    folder = step(run, 8)
    w = load_file(str(folder / "model.safetensors"))
    w["wte.weight"][3, 1] = float("nan")
    save_file(w, str(folder / "model.safetensors"))
    if (folder / "manifest.json").is_file():  # a consistent checkpoint of NaN weights, as a diverged run wrote
        write_manifest(folder, json.loads((folder / "manifest.json").read_text())["files"])
    assert cli.main(["eval", str(run), "--data", str(synth_data), "--device", "cpu"]) == 2
    assert cli.main(["sample", str(run), "--device", "cpu"]) == 2
    assert cli.main(["export", str(run), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("wte.weight holds NaN/inf" in line and "diverged" in line for line in err)
    assert not (tmp_path / "hf").exists()


# ---- sweeps ----
def sweep_config(tmp_path, data):
    p = tmp_path / "sweep.toml"
    p.write_text(f"""
[sweep]
budget = "8-steps"
data = "{data}"
seeds = [1]
out = "{tmp_path / 'sweep'}"
[model]
n_head = 2
n_embd = 32
[train]
batch_size = 4
seq_len = 32
final_eval_tokens = 512
threads = 1
log_every = 1
checkpoint_every = 4
[grid]
n_layer = [2]
""")
    return p


@pytest.fixture(scope="module")
def swept(synth_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("swept")
    run_sweep(load_sweep(sweep_config(base, synth_data)), log=lambda *_: None)
    return base


@pytest.fixture
def sweep_copy(swept, synth_data, tmp_path):
    shutil.copytree(swept / "sweep", tmp_path / "sweep")
    run_dir = tmp_path / "sweep" / "n_layer=2" / "seed1"
    (run_dir / "summary.json").unlink()  # as if killed before the end
    return sweep_config(tmp_path, synth_data), run_dir


def test_sweep_resumes_a_run_whose_newest_checkpoint_is_half_deleted(sweep_copy):
    config, run_dir = sweep_copy
    first_metrics = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    (step(run_dir, 8) / "model.safetensors").unlink()
    res = run_sweep(load_sweep(config), log=lambda *_: None)
    assert res.rows[0]["status"] == "ok" and res.rows[0]["steps"] == 8
    assert "step_00000004 at step 4" in (run_dir / "train.log").read_text()
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[0] == first_metrics  # not deleted and redone


def test_sweep_refuses_crafted_state_and_keeps_the_run(sweep_copy, tmp_path):
    config, run_dir = sweep_copy
    marker = tmp_path / "pwned"
    make_legacy(step(run_dir, 8), {"evil": Payload(marker)})
    res = run_sweep(load_sweep(config), log=lambda *_: None)
    assert res.rows[0]["status"] == "failed" and "refused" in res.rows[0]["error"]
    assert not marker.exists() and (step(run_dir, 8) / "state.pt").is_file()


def test_sweep_never_deletes_a_run_with_only_broken_checkpoints(sweep_copy):
    config, run_dir = sweep_copy
    for n in (4, 8):
        (step(run_dir, n) / "model.safetensors").write_bytes(b"junk")
    res = run_sweep(load_sweep(config), log=lambda *_: None)
    assert res.rows[0]["status"] == "failed" and "not retrained, its checkpoints are kept" in res.rows[0]["error"]
    assert step(run_dir, 4).is_dir() and (run_dir / "metrics.jsonl").is_file()


def test_an_oversized_config_is_refused_before_any_model_is_built(run, synth_data, capsys):
    """An edited config.json asking for a 94 GB model (48 x 6400) is compared with its weights
    file on the meta device first: one clear line, no allocation, and with no intact checkpoint
    left, no fallback either."""
    from budgetlm.train.manifest import write_manifest
    for n in (4, 8):
        path = step(run, n) / "config.json"
        data = json.loads(path.read_text())
        data["model"].update(n_layer=48, n_embd=6400, n_head=50)
        path.write_text(json.dumps(data))
        manifest = step(run, n) / "manifest.json"  # consistent, as whoever wrote the config would make it
        write_manifest(step(run, n), json.loads(manifest.read_text())["files"])
    t0 = time.perf_counter()
    assert cli.main(["eval", str(run), "--data", str(synth_data), "--device", "cpu"]) == 2
    assert time.perf_counter() - t0 < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json describes a model of 23,601,881,600 parameters" in err[0]
