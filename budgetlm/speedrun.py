"""The main job: data -> tokenizer -> budgeted training -> metrics -> sample stories, in one
command whose budget covers all of it (data preparation included).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from budgetlm.config import ModelConfig, RunInfo, TrainConfig, model_config
from budgetlm.data.prepare import META_FILE, prepare
from budgetlm.data.sources import hub_reachable
from budgetlm.device import pick_device
from budgetlm.report import finish_run
from budgetlm.errors import BudgetLMError
from budgetlm.train.budget import parse_budget
from budgetlm.train.trainer import Clock, train

PROMPTS = ("Once upon a time", "One day, a little girl named Lily", "Tom and his dog")


@dataclass
class Setup:
    model: ModelConfig
    train: TrainConfig
    tokenizer: str
    why: str


def choose_setup(budget: str, device: str, tokenizer: str | None = None) -> Setup:
    """A model and batch for the budget and device, from the measurements in benchmarks/results.md.

    CPU: a 2-core laptop-class CPU trains ~1M-param models at tens of thousands of tokens/s, so
    5 minutes sees ~10M tokens; Chinchilla (~20 tokens/param) then favours ~0.5-1.5M params.
    """
    b = parse_budget(budget)
    seconds = b.amount if b.kind == "time" else 300.0
    dev = pick_device(device)
    if dev.type == "cuda":
        preset, seq, batch, lr = ("mini", 512, 64, 2e-3) if seconds < 1800 else ("gpt2-124m", 1024, 16, 6e-4)
        tok = tokenizer or ("bpe:8192" if preset == "mini" else "gpt2")
        why = "CUDA: larger model, bf16"
    else:
        # Measured on a 2-core CPU (benchmarks/RESULTS.md): vocab 1024 + seq 64 x 64 trains ~1.8x the
        # tokens/s of the nanoGPT-style 4096/256 setup and reached the lowest 5-minute BPB we saw.
        preset, seq, batch, lr = "speedrun-cpu", 64, 64, 3e-3
        tok = tokenizer or "bpe:1024"
        why = "CPU: small vocab and short sequences keep tokens/s high (measured choices in benchmarks/RESULTS.md)"
    if preset == "speedrun-cpu":
        mcfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=seq)
    else:
        mcfg = model_config(preset, block_size=seq)
    tcfg = TrainConfig(budget=budget, batch_size=batch, seq_len=seq, lr=lr, device=device)
    return Setup(mcfg, tcfg, tok, why)


def _cached_data_dir(root: Path, src: str, tokenizer: str, max_tokens: int | None) -> tuple[Path, bool]:
    """Where prepared shards for (source, tokenizer) live, and whether they hold enough tokens."""
    local = Path(src).exists()
    name = Path(src).stem if local else src.replace(":", "_").replace("/", "_")
    key = hashlib.sha256(f"{Path(src).resolve() if local else src}|{tokenizer}".encode()).hexdigest()[:10]
    d = root / f"{name}-{tokenizer.replace(':', '')}-{key}"
    if not (d / META_FILE).is_file():
        return d, False
    have = json.loads((d / META_FILE).read_text()).get("max_tokens")
    return d, have is None or (max_tokens is not None and have >= max_tokens)


def resolve_source(data: str, log=print) -> str:
    """`tinystories` when the hub (or its cache) can supply it, else the built-in `synth`, said clearly."""
    if data != "tinystories":
        return data
    from huggingface_hub import try_to_load_from_cache
    from budgetlm.data.sources import TINYSTORIES_FILES, TINYSTORIES_REPO
    cached = try_to_load_from_cache(TINYSTORIES_REPO, TINYSTORIES_FILES["val"], repo_type="dataset")
    if isinstance(cached, str) or hub_reachable():
        return data
    log("note: the Hugging Face hub cannot be reached and TinyStories is not cached; "
        "training on the built-in synthetic stories (--data synth) instead")
    return "synth"


def speedrun(budget: str = "5m", data: str = "tinystories", tokenizer: str | None = None, out_dir: str = "runs/speedrun",
             device: str = "auto", cache_root: str = "data_cache", seed: int = 1337, n_samples: int = 3,
             sample_tokens: int = 200, overrides: dict | None = None, log=print) -> tuple[RunInfo, list]:
    """Run the whole path under one budget; returns the run summary and the sample stories."""
    clock = Clock()
    setup = choose_setup(budget, device, tokenizer)
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        target = setup.model if hasattr(setup.model, k) else setup.train if hasattr(setup.train, k) else None
        if target is None:
            raise BudgetLMError(f"speedrun: unknown override {k!r}")
        setattr(target, k, v)
    setup.model.block_size = max(setup.model.block_size, setup.train.seq_len)
    setup.train.out_dir, setup.train.seed = out_dir, seed
    b = parse_budget(budget)
    # Tokenize only what the budget can consume: a generous guess of tokens/s times the budget.
    # (measured: ~40k tok/s on a 2-core CPU for the CPU setup; GPUs ~1M for the small models)
    tok_s_guess = 60_000 if pick_device(device).type == "cpu" else 2_000_000
    max_tokens = int(b.amount * tok_s_guess) if b.kind == "time" else int(b.amount) if b.kind == "tokens" else None
    val_tokens = 1_000_000 if max_tokens is None else min(1_000_000, max(20_000, max_tokens // 100))
    src = resolve_source(data, log)
    ddir, ready = _cached_data_dir(Path(cache_root), src, setup.tokenizer, max_tokens)
    if ready:
        log(f"using prepared data in {ddir}")
    else:
        prepare(src, setup.tokenizer, ddir, max_tokens=max_tokens, val_max_tokens=val_tokens, seed=0, log=log)
    prep_seconds = clock.elapsed()
    log(f"setup: {setup.why}")
    # Sampling happens after training but inside the budget: keep time for it (~5 ms/token, measured).
    reserve = n_samples * sample_tokens * 0.005
    info = train(setup.model, setup.train, ddir, clock=clock, reserve_s=reserve, log=log)
    prompts = PROMPTS[:n_samples]
    if info.extra["data"].get("lowercase"):  # e.g. the lower-cased shared TinyStories copy
        prompts = tuple(p.lower() for p in prompts)
    samples = finish_run(out_dir, info, prompts, sample_tokens, seed, log)
    info.extra["prep_seconds"] = prep_seconds
    info.extra["total_seconds"] = clock.elapsed()
    log(f"speedrun finished in {clock.elapsed():.1f}s of a {budget} budget (data {prep_seconds:.1f}s, "
        f"training+eval+checkpoint {info.extra['elapsed'] - prep_seconds:.1f}s, "
        f"samples {clock.elapsed() - info.extra['elapsed']:.1f}s)")
    return info, samples
