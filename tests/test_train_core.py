"""The one training core: the fast path resolved once (train/fastpath.py), the model interface
(models/base.py) and the one step (train/step.py) that the trainer, bench and the memory probe share."""

import dataclasses

import pytest
import torch

from budgetlm.config import EvalConfig, FastConfig, OptimConfig, TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.models.base import HeadOptions, LanguageModel
from budgetlm.train.distributed import DistContext
from budgetlm.train.fastpath import FastPath, resolve_fast_path
from budgetlm.train.optim import make_optimizer
from budgetlm.train.step import CycleBatches, train_step

CPU = torch.device("cpu")


def tiny(arch="gpt"):
    return build_model(model_config(arch=arch, n_layer=1, n_head=2, n_embd=16, vocab_size=64, block_size=16))


@pytest.mark.parametrize("arch", ["gpt", "lstm", "d3pm"])
def test_every_model_speaks_the_interface(arch):
    model = tiny(arch)
    assert isinstance(model, LanguageModel)
    assert model.flops_per_token_full_attention(16) >= model.flops_per_token(16) > 0
    model.set_head(HeadOptions())  # all off: every model takes it
    if arch != "gpt":  # a head option the model does not have is refused, not ignored
        with pytest.raises(ValueError, match="no head option ce_kernel"):
            model.set_head(HeadOptions(ce_kernel=True))


def test_cpu_defaults_resolve_to_the_plain_path():
    fast = resolve_fast_path(TrainConfig(), CPU, torch.float32, tiny())
    assert (fast.compile, fast.cuda_graphs, fast.graph_grads, fast.attention) == (False, False, False, None)
    assert fast.head == HeadOptions()  # auto: no chunked loss, no CE kernel off CUDA, fp32 residual
    assert fast.compile_model(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear


def test_a_loss_hook_turns_the_logit_free_heads_off():
    cfg = TrainConfig(fast=FastConfig(fused_loss="on"))
    assert resolve_fast_path(cfg, CPU, torch.float32, tiny()).fused_loss
    assert not resolve_fast_path(cfg, CPU, torch.float32, tiny(), loss_hook=True).fused_loss


def test_only_the_options_a_model_declares_are_resolved():
    cfg = TrainConfig(fast=FastConfig(fused_loss="on", ce_kernel="on", half_residual="on"))
    lstm = resolve_fast_path(cfg, CPU, torch.float32, tiny("lstm"))  # no CE kernel: "on" is not checked
    assert lstm.head == HeadOptions(fused_loss=True)
    assert resolve_fast_path(cfg, CPU, torch.float32, tiny("d3pm")).head == HeadOptions()
    with pytest.raises(BudgetLMError, match="--fp8-head on: the lstm model has no CE-kernel head"):
        resolve_fast_path(TrainConfig(fast=FastConfig(fp8_head="on")), CPU, torch.float32, tiny("lstm"))
    with pytest.raises(BudgetLMError, match="--ce-kernel on needs a CUDA device"):
        resolve_fast_path(TrainConfig(fast=FastConfig(ce_kernel="on")), CPU, torch.float32, tiny())


def test_apply_sets_the_model_options_through_the_interface():
    model = tiny()
    fast = resolve_fast_path(TrainConfig(fast=FastConfig(fused_loss="on", half_residual="on", recompute=1, attn="math")),
                             CPU, torch.float32, model)
    assert fast.apply(model) == []  # no FP8 Linears
    assert model.fused_loss and model.half_residual and not model.ce_kernel
    assert model.recompute == 1 and model.blocks[0].recompute_mlp
    assert model.blocks[0].attn.kernel == "math"


def test_bench_compile_mode_decides_the_graphs():
    cfg = TrainConfig(fast=FastConfig(compile="on"))
    fast = resolve_fast_path(cfg, CPU, torch.float32, tiny(), accum=2, compile_mode="reduce-overhead")
    assert fast.cuda_graphs and fast.graph_grads and fast.compile_mode == "reduce-overhead"
    fast = resolve_fast_path(cfg, CPU, torch.float32, tiny(), accum=2, compile_mode="max-autotune-no-cudagraphs")
    assert not fast.cuda_graphs and not fast.graph_grads


def test_trainer_bench_and_memory_probe_all_apply_a_resolved_fast_path(synth_data, tmp_path, monkeypatch):
    """The fast path is wired in one place: each of the three builds its model through FastPath.apply."""
    from budgetlm.plan.bench import bench_one
    from budgetlm.plan.memory import _train_steps
    from budgetlm.train.trainer import train
    applied = []
    real = FastPath.apply

    def spy(self, model):
        applied.append(type(model).__name__)
        return real(self, model)
    monkeypatch.setattr(FastPath, "apply", spy)
    train(model_config(n_layer=1, n_head=2, n_embd=16), TrainConfig(budget="2-steps", batch_size=2, seq_len=16,
                                                                    out_dir=str(tmp_path), progress=False, device="cpu",
                                                                    eval=EvalConfig(final_eval_tokens=64)), synth_data, log=lambda *_: None)
    bench_one("nano", seq=16, micro_batch=2, steps=1, warmup=0, compile=False, dtype="float32", device="cpu",
              fused_loss=False)
    _train_steps(model_config(n_layer=1, n_head=2, n_embd=16), 2, 16, CPU, 1, None, torch.float32)
    assert applied == ["GPT", "GPT", "GPT"]


def manual_step(model, opt, batches, accum):
    """The trainer's step as it was written inline before train/step.py (fp32, one process)."""
    loss_sum = torch.zeros(())
    for _ in range(accum):
        x, y = batches.next_batch()
        _, loss = model(x, y)
        (loss / accum).backward()
        loss_sum += loss.detach() / accum
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum


def test_train_step_is_the_inline_step_bit_for_bit():
    data = torch.randint(0, 64, (4, 2, 17), generator=torch.Generator().manual_seed(0))
    pairs = [(b[:, :-1], b[:, 1:]) for b in data]
    torch.manual_seed(0)
    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    cfg = TrainConfig(optim=OptimConfig(lr=1e-2))
    opt_a, opt_b = make_optimizer(a, cfg, CPU), make_optimizer(b, cfg, CPU)
    ba, bb = CycleBatches(pairs), CycleBatches(pairs)
    for _ in range(2):
        want = manual_step(a, opt_a, ba, accum=2)
        got = train_step(b, b, opt_b, bb, DistContext(device=CPU), accum=2, device=CPU,
                         autocast=torch.autocast("cpu", enabled=False), cuda_graphs=False, graph_grads=False,
                         grad_clip=1.0)
        assert torch.equal(got.loss, want) and got.grad_norm is not None
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_train_step_hook_replaces_the_objective_but_reports_the_plain_loss():
    model = tiny()
    seen = []

    def hook(x, y, logits, loss):
        seen.append(logits.shape)
        return loss * 0.0  # nothing to learn: only weight decay moves the weights
    before = [p.detach().clone() for p in model.parameters()]
    batches = CycleBatches([(torch.zeros(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))])
    opt = make_optimizer(model, dataclasses.replace(TrainConfig(),
                                                    optim=dataclasses.replace(TrainConfig().optim, weight_decay=0.0)), CPU)
    r = train_step(model, model, opt, batches, DistContext(device=CPU), accum=3, device=CPU,
                   autocast=torch.autocast("cpu", enabled=False), cuda_graphs=False, graph_grads=False, grad_clip=0.0,
                   loss_hook=hook)
    assert len(seen) == 3 and r.grad_norm is None
    assert r.loss.item() > 1.0  # the plain next-token loss, not the hook's zero
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


def test_train_step_counts_a_loaders_data_wait():
    class Waiting(CycleBatches):
        wait_s = 0.0

        def next_batch(self):
            self.wait_s += 0.25
            return super().next_batch()
    model = tiny()
    batches = Waiting([(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))])
    r = train_step(model, model, make_optimizer(model, TrainConfig(), CPU), batches, DistContext(device=CPU),
                   accum=2, device=CPU, autocast=torch.autocast("cpu", enabled=False), cuda_graphs=False,
                   graph_grads=False, grad_clip=1.0)
    assert r.wait_s == pytest.approx(0.5) and r.batch_s >= 0.0
