"""Hugging Face export: transformers must compute what budgetlm computes, token for token."""

import argparse
import importlib.util
import json

import pytest
import torch

from budgetlm.config import ModelConfig
from budgetlm.data.tokenizers import build_tokenizer
from budgetlm.errors import BudgetLMError
from budgetlm.cli.export import register
from budgetlm.export import export_hf
from budgetlm.sample.generate import generate_ids
from budgetlm.models.transformer import GPT
from budgetlm.train.checkpoint import save_checkpoint

needs_hf = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                              reason="transformers not installed (pip install 'budgetlm[test]')")

TEXTS = ["Once upon a time, there was a little girl named Lily. She liked to play in the park.",
         "One day, Tom found a big red ball. \"Look!\" he said. They were happy and played all day."] * 40
SENTENCE = "Once upon a time, Lily found a big red ball in the park. \"Hi!\" she said.\nThe end."
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
CASES = {
    "gpt2": dict(),
    # Lossless rewrites into GPT-2's fixed shape: zero biases, duplicated kv heads, separate head.
    "gpt2_nobias_gqa_untied": dict(bias=False, n_kv_head=2, tie_embeddings=False),
    "llama_gqa_untied": dict(LLAMA, n_kv_head=2),
    "llama_tied": dict(LLAMA, tie_embeddings=True, rope_theta=500.0),
    "llama_bias": dict(LLAMA, bias=True, n_kv_head=1),
}


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("bpe:300", iter(TEXTS))


def make_checkpoint(root, tok, **overrides):
    """A tiny model whose every weight is random (norm gains and biases too, so a swapped or
    dropped tensor shows up in the logits), saved as a budgetlm checkpoint."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=tok.vocab_size + 4, block_size=64, **overrides)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    ckpt = save_checkpoint(root / "ckpt", 1, model, cfg, tok, state={})
    return model.eval(), ckpt


def load_hf(out):
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # nothing left at random init
    return model.eval()


@needs_hf
@pytest.mark.parametrize("name", CASES)
def test_logits_and_greedy_generation_match(tmp_path, bpe, name):
    model, ckpt = make_checkpoint(tmp_path, bpe, **CASES[name])
    out = export_hf(ckpt, tmp_path / "hf")
    hf = load_hf(out)
    expected = "LlamaForCausalLM" if name.startswith("llama") else "GPT2LMHeadModel"
    assert type(hf).__name__ == expected
    # transformers 5 quietly unties a wrongly-flagged pair it finds in the file; 4.x would not.
    assert hf.config.tie_word_embeddings == model.cfg.tie_embeddings
    shared = hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    assert shared == model.cfg.tie_embeddings

    ids = torch.randint(0, model.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours.std().item() > 0.5  # the comparison is not between two near-constant outputs

    prompt = bpe.encode("Once upon a time, there was")
    ours_gen = generate_ids(model, prompt, 20, temperature=None)
    # eos_token_id=None: keep going past end-of-text, as generate_ids does without stop_id.
    with torch.no_grad():
        theirs_gen = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                                 eos_token_id=None, pad_token_id=bpe.eot_id)[0, len(prompt):].tolist()
    assert len(ours_gen) == 20 and theirs_gen == ours_gen
    assert len(set(ours_gen)) > 1  # greedy decoding did not collapse to a single token


@needs_hf
def test_tokenizer_round_trip(tmp_path, bpe):
    from transformers import AutoTokenizer
    _, ckpt = make_checkpoint(tmp_path, bpe)
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(out)
    ids = bpe.encode(SENTENCE)
    assert hf_tok(SENTENCE)["input_ids"] == ids  # no BOS/EOS added
    assert hf_tok.decode(ids) == SENTENCE == bpe.decode(ids)
    assert hf_tok.eos_token_id == hf_tok.bos_token_id == bpe.eot_id
    assert hf_tok.model_max_length == 64
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == bpe.eot_id
    card = (out / "README.md").read_text()
    assert "GPT2LMHeadModel" in card and "from_pretrained" in card


@needs_hf
def test_char_tokenizer_exports_equivalent_tokenizer(tmp_path):
    from transformers import AutoTokenizer
    tok = build_tokenizer("char", iter(TEXTS + ["\t"]))  # tab sorts first: the fallback must be space
    _, ckpt = make_checkpoint(tmp_path, tok)
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = SENTENCE + " Zebra \u00e9t\u00e9 \U0001F642"  # Z, é and the emoji are unseen: fallback id
    ids = tok.encode(text)
    assert tok.chars[0] == "\t" and ids.count(tok.stoi[" "]) > text.count(" ")
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids + [tok.eot_id]) == tok.decode(ids + [tok.eot_id])
    assert hf_tok.eos_token_id == tok.eot_id


@pytest.mark.parametrize("overrides, switch", [
    (dict(mlp="swiglu"), "mlp=swiglu"),
    (dict(norm="rmsnorm"), "norm=rmsnorm"),
    (dict(LLAMA, norm="layernorm"), "norm=layernorm"),
    (dict(LLAMA, mlp="gelu"), "mlp=gelu"),
])
def test_unsupported_mix_names_the_switch(tmp_path, bpe, overrides, switch):
    _, ckpt = make_checkpoint(tmp_path, bpe, **overrides)
    with pytest.raises(BudgetLMError, match=switch):
        export_hf(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_refuses_to_overwrite_the_checkpoint(tmp_path, bpe):
    _, ckpt = make_checkpoint(tmp_path, bpe)
    before = (ckpt / "config.json").read_text()
    for out in (ckpt, ckpt.parent):  # the checkpoint itself, or the folder of checkpoints
        with pytest.raises(BudgetLMError, match="checkpoint folder"):
            export_hf(ckpt, out)
    assert (ckpt / "config.json").read_text() == before


def test_cli_verb(tmp_path, bpe, capsys):
    _, ckpt = make_checkpoint(tmp_path, bpe)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(["export", str(tmp_path / "ckpt"), "--format", "hf", "--out", str(tmp_path / "hf")])
    args.fn(args)  # a run's checkpoints/ root resolves through the `latest` pointer
    assert json.loads((tmp_path / "hf/config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert str(tmp_path / "hf") in capsys.readouterr().out
    bad = parser.parse_args(["export", str(ckpt), "--format", "gguf", "--out", str(tmp_path / "x")])
    with pytest.raises(BudgetLMError, match="format"):
        bad.fn(bad)
