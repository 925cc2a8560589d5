"""The main job: data -> tokenizer -> budgeted training -> metrics -> sample stories, in one
command whose budget covers all of it (data preparation included).
"""

from __future__ import annotations

import dataclasses
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

# Shapes --auto-size probes: (layers, width, heads), smallest to largest.
AUTO_SHAPES = ((2, 64, 2), (2, 96, 4), (3, 128, 4), (4, 128, 4), (4, 192, 4), (6, 256, 8))

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
        # The 5-minute study (benchmarks/research_study.md): 3x96 was the best size on a 2-core
        # CPU and SwiGLU beat GELU there (3 seeds, p=0.036); checked as a speedrun, 1.137 vs 1.154
        # BPB for the old 4x128 GELU default (benchmarks/RESULTS.md §6).
        mcfg = ModelConfig(n_layer=3, n_head=3, n_embd=96, mlp="swiglu", block_size=seq)
    else:
        mcfg = model_config(preset, block_size=seq)
    tcfg = TrainConfig(budget=budget, batch_size=batch, seq_len=seq, lr=lr, device=device)
    return Setup(mcfg, tcfg, tok, why)


def pick_size(shapes: list[tuple[int, float]], seconds: float, tokens_per_param: float = 20.0) -> int:
    """Index of the shape whose parameter count is nearest (in log space) to the Chinchilla-optimal
    size for the tokens it would see: tokens_seen = its measured tokens/s x seconds, N* = tokens/20.
    shapes: (params, measured tokens/s) per candidate."""
    import math
    best, best_gap = 0, float("inf")
    for i, (params, tok_s) in enumerate(shapes):
        gap = abs(math.log(params / max(tok_s * seconds / tokens_per_param, 1.0)))
        if gap < best_gap:
            best, best_gap = i, gap
    return best


def auto_size(model: ModelConfig, train_cfg: TrainConfig, seconds_left: float, probe_seconds: float,
              log=print) -> ModelConfig:
    """Measure tokens/s of each AUTO_SHAPES size on this device for `probe_seconds` and keep the
    one the budget favours (pick_size). The probes run inside the budget clock."""
    import dataclasses
    from budgetlm.memory import measure_throughput
    dev = pick_device(train_cfg.device)
    rows = []
    for layers, width, heads in AUTO_SHAPES:
        cfg = dataclasses.replace(model, n_layer=layers, n_embd=width, n_head=heads, n_kv_head=None)
        r = measure_throughput(cfg, train_cfg.batch_size, train_cfg.seq_len, seconds=probe_seconds, device=dev)
        rows.append((r["params"], r["tokens_per_s"], cfg))
    train_seconds = max(seconds_left - len(rows) * probe_seconds, 1.0) * 0.9  # ~10% goes to eval and samples
    i = pick_size([(p, t) for p, t, _ in rows], train_seconds)
    for j, (p, t, c) in enumerate(rows):
        log(f"auto-size: {c.n_layer}x{c.n_embd}: {p:,} params, {t:,.0f} tok/s -> {t * train_seconds / 1e6:.1f}M tokens "
            f"(Chinchilla size {t * train_seconds / 20:,.0f}){'  <- chosen' if j == i else ''}")
    return rows[i][2]


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
             sample_tokens: int = 200, overrides: dict | None = None, auto: bool = False,
             probe_seconds: float = 4.0, log=print) -> tuple[RunInfo, list]:
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
    # Rebuilt, so the overrides pass the same checks as any config (e.g. n_embd divisible by n_head).
    setup.model, setup.train = dataclasses.replace(setup.model), dataclasses.replace(setup.train)
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
    if auto:
        if b.kind != "time":
            raise BudgetLMError("--auto-size needs a time budget (it turns measured tokens/s into tokens seen)")
        setup.model.vocab_size = json.loads((ddir / META_FILE).read_text())["vocab_size"]
        setup.model = auto_size(setup.model, setup.train, b.amount - clock.elapsed(), probe_seconds, log)
        log(f"auto-size probes took {clock.elapsed() - prep_seconds:.1f}s of the budget")
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
