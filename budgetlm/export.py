"""`budgetlm export`: a checkpoint as a Hugging Face folder (`from_pretrained` loads it).

Only files are written (config JSON, safetensors, tokenizer JSON), so exporting needs neither
transformers nor the model class. Two HF classes cover budgetlm's switch combinations exactly:

* GPT2LMHeadModel for learned positions + LayerNorm + GELU. Conv1D stores weights (in, out), the
  transpose of nn.Linear. bias=False becomes zero biases, GQA becomes duplicated k/v heads (both
  compute the same function), an untied head becomes tie_word_embeddings=False.
* LlamaForCausalLM for RoPE + RMSNorm + SwiGLU. Our apply_rope uses the same rotate-half layout
  and inv_freq as HF Llama, so q/k need no permutation; fused qkv and [gate; up] are split.

Any other mix raises BudgetLMError naming the switch. Char tokenizers become an equivalent
merge-free BPE tokenizer.json (one token per character, unseen characters -> the same fallback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from budgetlm.config import ModelConfig
from budgetlm.data.tokenizers import EOT, CharTokenizer, HFTokenizer, Tokenizer
from budgetlm.errors import BudgetLMError
from budgetlm.train.checkpoint import check_finite, load_checkpoint

Weights = dict[str, torch.Tensor]
# What each HF class fixes; a model must match one family on all three switches.
FAMILIES = {"GPT2LMHeadModel": {"pos": "learned", "norm": "layernorm", "mlp": "gelu"},
            "LlamaForCausalLM": {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu"}}


def hf_family(cfg: ModelConfig) -> str:
    """The HF class that computes exactly what this config computes, or an error naming the misfit."""
    if cfg.arch != "gpt":
        raise BudgetLMError(f"export: arch {cfg.arch!r} has no Hugging Face equivalent")
    # Position encoding decides the family: neither class can swap it.
    family = "GPT2LMHeadModel" if cfg.pos == "learned" else "LlamaForCausalLM"
    switches = [f"{k}={getattr(cfg, k)}" for k in ("qk_norm", "logit_softcap", "value_embeds", "embed_skip", "window")
                if getattr(cfg, k)]  # issue 21's switches: no HF class computes them (zero_init_proj is init only)
    if switches:  # the modern recipe's (the default for gpt: --recipe auto); its Llama-shaped part exports
        raise BudgetLMError(f"export: {family} cannot express {', '.join(switches)} (the modern recipe's); to "
                            "export, train with --recipe plain, or with --recipe modern --no-qk-norm --logit-softcap 0 "
                            "--value-embeds 0 --no-embed-skip --mlp swiglu (a Llama: Muon, RoPE, RMSNorm, untied head)")
    bad = [f"{k}={getattr(cfg, k)}" for k, v in FAMILIES[family].items() if getattr(cfg, k) != v]
    if bad:
        need = ", ".join(f"{k}={v}" for k, v in FAMILIES[family].items())
        raise BudgetLMError(f"export: {family} (chosen by pos={cfg.pos}) cannot express {', '.join(bad)}; "
                            f"Hugging Face export needs {need}")
    return family


def _get(w: Weights, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A weight by budgetlm name; a missing bias (bias=False) becomes zeros, which is exact."""
    if name in w:
        return w[name]
    if shape is None:
        raise BudgetLMError(f"export: checkpoint has no weight {name!r}")
    return torch.zeros(shape, dtype=next(iter(w.values())).dtype)


def _split_qkv(cfg: ModelConfig, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows (or entries) of our fused qkv: [q heads; k heads; v heads], each head contiguous."""
    hd = cfg.head_dim
    q, k, v = t.split([cfg.n_head * hd, cfg.kv_heads * hd, cfg.kv_heads * hd], dim=0)
    return q, k, v


def _expand_kv(cfg: ModelConfig, t: torch.Tensor) -> torch.Tensor:
    """GQA as plain multi-head attention: repeat each kv head as our repeat_interleave does."""
    rep = cfg.n_head // cfg.kv_heads
    if rep == 1:
        return t
    heads = t.reshape(cfg.kv_heads, cfg.head_dim, *t.shape[1:])
    return heads.repeat_interleave(rep, dim=0).reshape(cfg.n_embd, *t.shape[1:])


def gpt2_weights(cfg: ModelConfig, w: Weights) -> Weights:
    d, h = cfg.n_embd, cfg.hidden
    out = {"transformer.wte.weight": w["wte.weight"][: cfg.vocab_size], "transformer.wpe.weight": w["wpe.weight"],
           "transformer.ln_f.weight": w["norm_f.weight"], "transformer.ln_f.bias": _get(w, "norm_f.bias", (d,))}
    for i in range(cfg.n_layer):
        a, b = f"blocks.{i}.", f"transformer.h.{i}."
        q, k, v = _split_qkv(cfg, w[a + "attn.qkv.weight"])
        qkv_w = torch.cat([q, _expand_kv(cfg, k), _expand_kv(cfg, v)])
        q, k, v = _split_qkv(cfg, _get(w, a + "attn.qkv.bias", (w[a + "attn.qkv.weight"].shape[0],)))
        qkv_b = torch.cat([q, _expand_kv(cfg, k), _expand_kv(cfg, v)])
        out.update({
            b + "ln_1.weight": w[a + "norm1.weight"], b + "ln_1.bias": _get(w, a + "norm1.bias", (d,)),
            b + "ln_2.weight": w[a + "norm2.weight"], b + "ln_2.bias": _get(w, a + "norm2.bias", (d,)),
            b + "attn.c_attn.weight": qkv_w.t(), b + "attn.c_attn.bias": qkv_b,  # Conv1D: (in, out)
            b + "attn.c_proj.weight": w[a + "attn.proj.weight"].t(),
            b + "attn.c_proj.bias": _get(w, a + "attn.proj.bias", (d,)),
            b + "mlp.c_fc.weight": w[a + "mlp.up.weight"].t(), b + "mlp.c_fc.bias": _get(w, a + "mlp.up.bias", (h,)),
            b + "mlp.c_proj.weight": w[a + "mlp.down.weight"].t(),
            b + "mlp.c_proj.bias": _get(w, a + "mlp.down.bias", (d,)),
        })
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = w["lm_head.weight"][: cfg.vocab_size]
    return out


def llama_weights(cfg: ModelConfig, w: Weights) -> Weights:
    out = {"model.embed_tokens.weight": w["wte.weight"][: cfg.vocab_size], "model.norm.weight": w["norm_f.weight"]}
    for i in range(cfg.n_layer):
        a, b = f"blocks.{i}.", f"model.layers.{i}."
        out[b + "input_layernorm.weight"] = w[a + "norm1.weight"]
        out[b + "post_attention_layernorm.weight"] = w[a + "norm2.weight"]
        for suffix in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = _split_qkv(cfg, w[f"{a}attn.qkv.{suffix}"])
            gate, up = w[f"{a}mlp.up.{suffix}"].chunk(2, dim=0)  # our MLP: gate, up = h.chunk(2)
            out.update({f"{b}self_attn.q_proj.{suffix}": q, f"{b}self_attn.k_proj.{suffix}": k,
                        f"{b}self_attn.v_proj.{suffix}": v,
                        f"{b}self_attn.o_proj.{suffix}": w[f"{a}attn.proj.{suffix}"],
                        f"{b}mlp.gate_proj.{suffix}": gate, f"{b}mlp.up_proj.{suffix}": up,
                        f"{b}mlp.down_proj.{suffix}": w[f"{a}mlp.down.{suffix}"]})
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = w["lm_head.weight"][: cfg.vocab_size]
    return out


def hf_config(cfg: ModelConfig, family: str, eot: int, dtype: torch.dtype) -> dict[str, Any]:
    common = {"architectures": [family], "vocab_size": cfg.vocab_size, "bos_token_id": eot, "eos_token_id": eot,
              "tie_word_embeddings": cfg.tie_embeddings, "dtype": str(dtype).removeprefix("torch."),
              "use_cache": True}
    common["torch_dtype"] = common["dtype"]  # transformers 4.x reads this name
    if family == "GPT2LMHeadModel":
        # HF's dropout defaults are 0.1; ours may be 0, and train() mode must behave the same.
        return {**common, "model_type": "gpt2", "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                "n_embd": cfg.n_embd, "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_inner": cfg.hidden,
                "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    # rope_parameters is the transformers 5 key, rope_theta the 4.x one; both load in 5.x.
    return {**common, "model_type": "llama", "hidden_size": cfg.n_embd, "intermediate_size": cfg.hidden,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
            "pretraining_tp": 1, "initializer_range": 0.02}


def char_tokenizer_json(tok: CharTokenizer) -> dict[str, Any]:
    """A merge-free BPE with no pre-tokenizer: every character is looked up on its own, unseen ones
    fall back to the same character CharTokenizer uses (space, else the first), Fuse decodes."""
    if not tok.chars:
        raise BudgetLMError("export: char tokenizer has no characters")
    vocab = {c: i for i, c in enumerate(tok.chars)} | {EOT: tok.eot_id}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": tok.eot_id, "content": EOT, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}],
            "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {"type": "BPE", "dropout": None, "unk_token": tok.chars[tok.unk],
                      "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": []}}


def write_tokenizer(tok: Tokenizer, out: Path, max_len: int) -> None:
    if isinstance(tok, HFTokenizer):
        inner = json.loads(tok.tok.to_str())
    elif isinstance(tok, CharTokenizer):
        inner = char_tokenizer_json(tok)
    else:
        raise BudgetLMError(f"export: tokenizer {tok.spec!r} cannot be written for Hugging Face")
    (out / "tokenizer.json").write_text(json.dumps(inner, ensure_ascii=False))
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    # No BOS/EOS is added on encode: budgetlm trains on raw ids with EOT only between documents.
    config = {**special, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def model_card(cfg: ModelConfig, family: str, params: int, tok: Tokenizer, ckpt: Path) -> str:
    switches = ", ".join(f"{k}={getattr(cfg, k)}" for k in ("pos", "norm", "mlp", "bias", "tie_embeddings"))
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [budgetlm]
---
# budgetlm model ({family})

Exported by `budgetlm export` from `{ckpt.name}`.

| | |
|---|---|
| architecture | {family} ({switches}) |
| parameters | {params:,} |
| layers / heads / kv heads / width | {cfg.n_layer} / {cfg.n_head} / {cfg.kv_heads} / {cfg.n_embd} |
| MLP hidden | {cfg.hidden} |
| context | {cfg.block_size} tokens |
| tokenizer | {tok.spec}, {tok.vocab_size} tokens, end-of-text id {tok.eot_id} |

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
ids = tok("Once upon a time", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=100, do_sample=True, top_p=0.95)[0]))
```

Encoding adds no BOS token, as in training; `<|endoftext|>` separates documents. Contexts longer
than {cfg.block_size} tokens were never trained on.
"""


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` so AutoModelForCausalLM / AutoTokenizer.from_pretrained load the checkpoint."""
    ckpt, cfg, weights, tok, _ = load_checkpoint(checkpoint, with_state=False)
    check_finite(weights, f"export: {ckpt}")  # a diverged run's NaN weights are no model to ship
    family = hf_family(cfg)
    out = Path(out_dir)
    # HF's file names (config.json, tokenizer.json, model.safetensors) would clobber budgetlm's own.
    ours = ("state.json", "state.pt", "checkpoints", "latest")
    if out.resolve() == ckpt.resolve() or any((out / n).exists() for n in ours):
        raise BudgetLMError(f"export: --out {out} is a budgetlm run or checkpoint folder; choose another")
    if tok.vocab_size > cfg.vocab_size:
        raise BudgetLMError(f"export: tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}")
    hf = (gpt2_weights if family == "GPT2LMHeadModel" else llama_weights)(cfg, weights)
    # Splits and transposes are views into shared storage, which safetensors refuses.
    hf = {k: v.clone(memory_format=torch.contiguous_format) for k, v in hf.items()}
    dtype = weights["wte.weight"].dtype
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, family, tok.eot_id, dtype), indent=2) + "\n")
    gen = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    write_tokenizer(tok, out, cfg.block_size)
    params = sum(t.numel() for t in weights.values())  # as budgetlm counts: tied head once
    (out / "README.md").write_text(model_card(cfg, family, params, tok, ckpt))
    return out
