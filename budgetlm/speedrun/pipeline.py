"""The main job: data -> tokenizer -> budgeted training -> metrics -> sample stories, in one
command whose budget covers all of it (data preparation included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from budgetlm.config import ModelConfig, OptimConfig, RunInfo, TrainConfig, model_config
from budgetlm.data.prepare import META_FILE, prepare
from budgetlm.data.sources import hub_reachable
from budgetlm.device import pick_device
from budgetlm.report.summary import finish_run
from budgetlm.speedrun.sizing import (Calibration, apply_sizing, calibrate, calibration_pays, calibration_seconds,
                                      estimate_unique_tokens, size_model, smallest_without_calibration)
from budgetlm.errors import BudgetLMError
from budgetlm.train.budget import Budget, as_budget, parse_budget
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
    sizing: dict | None = None  # what speedrun_size chose and why (summary.json "sizing"); None = static


def choose_setup(budget: str | Budget, device: str, tokenizer: str | None = None, calibration: Calibration | None = None,
                 unique_tokens: float | None = None, seconds_left: float | None = None,
                 log=print) -> Setup:
    """A model and batch for the budget and device.

    With a `calibration` (speedrun_size.calibrate) and a time budget, the size, batch, seq len, lr and
    tokenizer come from the device's measured speed and the data's unique tokens (speedrun_size.size_model);
    on a CPU its 5-minute answer is the static default below, the measured best. Without one: the static
    defaults, from the measurements in benchmarks/RESULTS.md. CPU: a 2-core laptop-class CPU trains ~1M-param
    models at tens of thousands of tokens/s, so 5 minutes sees ~10M tokens; Chinchilla (~20 tokens/param)
    then favours ~0.5-1.5M params.
    """
    b = as_budget(budget)
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
        # BPB for the old 4x128 GELU default (benchmarks/HISTORY.md §6).
        mcfg = ModelConfig(n_layer=3, n_head=3, n_embd=96, mlp="swiglu", block_size=seq)
    else:
        mcfg = model_config(preset, block_size=seq)
    tcfg = TrainConfig(budget=b.text or str(b), batch_size=batch, seq_len=seq, device=device, optim=OptimConfig(lr=lr))
    setup = Setup(mcfg, tcfg, tok, why)
    if calibration is not None and b.kind == "time":
        sized = size_model(seconds if seconds_left is None else seconds_left, calibration, unique_tokens, tokenizer)
        apply_sizing(sized, setup.model, setup.train, log)
        setup.tokenizer, setup.sizing = sized.tokenizer, sized.facts
        setup.why = f"sized from the measured speed: {sized.choice.name}, {sized.choice.params:,} params"
    return setup


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
    one the budget favours (pick_size). The probes run inside the budget clock.

    Opt-in (`--auto-size`), beside the default sizing (speedrun_size), which predicts every size from
    one ~1% calibration: these probes cost 6 x probe_seconds (24 s of a 5-minute budget by default)
    and on CUDA each one would compile; they remain as a measured check of the prediction."""
    import dataclasses
    from budgetlm.plan.memory import measure_throughput
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


def _sized_setup(budget: str | Budget, device: str, tokenizer: str | None, sizing: str, src: str,
                 unique_tokens: float | None, clock: Clock, log) -> Setup:
    """choose_setup after a calibration of this device (sizing="measured", time budgets), else the static one."""
    if sizing not in ("measured", "static"):
        raise BudgetLMError(f"--sizing must be measured or static, got {sizing!r}")
    b = as_budget(budget)
    if sizing == "static" or b.kind != "time":
        return choose_setup(b, device, tokenizer)
    dev = pick_device(device)
    unique = unique_tokens if unique_tokens is not None else estimate_unique_tokens(src)
    if dev.type == "cpu" and not calibration_pays(b.amount, unique, tokenizer):
        setup = choose_setup(b, device, tokenizer)  # the static CPU default is the ladder's first shape
        setup.sizing, line = smallest_without_calibration(b.amount, tokenizer)
        log(line)
        return setup
    cal = calibrate(dev, calibration_seconds(b.amount))
    if dev.type == "cuda":
        import torch
        torch.cuda.empty_cache()  # the probe's model is gone; give its memory back to the trainer
    setup = choose_setup(b, device, tokenizer, cal, unique, b.amount - clock.elapsed(), log)
    if setup.sizing is not None:
        setup.sizing["unique_tokens_source"] = "given" if unique_tokens is not None else \
            ("estimate: file bytes / 4 per token" if unique else "not limited (generated or hub data)")
    return setup


def _apply_overrides(setup: Setup, overrides: dict) -> None:
    """Explicit flags win over the sizing; a changed batch or seq len drops the sized accumulation."""
    given = {k: v for k, v in overrides.items() if v is not None}
    from budgetlm.config import TrainConfig, leaf_paths, set_value
    for k, v in given.items():
        if hasattr(setup.model, k):
            setattr(setup.model, k, v)
        elif k in leaf_paths(TrainConfig):
            set_value(setup.train, k, v)
        else:
            raise BudgetLMError(f"speedrun: unknown override {k!r}")
    # Rebuilt, so the overrides pass the same checks as any config (e.g. n_embd divisible by n_head).
    setup.model, setup.train = dataclasses.replace(setup.model), dataclasses.replace(setup.train)
    from budgetlm.train.recipe import apply_recipe  # issue 21: --recipe's bundle; explicit flags win
    setup.model, setup.train = apply_recipe(setup.model, setup.train, explicit=given)
    if {"batch_size", "seq_len"} & set(given):
        setup.train.total_batch_tokens = None
    setup.model.block_size = max(setup.model.block_size, setup.train.seq_len)
    sized_fields = sorted(set(given) & {"n_layer", "n_head", "n_embd", "mlp", "norm", "pos", "seq_len", "batch_size", "lr"})
    if setup.sizing is not None and sized_fields:
        setup.sizing["overridden_by_flags"] = {k: given[k] for k in sized_fields}


def _add_to_summary(out_dir: str, key: str, value) -> None:
    """Add one entry to the run's summary.json (the trainer wrote it before the speedrun knew the rest)."""
    path = Path(out_dir) / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        summary[key] = value
        path.write_text(json.dumps(summary, indent=2, default=str) + "\n")


def speedrun(budget: str = "5m", data: str = "tinystories", tokenizer: str | None = None, out_dir: str = "runs/speedrun",
             device: str = "auto", cache_root: str = "data_cache", seed: int = 1337, n_samples: int = 3,
             sample_tokens: int = 200, overrides: dict | None = None, auto: bool = False,
             probe_seconds: float = 4.0, sizing: str = "measured", unique_tokens: float | None = None,
             log=print) -> tuple[RunInfo, list]:
    """Run the whole path under one budget; returns the run summary and the sample stories.

    sizing: "measured" (default) sizes model, batch and tokenizer from a short calibration of this device
    (speedrun_size); "static" keeps the fixed per-device defaults. unique_tokens: what the data source
    holds (default: estimated from its file sizes); explicit overrides win over both."""
    clock = Clock()
    b = parse_budget(budget)
    src = resolve_source(data, log)
    # --auto-size times each of its shapes itself, so it starts from the static setup, as it always did.
    setup = _sized_setup(b, device, tokenizer, "static" if auto else sizing, src, unique_tokens, clock, log)
    _apply_overrides(setup, overrides or {})
    setup.train.out_dir, setup.train.seed = out_dir, seed
    # Training starts on the first shard; train() stops the producer when it ends or fails.
    expected = ((setup.sizing or {}).get("choice") or {}).get("predicted_tokens_per_s", 0.0)
    ddir = start_data(src, setup.tokenizer, b, pick_device(device).type, Path(cache_root), log, expected_rate=expected)
    prep_seconds = clock.elapsed()
    log(f"setup: {setup.why}")
    if auto:
        if b.kind != "time":
            raise BudgetLMError("--auto-size needs a time budget (it turns measured tokens/s into tokens seen)")
        setup.model.vocab_size = json.loads((ddir / META_FILE).read_text())["vocab_size"]
        from budgetlm.data.stream import paused
        with paused(ddir):  # the probes measure the model alone, not the model beside the tokenizer
            setup.model = auto_size(setup.model, setup.train, b.amount - clock.elapsed(), probe_seconds, log)
        log(f"auto-size probes took {clock.elapsed() - prep_seconds:.1f}s of the budget")
    # Sampling happens after training but inside the budget: keep time for it (~5 ms/token, measured).
    reserve = n_samples * sample_tokens * 0.005
    info = train(setup.model, setup.train, ddir, clock=clock, reserve_s=reserve, log=log, budget=b)
    if setup.sizing is not None:  # in summary.json before sampling, so an interrupted run keeps it too
        _add_to_summary(out_dir, "sizing", setup.sizing)
        info.extra["sizing"] = setup.sizing
    _add_to_summary(out_dir, "data_dir", str(ddir))  # the tokens it trained on, e.g. for an anchor run
    info.extra["data_dir"] = str(ddir)
    prompts = PROMPTS[:n_samples]
    if info.extra["data"].get("lowercase"):  # e.g. the lower-cased shared TinyStories copy
        prompts = tuple(p.lower() for p in prompts)
    samples = finish_run(out_dir, info, prompts, sample_tokens, seed, log)
    info.extra["prep_seconds"] = prep_seconds
    info.extra["total_seconds"] = clock.elapsed()
    cal_s = (setup.sizing or {}).get("calibration", {}).get("seconds", 0.0)
    log(f"speedrun finished in {clock.elapsed():.1f}s of a {budget} budget ("
        + (f"sizing calibration {cal_s:.1f}s, " if cal_s else "") + f"data {prep_seconds - cal_s:.1f}s, "
        f"training+eval+checkpoint {info.extra['elapsed'] - prep_seconds:.1f}s, "
        f"samples {clock.elapsed() - info.extra['elapsed']:.1f}s)")
    return info, samples


def start_data(src: str, tokenizer: str, b, device_type: str, cache_root: Path, log=print,
               expected_rate: float = 0.0) -> Path:
    """The data folder, ready for the first step: a complete cached stream is reused as it is; otherwise
    a background producer tokenizes the source (continuing a partial cache) while training runs, and
    this returns once tokenizer, validation split and the first train shard exist."""
    from budgetlm.data.stream import Producer, StreamSpec, cache_dir, needs_producer
    max_tokens = int(b.amount) if b.kind == "tokens" else None
    if src == "fineweb-edu":  # llm.c's GPT-2 shards from the hub downloader, bounded by a token budget
        ddir, ready = _cached_data_dir(cache_root, src, tokenizer, max_tokens)
        if not ready:
            prepare(src, tokenizer, ddir, max_tokens=max_tokens or 100_000_000, log=log)
        return ddir
    # A CPU trains ~50k tokens/s: smaller shards, BPE sample and validation put its first step seconds away
    # (measured on a loaded 2-core CPU: 12 MB of BPE sample took 14 s, 4 MB 2.4 s); the final eval of a
    # run too slow to measure its eval speed scores all validation tokens, so they stay ~1 s of work.
    small = dict(sample_chars=4_000_000, shard_tokens=1 << 18, mix_chars=2_000_000, val_max_tokens=100_000)
    spec = StreamSpec(src, tokenizer, max_tokens=max_tokens, expected_rate=expected_rate,
                      **(small if device_type == "cpu" else {}))
    ddir = cache_dir(cache_root, spec)
    if not needs_producer(ddir, spec):
        log(f"using prepared data in {ddir}")
        return ddir
    producer = Producer(spec, ddir).start()
    log(f"tokenizing {src} ({tokenizer}) in the background with {producer.threads()} thread(s) -> {ddir}")
    waited = producer.wait_ready()
    log(f"data: tokenizer, validation split and first train shard ready after {waited:.1f}s; "
        f"the rest is tokenized while training")
    return ddir
