"""--optimizer muon: the update is Keller Jordan's Muon (checked against a float64 Newton-Schulz
written here), the groups split as intended with their own LRs, and resume / DDP stay exact."""

import math

import numpy as np
import pytest
import torch

from budgetlm.config import OptimConfig, TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train.optim import MuonAdamW, make_optimizer, muon_optimizer, set_group_lrs
from budgetlm.train.recipe import check_switches
from budgetlm.train.trainer import train

QUIET = dict(log=lambda *_: None)
pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")


def newton_schulz_f64(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The reference orthogonalization: X <- aX + (bA + cA^2)X with A = XX^T, on the wide side, in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("rows,cols", [(8, 24), (24, 8)])
def test_muon_step_matches_float64_newton_schulz(rows, cols):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(rows, cols))
    w0 = w.detach().clone()
    grads = [torch.randn(rows, cols), torch.randn(rows, cols)]
    opt = muon_optimizer([w], TrainConfig(optim=OptimConfig(optimizer="muon")))  # the defaults: lr 0.02, momentum 0.95, no decay
    buf, expect = torch.zeros(rows, cols, dtype=torch.float64), w0.double()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = 0.95 * buf + 0.05 * g.double()  # momentum, then the Nesterov look-ahead
        nesterov = 0.05 * g.double() + 0.95 * buf
        expect = expect - 0.02 * math.sqrt(max(1, rows / cols)) * newton_schulz_f64(nesterov)
    step, ref = (w.detach().double() - w0.double()), expect - w0.double()
    # Newton-Schulz runs in bfloat16 inside torch (as in the reference): ~1% per element
    assert (step - ref).norm() / ref.norm() < 0.02
    s = torch.linalg.svdvals(newton_schulz_f64(grads[0]))
    assert s.min() > 0.5 and s.max() < 1.5  # near-orthogonal: the quintic's band, not exactly 1


def tiny(**kw):
    torch.manual_seed(0)
    return build_model(model_config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=16, **kw))


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny(tie_embeddings=False, value_embeds=1)
    opt = make_optimizer(model, TrainConfig(optim=OptimConfig(optimizer="muon", lr=2e-3, muon_lr=0.05, embed_lr=0.1, head_lr=4e-3)),
                         torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    in_muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    matrices = {id(p) for b in model.blocks for p in b.parameters() if p.dim() == 2}
    assert in_muon == matrices
    in_adamw = [p for g in opt.adamw.param_groups for p in g["params"]]
    assert {id(p) for p in in_adamw} == {id(p) for p in model.parameters()} - matrices
    assert len(in_adamw) == len({id(p) for p in in_adamw})  # each parameter in one group
    set_group_lrs(opt, 1e-3)  # half of --lr: every group at half its own peak
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.blocks[0].attn.qkv.weight)] == pytest.approx(0.025)
    assert lrs[id(model.wte.weight)] == pytest.approx(0.05) == lrs[id(model.value_tables[0].weight)]
    assert lrs[id(model.lm_head.weight)] == pytest.approx(2e-3)
    assert lrs[id(model.blocks[0].norm1.weight)] == pytest.approx(1e-3)


def test_plain_adamw_keeps_its_two_groups():
    model = tiny()
    opt = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    params = list(model.parameters())
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in params if p.dim() >= 2]
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(p) for p in params if p.dim() < 2]
    assert all("lr_scale" not in g for g in opt.param_groups)  # state_dict as before issue 21
    assert opt.defaults["foreach"] and opt.param_groups[1]["weight_decay"] == 0.0


def test_muon_state_refuses_an_adamw_checkpoint():
    opt = make_optimizer(tiny(), TrainConfig(optim=OptimConfig(optimizer="muon")), torch.device("cpu"))
    with pytest.raises(BudgetLMError, match="same one"):
        opt.load_state_dict(make_optimizer(tiny(), TrainConfig(), torch.device("cpu")).state_dict())


def test_muon_is_refused_where_it_cannot_be_exact():
    m = model_config(n_layer=2)
    for bad, flag in ((dict(parallel="fsdp"), "fsdp"), (dict(zero_stage=1), "zero-stage")):
        with pytest.raises(BudgetLMError, match=flag):
            check_switches(m, TrainConfig(**bad, optim=OptimConfig(optimizer="muon")))
    with pytest.raises(BudgetLMError, match="LSTMLM model has no transformer blocks"):
        make_optimizer(build_model(model_config(arch="lstm")), TrainConfig(optim=OptimConfig(optimizer="muon")), torch.device("cpu"))


def cfg(out, **kw):
    base = dict(budget="12-steps", batch_size=4, seq_len=32, lr=3e-3, out_dir=str(out), progress=False,
                log_every=1, final_eval_tokens=2048, seed=7, optimizer="muon", total_batch_tokens=256)
    base.update(kw)
    return TrainConfig(**base)


def test_exact_resume_with_muon(synth_data, tmp_path):
    """As test_train's AdamW test: 12 steps straight == 6, stop, resume, 6 more, bit for bit."""
    model = lambda: model_config(n_layer=2, n_head=2, n_embd=32, tie_embeddings=False)
    straight = train(model(), cfg(tmp_path / "a", head_lr=1e-2), synth_data, **QUIET)
    train(model(), cfg(tmp_path / "b", head_lr=1e-2), synth_data, stop_after_steps=6, **QUIET)
    resumed = train(model(), cfg(tmp_path / "b", head_lr=1e-2), synth_data, resume=str(tmp_path / "b"), **QUIET)
    assert resumed.steps == straight.steps == 12
    assert resumed.extra["losses"] == straight.extra["losses"]
    assert resumed.val_loss == straight.val_loss
    wa, wb = ckpt_mod.load_checkpoint(tmp_path / "a")[2], ckpt_mod.load_checkpoint(tmp_path / "b")[2]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert straight.extra["losses"][-1] < straight.extra["losses"][0]


@pytest.mark.slow  # ~12 s: two spawned ranks
def test_ddp_two_ranks_with_muon_match_one_process(synth_data, tmp_path):
    """DDP averages the gradients before Muon sees them, so 2 ranks = 1 process with the whole batch,
    to within Muon's own sensitivity: torch's Newton-Schulz runs in bfloat16 and amplifies small
    singular directions (slope ~3.4 per iteration), so ~1e-7 gradient differences grow. Measured on
    one process alone, only reordering the same sums (batch 2b x 2 micro-steps vs b x 4): losses
    2.6e-5 and block matrices 2.0e-3 apart after 6 steps with Muon (AdamW: 5e-7, 8e-7). DDP shows
    the same; hence 1e-4 / 5e-3 here, and 1e-4 for the AdamW-updated parameters."""
    from test_distributed import B, MODEL, cfg as dist_cfg, run_ranks, weights
    ref = train(model_config(**MODEL), TrainConfig(**dist_cfg(tmp_path / "single", batch_size=2 * B, optimizer="muon")),
                synth_data, **QUIET)
    [dist] = run_ranks(tmp_path, [{"cfg": dist_cfg(tmp_path / "ddp", optimizer="muon"), "data": str(synth_data)}])
    assert dist["steps"] == ref.steps == 6
    assert np.allclose(dist["losses"], ref.extra["losses"], rtol=0, atol=1e-4), (dist["losses"], ref.extra["losses"])
    wa, wb = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=5e-3 if k.startswith("blocks.") and wa[k].dim() == 2 else 1e-4), k
