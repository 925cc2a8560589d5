"""Issue 21's model switches: off = the model as it was (bit for bit), each on = a different model
that still trains; the sliding window, value embeddings and KV cache agree; recipes apply."""

import dataclasses

import pytest
import torch

from budgetlm.config import EvalConfig, FastConfig, OptimConfig, ScheduleConfig, TrainConfig, model_config
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.train.optim import make_optimizer
from budgetlm.train.recipe import apply_recipe, check_switches

# Produced by the code before issue 21 (commit b20ee58): torch.manual_seed(0), build the model,
# trainer.make_optimizer(TrainConfig(lr=3e-3)), 4 steps on the batches drawn below; CPU fp32, one thread
# (the thread count changes the summation order), torch 2.13.
SHAPES = {"gpt2": dict(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=16),
          "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, vocab_size=97, block_size=16, mlp="swiglu",
                        norm="rmsnorm", pos="rope", bias=False, tie_embeddings=False)}
OLD_RUNS = {"gpt2": ([4.566714763641357, 4.602287769317627, 4.592325210571289, 4.55131196975708], 29088, 29),
            "llama": ([4.574124813079834, 4.551795482635498, 4.587647438049316, 4.589602947235107], 37088, 15)}
SWITCHES = {"qk_norm": dict(qk_norm=True), "relu2": dict(mlp="relu2"), "zero_init_proj": dict(zero_init_proj=True),
            "logit_softcap": dict(logit_softcap=3.0), "value_embeds": dict(value_embeds=1),
            "embed_skip": dict(embed_skip=True), "window": dict(window=3), "untied": dict(tie_embeddings=False)}


def run_steps(shape: dict, steps: int = 4, lr: float = 3e-3, same_batch: bool = False, **train):
    torch.manual_seed(0)
    model = build_model(model_config(**shape))
    opt = make_optimizer(model, TrainConfig(**train, optim=OptimConfig(lr=lr)), torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        if not losses or not same_batch:
            x, y = torch.randint(0, 97, (2, 16), generator=gen), torch.randint(0, 97, (2, 16), generator=gen)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("name", SHAPES)
def test_switches_off_train_exactly_like_the_old_model(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, losses = run_steps(SHAPES[name])
    finally:
        torch.set_num_threads(threads)
    old_losses, old_params, old_keys = OLD_RUNS[name]
    assert losses == old_losses  # bit for bit
    assert model.num_params() == old_params and len(model.state_dict()) == old_keys


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_the_model_and_trains(switch):
    shape = dict(SHAPES["gpt2"], n_layer=2, **SWITCHES[switch])
    plain = run_steps(SHAPES["gpt2"], steps=3)[1]
    model, losses = run_steps(shape, steps=25, lr=1e-2, same_batch=True)
    changed = run_steps(shape, steps=3)[1]
    assert changed != plain
    assert losses[-1] < losses[0] - 0.5, losses  # memorizes one batch


def test_zero_init_zeroes_the_output_projections():
    model = build_model(model_config(**SHAPES["gpt2"], zero_init_proj=True))
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.mlp.down.weight.any()
        assert block.attn.qkv.weight.any()


def test_softcap_bounds_logits_and_bypasses_the_chunked_head():
    torch.manual_seed(0)
    model = build_model(model_config(**SHAPES["gpt2"], logit_softcap=0.5))
    x = torch.randint(0, 97, (2, 16))
    logits, loss = model(x, x)
    assert logits.abs().max() <= 0.5 and logits.size(-1) == 97
    model.fused_loss = True  # the chunked head knows no cap: the model keeps the plain one
    assert model(x, x)[1] == loss
    with pytest.raises(BudgetLMError, match="--fused-loss on"):
        check_switches(model.cfg, TrainConfig(fast=FastConfig(fused_loss="on")))


def test_window_limits_what_each_position_sees():
    torch.manual_seed(0)
    full = build_model(model_config(**dict(SHAPES["gpt2"], n_layer=1)))
    wide = build_model(model_config(**dict(SHAPES["gpt2"], n_layer=1, window=16)))
    narrow = build_model(model_config(**dict(SHAPES["gpt2"], n_layer=1, window=3)))
    wide.load_state_dict(full.state_dict())
    narrow.load_state_dict(full.state_dict())
    x = torch.randint(0, 97, (1, 16))
    x2 = x.clone()
    x2[0, 0] = (x[0, 0] + 1) % 97
    assert torch.allclose(wide(x)[0], full(x)[0], atol=1e-6)  # a window as long as the block = causal
    changed = lambda m: (m(x)[0] - m(x2)[0]).abs().amax(-1)[0]  # per position
    assert changed(full)[3:].min() > 0  # full attention: every position sees token 0
    assert changed(narrow)[3:].max() == 0 and changed(narrow)[:3].min() > 0  # window 3: positions 0-2 only


def test_kv_cache_decoding_matches_the_full_forward_with_every_switch():
    torch.manual_seed(0)
    shape = dict(SHAPES["gpt2"], n_layer=2, pos="rope", qk_norm=True, mlp="relu2", logit_softcap=5.0,
                 value_embeds=1, embed_skip=True, window=4)
    model = build_model(model_config(**shape)).eval()
    for block in model.blocks:  # make the skip gains matter
        torch.nn.init.constant_(block.skip_gain, 0.3)
    x = torch.randint(0, 97, (1, 12))
    full = model(x)[0]
    cache = model.new_cache(1)
    steps = [model(x[:, :5], cache=cache)[0]] + [model(x[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_whole_block_recompute_gives_the_same_gradients_with_switches():
    shape = dict(SHAPES["gpt2"], value_embeds=1, embed_skip=True, qk_norm=True)
    torch.manual_seed(0)
    a = build_model(model_config(**shape))
    b = build_model(model_config(**shape))
    b.load_state_dict(a.state_dict())
    b.set_recompute(2)
    x = torch.randint(0, 97, (2, 16))
    a(x, x)[1].backward()
    b(x, x)[1].backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name


def test_bad_switch_values_are_refused():
    with pytest.raises(BudgetLMError, match="value_embeds"):
        model_config(n_layer=2, value_embeds=2)
    with pytest.raises(BudgetLMError, match="gpt transformer only"):
        model_config(arch="lstm", qk_norm=True)
    with pytest.raises(BudgetLMError, match="mlp must be one of"):
        model_config(mlp="relu3")


def test_plain_recipe_changes_nothing_and_modern_respects_explicit_flags():
    m, t = model_config(**SHAPES["gpt2"]), TrainConfig(recipe="plain")
    assert apply_recipe(m, t) == (m, t)
    m2, t2 = apply_recipe(m, TrainConfig(recipe="modern", optim=OptimConfig(lr=1e-3)), explicit={"lr", "qk_norm", "qk_norm"})
    assert t2.optim.optimizer == "muon" and t2.schedule.schedule == "wsd" and t2.optim.lr == 1e-3
    assert m2.mlp == "relu2" and m2.pos == "rope" and not m2.tie_embeddings and m2.value_embeds == 1
    assert not m2.qk_norm  # named explicitly: the user's value (the default, here) stays
    m3, t3 = apply_recipe(m, TrainConfig(recipe="modern", schedule=ScheduleConfig(schedule="cosine")), explicit={"schedule", "window"})
    assert t3.schedule.schedule == "cosine" and m3.window == 0
    with pytest.raises(BudgetLMError, match="--recipe modern"):
        apply_recipe(model_config(arch="lstm"), TrainConfig(recipe="modern"))


def test_auto_recipe_is_modern_for_gpt_and_plain_elsewhere():
    m, t = apply_recipe(model_config(**SHAPES["gpt2"]), TrainConfig())
    assert TrainConfig().recipe == "auto" and t.recipe == "modern" and t.optim.optimizer == "muon" and m.qk_norm
    assert (m, t) == apply_recipe(model_config(**SHAPES["gpt2"]), TrainConfig(recipe="modern"))
    lstm, t = apply_recipe(model_config(arch="lstm"), TrainConfig())
    assert t.recipe == "plain" and t.optim.optimizer == "adamw" and lstm == model_config(arch="lstm")
    # the CPU speedrun's sized shape (learned positions, LayerNorm, SwiGLU) is what modern was measured on
    m, t = apply_recipe(model_config(n_layer=3, n_head=3, n_embd=96, mlp="swiglu"), TrainConfig())
    assert t.recipe == "modern" and m.mlp == "relu2"
    llama, t = apply_recipe(model_config("tinyllama-1.1b"), TrainConfig())  # a shape the user chose stays
    assert t.recipe == "plain" and llama == model_config("tinyllama-1.1b")


def test_auto_leaves_out_what_other_settings_exclude_where_modern_refuses():
    gpt2 = model_config(**SHAPES["gpt2"])
    m, t = apply_recipe(gpt2, TrainConfig(zero_stage=1))
    assert t.recipe == "modern" and t.optim.optimizer == "adamw" and m.qk_norm  # ZeRO-1 shards AdamW only
    m, t = apply_recipe(gpt2, TrainConfig(ce_kernel="on"))
    assert t.recipe == "modern" and m.logit_softcap == 0 and t.optim.optimizer == "muon"
    for bad in (dict(zero_stage=1), dict(ce_kernel="on")):
        with pytest.raises(BudgetLMError):
            apply_recipe(gpt2, TrainConfig(recipe="modern", **bad))


def test_export_hint_flags_leave_a_llama_that_exports():
    """The flags export's refusal names turn modern into a model HF's Llama class computes."""
    from budgetlm.export import hf_family
    from budgetlm.cli import build_parser
    from budgetlm.cli.train import MODEL_FLAGS, RECIPE_MODEL_FLAGS, RECIPE_TRAIN_FLAGS, TRAIN_FLAGS
    from budgetlm.cli.flags import picked
    with pytest.raises(BudgetLMError, match="--no-qk-norm") as refusal:
        hf_family(apply_recipe(model_config(**SHAPES["gpt2"]), TrainConfig())[0])
    hint = str(refusal.value).split("or with ")[1].split(" (a Llama")[0].split()
    args = build_parser().parse_args(["train", "--data", "d", *hint])
    m, t = picked(args, MODEL_FLAGS + RECIPE_MODEL_FLAGS), picked(args, TRAIN_FLAGS + RECIPE_TRAIN_FLAGS)
    mc, tc = apply_recipe(model_config(**SHAPES["gpt2"], **m), TrainConfig(**t), explicit=set(m) | set(t))
    assert hf_family(mc) == "LlamaForCausalLM" and tc.optim.optimizer == "muon" and not mc.tie_embeddings


def test_modern_recipe_trains_end_to_end(synth_data, tmp_path):
    from budgetlm.train.trainer import train
    m, t = apply_recipe(model_config(n_layer=2, n_head=2, n_embd=32),
                        TrainConfig(recipe="modern", budget="30-steps", batch_size=4, seq_len=32, out_dir=str(tmp_path),
                                    progress=False, log_every=1, seed=7, optim=OptimConfig(lr=3e-3),
                                    eval=EvalConfig(final_eval_tokens=2048), schedule=ScheduleConfig(warmup_frac=0.1)))
    info = train(m, t, synth_data, log=lambda *_: None)
    losses = info.extra["losses"]
    assert info.steps == 30 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert dataclasses.asdict(m)["value_embeds"] == 1


def test_recipe_flags_parse_and_explicit_ones_win():
    from budgetlm.cli import build_parser
    from budgetlm.cli.flags import picked as _picked
    from budgetlm.cli.speedrun import TRAIN_FLAGS as SPEEDRUN_ONLY
    from budgetlm.cli.train import MODEL_FLAGS, RECIPE_MODEL_FLAGS, RECIPE_TRAIN_FLAGS, TRAIN_FLAGS
    MODEL_FLAGS, TRAIN_FLAGS = MODEL_FLAGS + RECIPE_MODEL_FLAGS, TRAIN_FLAGS + RECIPE_TRAIN_FLAGS
    SPEEDRUN_TRAIN_FLAGS = SPEEDRUN_ONLY + RECIPE_TRAIN_FLAGS
    args = build_parser().parse_args(["train", "--data", "d", "--recipe", "modern", "--no-qk-norm", "--window", "64",
                                      "--muon-lr", "0.05", "--head-lr", "0.004", "--decay-frac", "0.5"])
    m, t = _picked(args, MODEL_FLAGS), _picked(args, TRAIN_FLAGS)
    assert m == {"qk_norm": False, "window": 64}  # bools left unset stay out: not explicit
    assert t == {"recipe": "modern", "muon_lr": 0.05, "head_lr": 0.004, "decay_frac": 0.5}
    mc, tc = apply_recipe(model_config(**m), TrainConfig(**t), explicit=set(m) | set(t))
    assert not mc.qk_norm and mc.window == 64 and mc.mlp == "relu2"
    assert tc.optim.optimizer == "muon" and tc.optim.muon_lr == 0.05 and tc.schedule.decay_frac == 0.5
    assert "recipe" in SPEEDRUN_TRAIN_FLAGS
    sp = build_parser().parse_args(["speedrun", "--recipe", "modern", "--qk-norm"])
    assert sp.recipe == "modern" and sp.qk_norm is True


def test_wsd_decay_frac_reaches_the_trainer(synth_data, tmp_path):
    import json
    from budgetlm.train.budget import lr_at
    from budgetlm.train.trainer import train
    t = TrainConfig(budget="8-steps", batch_size=4, seq_len=32, out_dir=str(tmp_path), progress=False, log_every=1,
                    seed=7, optim=OptimConfig(lr=1e-3), eval=EvalConfig(final_eval_tokens=1024),
                    schedule=ScheduleConfig(schedule="wsd", decay_frac=0.5, warmup_frac=0.0))
    train(model_config(n_layer=1, n_head=2, n_embd=16), t, synth_data, log=lambda *_: None)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "loss" in r]
    assert lrs[:5] == [1e-3] * 5 and lrs[5] < 1e-3  # frac 5/8 = 0.625: inside the last half, decaying
    assert lrs == [lr_at(s / 8, 1e-3, "wsd", 0.0, 0.1, 0.5) for s in range(8)]


def test_hf_export_refuses_what_no_hf_class_computes():
    from budgetlm.export import hf_family
    assert hf_family(model_config(zero_init_proj=True)) == "GPT2LMHeadModel"  # init only: exports as is
    for switch in ("qk_norm", "logit_softcap", "value_embeds", "embed_skip", "window"):
        with pytest.raises(BudgetLMError, match=f"cannot express {switch}="):
            hf_family(model_config(**{k: v for k, v in SWITCHES[switch].items()}))


def test_attention_inputs_share_a_dtype_under_autocast(monkeypatch):
    """GPU SDPA kernels refuse mixed q/k/v dtypes: the value-embedding mix and QK-norm keep the stream's."""
    import torch.nn.functional as F
    seen, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: seen.append((q.dtype, k.dtype, v.dtype)) or sdpa(q, k, v, **kw))
    torch.manual_seed(0)
    model = build_model(model_config(**dict(SHAPES["gpt2"], qk_norm=True, value_embeds=1, embed_skip=True, window=4)))
    x = torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", torch.bfloat16):
        model(x, x)[1].backward()
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen), seen


def test_value_tables_count_as_lookups_not_matmuls():
    plain, ve = build_model(model_config(**SHAPES["gpt2"])), build_model(model_config(**SHAPES["gpt2"], value_embeds=1))
    assert ve.num_params() - plain.num_params() == 97 * 32 + 2 * 2  # one table, two mixing weights per layer
    assert ve.flops_per_token(16) - plain.flops_per_token(16) == 6 * 2 * 2
