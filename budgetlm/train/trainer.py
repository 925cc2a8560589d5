"""The training loop: one step = accumulate micro-batches, clip, AdamW, with the learning
rate read from the fraction of budget spent. Eval, checkpoints and a reserve for the final
eval all live inside the budget, so a 5-minute run is five minutes end to end.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from budgetlm.config import ModelConfig, RunInfo, TrainConfig, flat_dict, to_dict
from budgetlm.data.loader import BatchLoader
from budgetlm.data.prepare import data_tokenizer, load_meta
from budgetlm.data.shards import load_pattern, load_split
from budgetlm.device import autocast_ctx, keep_grads_allocated, resolve_attention, resolve_ce_kernel, resolve_cuda_graphs, resolve_fp8_head, resolve_half_residual, pick_device, pick_dtype, set_threads, should_compile, synchronize
from budgetlm.errors import BudgetLMError
from budgetlm.eval.perplexity import evaluate
from budgetlm.models import build_model
from budgetlm.models.fp8 import enable_fp8
from budgetlm.models.transformer import set_attention_kernel
from budgetlm.train.budget import lr_at, parse_budget
from budgetlm.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from budgetlm.train.distributed import DistContext, maybe_main_first, setup as setup_distributed
from budgetlm.train.eval_points import EvalPoints
from budgetlm.train.interrupt import RunStopped, StopSignals, signal_name
from budgetlm.train.progress import Progress
from budgetlm.train.runlock import hold_run_lock
from budgetlm.train.sinks import open_sinks

# Replaces the loss (distillation and the like): (step, frac, x, y, logits, loss) -> loss, or None to keep it.
LossHook = Callable[..., "torch.Tensor | None"]

WARM_STEPS, TIMED_STEPS = 3, 11  # steps 1-3 compile / record CUDA graphs; 4-11 give the steady step time


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (biases, norms) do not. Fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=1e-8, **extra)


@dataclass
class Clock:
    """Wall-clock seconds spent on this run, carried across resumes."""

    before: float = 0.0  # seconds spent in earlier sessions (resume) or before training (speedrun)
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start


def _device_peak(device: torch.device) -> float | None:
    """Peak dense FLOP/s of the device (hardware table), for MFU; None where unknown."""
    from budgetlm.hardware import peak_flops
    if device.type == "cuda":
        return peak_flops(torch.cuda.get_device_name(device))
    return None


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_val_split(n_tokens: int, cfg: TrainConfig, data_dir: str | Path) -> None:
    """The evals need one window of seq_len+1 validation tokens; fail before training, not after it."""
    if n_tokens < cfg.seq_len + 1:
        where = f"--val-shards {cfg.data.val_shards}" if cfg.data.val_shards else f"{data_dir}: the val split"
        raise BudgetLMError(f"{where} has {n_tokens} tokens; the evals need at least seq_len+1 = {cfg.seq_len + 1} "
                            f"(prepare the data with --val-frac above 0, or give --val-shards)")


def _drop_metrics_after(path: Path, step: int) -> None:
    """Keep only metrics rows up to the resumed step (and no torn last line), replacing the file atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _train_loader(cfg: TrainConfig, data_dir: str | Path, rank: int, world: int):
    """(train tokens, batch loader): a stream folder (still being filled, or not) gets the streaming loader."""
    from budgetlm.data.stream import is_stream_folder
    if not cfg.data.train_shards and is_stream_folder(data_dir):
        from budgetlm.data.stream import continue_stream
        from budgetlm.data.stream_loader import StreamLoader
        if rank == 0:
            continue_stream(data_dir)  # e.g. --resume of a speedrun whose stream was not finished
        loader = StreamLoader(data_dir, cfg.seq_len, cfg.batch_size, seed=cfg.seed, rank=rank, world=world)
        return None, loader
    tokens = load_pattern(cfg.data.train_shards) if cfg.data.train_shards else load_split(data_dir, "train")
    return tokens, BatchLoader(tokens, cfg.seq_len, cfg.batch_size, seed=cfg.seed, rank=rank, world=world)


def _data_note(meta: dict) -> str:
    if meta.get("train_tokens") is None:
        return "streamed (tokenized while training)"
    return f"{meta['train_tokens']:,} train tokens"


def _sample(model: torch.nn.Module, tokenizer: Any, n_tokens: int, seed: int) -> str | None:
    """A sample from end-of-text with its own generator, so training's RNG stream is untouched."""
    from budgetlm.generate import sample_text
    if not (hasattr(model, "new_cache") or hasattr(model, "sample")):
        return None
    was_training = model.training
    text = sample_text(model, tokenizer, "", n_tokens, temperature=1.0, top_p=1.0, seed=seed).text
    model.train(was_training)
    return text


def train(model_cfg: ModelConfig, cfg: TrainConfig, data_dir: str | Path, resume: str | None = None,
          loss_hook: LossHook | None = None, clock: Clock | None = None, reserve_s: float = 0.0,
          stop_after_steps: int | None = None, log: Callable[[str], None] = print) -> RunInfo:
    """Train under cfg.budget and return the run's summary (also written to OUT/summary.json).

    reserve_s: seconds the caller needs after training (e.g. sampling), kept out of a time budget.
    stop_after_steps: end early as if interrupted (the schedule still assumes the full budget).
    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 alone writes files and logs.
    The run holds OUT/.lock throughout; SIGINT/SIGTERM stop it at a step boundary with a
    checkpoint, then raise RunStopped (see budgetlm.train.interrupt).
    """
    from budgetlm.data.stream import stop_producer
    try:
        with setup_distributed(pick_device(cfg.device), cfg.dist.parallel, cfg.dist.zero_stage) as ctx:
            log = log if ctx.is_main else (lambda *_: None)
            with hold_run_lock(cfg.out_dir, ctx, log), StopSignals() as stop:
                return _train(ctx, stop, model_cfg, cfg, data_dir, resume, loss_hook, clock, reserve_s,
                              stop_after_steps, log)
    finally:
        stop_producer(data_dir)  # a background tokenizer feeding this run (speedrun) ends with it


def compile_seconds(step_times: list[float], compiled: bool) -> float | None:
    """Seconds the warm-up steps (1-3: compile, CUDA-graph recording) took beyond a steady step, the
    median of steps 4-11; with fewer steps than that, the first step's whole duration. None uncompiled."""
    if not compiled or not step_times:
        return None
    warm, steady = step_times[:WARM_STEPS], sorted(step_times[WARM_STEPS:])
    if not steady:
        return step_times[0]
    base = steady[len(steady) // 2]
    return sum(max(0.0, t - base) for t in warm)


def _train(ctx: DistContext, stop: StopSignals, model_cfg: ModelConfig, cfg: TrainConfig, data_dir: str | Path,
           resume: str | None, loss_hook: LossHook | None, clock: Clock | None, reserve_s: float,
           stop_after_steps: int | None, log: Callable[[str], None]) -> RunInfo:
    budget = parse_budget(cfg.budget)
    clock = clock or Clock()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = ctx.device if ctx.enabled else pick_device(cfg.device)
    dtype = pick_dtype(cfg.fast.dtype, device)
    threads = set_threads(cfg.threads or ctx.cpu_threads(), device)
    if cfg.max_steps is not None:
        stop_after_steps = cfg.max_steps if stop_after_steps is None else min(stop_after_steps, cfg.max_steps)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    meta = load_meta(data_dir)
    tokenizer = data_tokenizer(data_dir)
    if model_cfg.vocab_size != tokenizer.vocab_size:
        model_cfg.vocab_size = tokenizer.vocab_size  # the data decides the vocabulary
    if cfg.seq_len > model_cfg.block_size:
        model_cfg.block_size = cfg.seq_len
    train_tokens, loader = _train_loader(cfg, data_dir, ctx.rank, ctx.world)
    val_tokens = load_pattern(cfg.data.val_shards) if cfg.data.val_shards else load_split(data_dir, "val")
    _check_val_split(val_tokens.size, cfg, data_dir)  # before training, not at its final eval
    micro_tokens = cfg.batch_size * cfg.seq_len
    step_micro = micro_tokens * ctx.world  # tokens in one micro-step of all ranks (llm.c: B*T*num_processes)
    accum = max(1, (cfg.total_batch_tokens or step_micro) // step_micro)
    if cfg.total_batch_tokens and cfg.total_batch_tokens % step_micro:
        what = "batch*seq" if ctx.world == 1 else f"batch*seq*world ({ctx.world} ranks)"
        raise BudgetLMError(f"--total-batch {cfg.total_batch_tokens} is not a multiple of {what} = {step_micro}")

    if cfg.distill.teacher and loss_hook is None:
        from budgetlm.train.distill import make_teacher_hook
        loss_hook = make_teacher_hook(cfg.distill.teacher, load_split(data_dir, "train") if train_tokens is None else train_tokens, tokenizer.vocab_size, tokenizer.eot_id,
                                      cfg.distill.distill_steps, cfg.distill.distill_alpha, cfg.distill.distill_temp, log=log)
    model = build_model(model_cfg).to(device)
    fp8_layers = enable_fp8(model, cfg.fast.fp8, modules=cfg.fast.fp8_modules)  # before wrapping: DDP/FSDP see the FP8 Linears
    step, tokens_seen, max_frac, losses = 0, 0, 0.0, []
    state = None
    if resume:
        ckpt, ck_cfg, weights, ck_tok, state = load_checkpoint(resume)
        if ck_cfg != model_cfg:
            diff = [k for k, v in to_dict(ck_cfg).items() if to_dict(model_cfg)[k] != v]
            raise BudgetLMError(f"--resume {ckpt}: checkpoint model config differs in {', '.join(diff)}")
        if ck_tok.fingerprint() != tokenizer.fingerprint():
            raise BudgetLMError(f"--resume {ckpt}: checkpoint tokenizer ({ck_tok.spec}) does not match "
                                f"the data's tokenizer ({tokenizer.spec}) in {data_dir}")
        if state is None:
            raise BudgetLMError(f"--resume {ckpt}: no state.pt (weights-only checkpoint cannot resume)")
        if state["budget"] != cfg.budget:
            raise BudgetLMError(f"--resume {ckpt}: checkpoint was trained with --budget {state['budget']}, "
                                f"this run asks for {cfg.budget}")
        load_weights(model, weights, str(ckpt))  # before sharding: every rank loads the full weights
    ddp_model = ctx.wrap(model, dtype)  # DDP wrapper / FSDP-sharded model / the model itself
    optimizer = ctx.make_optimizer(model, make_optimizer, cfg, device)
    if state is not None:
        ctx.load_optimizer_state(model, optimizer, state["optimizer"], str(ckpt))  # plain: load_state_dict
        loader.load_state_dict(state["loader"])
        step, tokens_seen, max_frac, losses = state["step"], state["tokens"], state["max_frac"], state["losses"]
        clock.before += state["elapsed"]
        _set_rng_state(ctx.rank_rng(state) if ctx.enabled else state["rng"])
        log(f"resumed from {ckpt} at step {step} ({tokens_seen:,} tokens, {state['elapsed']:.1f}s spent)")

    if hasattr(model, "set_recompute"):
        model.set_recompute(cfg.fast.recompute)
    if hasattr(model, "fused_loss"):
        # The chunked loss never forms logits, which a distillation hook needs.
        # Measured on an H100 (benchmarks/RESULTS.md): the compiled plain loss is faster than the
        # eager chunked one, which pays only when memory is short; so `auto` means off.
        model.fused_loss = cfg.fast.fused_loss == "on" and loss_hook is None
    if hasattr(model, "ce_kernel"):  # like the chunked loss, it forms no logits for a distillation hook
        model.ce_kernel = resolve_ce_kernel(cfg.fast.ce_kernel, device, cfg.fast.fused_loss == "on") and loss_hook is None
        model.fp8_head = resolve_fp8_head(cfg.fast.fp8_head, device, model.ce_kernel)
    elif cfg.fast.fp8_head == "on":
        raise BudgetLMError(f"--fp8-head on: the {model_cfg.arch} model has no CE-kernel head")
    n_params = model.num_params() if hasattr(model, "num_params") else sum(p.numel() for p in model.parameters())
    peak = _device_peak(device)
    compiled = should_compile(cfg.fast.compile, device)
    graphs = resolve_cuda_graphs(cfg.fast.cuda_graphs, device, compiled, n_params, ctx.enabled)
    graph_grads = graphs and accum > 1  # gradients must outlive each replay: see keep_grads_allocated
    if graph_grads:
        keep_grads_allocated(model.parameters())
    run_model = (torch.compile(ddp_model, mode="reduce-overhead") if graphs else torch.compile(ddp_model)) \
        if compiled else ddp_model
    autocast = autocast_ctx(device, dtype)
    set_attention_kernel(model, resolve_attention(cfg.fast.attn, device))
    if hasattr(model, "half_residual"):
        model.half_residual = resolve_half_residual(cfg.fast.half_residual, device, dtype, cfg.fast.fp8)
    token_bytes = tokenizer.token_bytes()
    final_eval_tokens = cfg.eval.final_eval_tokens or val_tokens.size
    ckpt_root = out / "checkpoints"
    pending_losses: list[torch.Tensor] = []  # per-step losses not yet read back from the device
    if state is not None and ctx.is_main:
        _drop_metrics_after(out / "metrics.jsonl", step)  # the resumed run logs those steps again
    sinks = open_sinks(out, cfg.log_to, resume_step=step if state is not None else None,
                       config={"model": to_dict(model_cfg), "train": flat_dict(cfg)}, log=log) if ctx.is_main else None
    flops_per_token = model.flops_per_token(cfg.seq_len) if hasattr(model, "flops_per_token") else 6 * n_params
    # nanoGPT's/TinyLlama's MFU counts attention over the whole T x T square; logged beside ours to compare
    flops_full = getattr(model, "flops_per_token_full_attention", lambda _: flops_per_token)(cfg.seq_len)

    def write_metrics(rec: dict[str, Any]) -> None:
        if sinks is not None:
            sinks.log(rec)

    def checkpoint() -> float:
        t = time.perf_counter()
        if pending_losses:
            losses.extend(torch.stack(pending_losses).tolist())
            pending_losses.clear()
        if ctx.enabled:  # collectives first (every rank), then rank 0 writes
            weights, opt_state, rngs = ctx.full_model_state(model), ctx.optimizer_state(model, optimizer), \
                ctx.gather_objects(_rng_state())
            error = None
            if ctx.is_main:
                state = {"optimizer": opt_state, "loader": loader.state_dict(), "step": step, "tokens": tokens_seen,
                         "max_frac": max_frac, "losses": losses, "elapsed": clock.elapsed(), "rng": rngs[0],
                         "rng_ranks": rngs, "world": ctx.world, "budget": cfg.budget, "train_config": to_dict(cfg)}
                try:
                    save_checkpoint(ckpt_root, step, model, model_cfg, tokenizer, state, weights=weights)
                except BudgetLMError as e:  # NaN weights, a full disk: every rank stops with rank 0's message
                    error = str(e)
            error = ctx.gather_objects(error)[0]  # also the barrier: no rank goes on before the save ends
            if error:
                raise BudgetLMError(error)
            return time.perf_counter() - t
        state = {"optimizer": optimizer.state_dict(), "loader": loader.state_dict(), "step": step,
                 "tokens": tokens_seen, "max_frac": max_frac, "losses": losses, "elapsed": clock.elapsed(),
                 "rng": _rng_state(), "budget": cfg.budget, "train_config": to_dict(cfg)}
        save_checkpoint(ckpt_root, step, model, model_cfg, tokenizer, state)
        return time.perf_counter() - t

    def run_eval(max_tokens: int) -> dict[str, float]:
        if ctx.enabled:  # sharded over ranks, on the bare (or FSDP) module: DDP's forward would sync buffers
            return ctx.evaluate(lambda m, toks, **kw: evaluate(m, toks, token_bytes, batch_size=cfg.batch_size,
                                                               device=device, autocast=autocast, **kw),
                                model, val_tokens, cfg.seq_len, max_tokens)
        return evaluate(run_model, val_tokens, token_bytes, cfg.seq_len, cfg.batch_size, device,
                        max_tokens=max_tokens, autocast=autocast)

    hs_examples = None
    if cfg.eval.hellaswag_every:
        from budgetlm.eval import hellaswag
        with maybe_main_first(ctx):  # rank 0 downloads, the others then read the cached file
            hs_examples = hellaswag.load_examples(hellaswag.locate(cfg.eval.hellaswag_file), cfg.eval.hellaswag_items)

    def run_hellaswag() -> dict[str, float]:
        r = hellaswag.evaluate_hellaswag(model, tokenizer, hs_examples, device, ctx.rank, ctx.world, autocast,
                                         reduce=ctx.all_reduce_sum)
        return {"hellaswag_acc": r["acc"], "hellaswag_acc_norm": r["acc_norm"], "hellaswag_n": r["n"]}

    log(f"model: {n_params:,} params ({model_cfg.n_layer} layers, {model_cfg.n_embd} wide, {model_cfg.n_head} heads, "
        f"vocab {model_cfg.vocab_size}) | device {device.type} {str(dtype).replace('torch.', '')} | threads {threads} "
        f"| compile {('on, CUDA graphs' if graphs else 'on') if compiled else 'off'}{f' | fp8 {cfg.fast.fp8} ({len(fp8_layers)} Linears)' if fp8_layers else ''}{' | fp8 head' if getattr(model, 'fp8_head', False) else ''} | batch {cfg.batch_size}x{cfg.seq_len}x{accum}"
        f"{f'x{ctx.world} ranks ({ctx.parallel}' + (', zero1)' if ctx.zero_stage else ')') if ctx.enabled else ''} "
        f"| budget {budget} | data {_data_note(meta)}")

    # Reserve for the final eval + checkpoint, re-estimated from the measured speed as we go.
    reserve = reserve_s + 1.0
    eval_speed = None  # tokens/s of forward-only passes, measured at step 3 and at each eval during training
    progress = Progress(budget, enabled=cfg.progress and ctx.is_main)
    hs_seconds = 0.0  # last HellaSwag eval's duration, kept in the reserve for the final one
    tok_rate = 0.0
    train_start = clock.elapsed()
    # Data wait: seconds blocked on shards not yet tokenized (the stream loader's own count). Building
    # batches from tokens on hand (batch_s) is host work of the step itself: on a 10M model on an H200
    # it was 1.8 ms of a 16 ms step, which the first version wrongly reported as 8-10% "data wait".
    data_wait, batch_s = 0.0, 0.0
    # The steady training rate, to compare with `bench` of the same step: tokens after the timed
    # warm-up steps over the loop's time less its evals, samples, checkpoints and data waits.
    side_s, steady0 = 0.0, None  # seconds of those side activities; (time, tokens, wait, side) at the start
    session_before = clock.before  # seconds of earlier sessions: first_step_s counts from this session's start
    step_times: list[float] = []  # wall seconds of the first TIMED_STEPS steps (synchronized), for compile_s
    first_step_s = None
    # Time budgets with no --eval-every: an eval at each 1/eval_points of the budget, so curves have points.
    points = EvalPoints.for_run(budget, cfg.eval.eval_points, cfg.eval.eval_every, micro_tokens if compiled else cfg.seq_len,
                                cfg.eval.eval_tokens, max_frac)

    def measured_eval_speed(speed: float) -> None:
        """Size the final eval and its reserve from a measured eval speed (tokens/s, rank 0's)."""
        nonlocal eval_speed, reserve, final_eval_tokens
        eval_speed = speed
        if budget.kind == "time" and final_eval_tokens / eval_speed > 0.1 * budget.amount:
            # Keep the final eval within a tenth of a time budget; score fewer tokens instead.
            first = final_eval_tokens == (cfg.eval.final_eval_tokens or val_tokens.size)
            final_eval_tokens = max(micro_tokens, int(0.1 * budget.amount * eval_speed))
            if first:
                log(f"note: final eval limited to {final_eval_tokens:,} validation tokens to fit the budget")
        reserve = reserve_s + 1.0 + 1.1 * final_eval_tokens / eval_speed

    def eval_point(max_tokens: int) -> float:
        """A validation eval during training: logged, and its speed re-sizes the final eval's reserve.
        Returns its seconds (rank 0's)."""
        t = time.perf_counter()
        ev = run_eval(max_tokens)
        seconds = ctx.broadcast_float(time.perf_counter() - t)
        measured_eval_speed(ev["val_tokens"] / max(seconds, 1e-9))
        write_metrics({"step": step, "tokens": tokens_seen, "elapsed": clock.elapsed(), **ev})
        progress.note(f"step {step}: val loss {ev['val_loss']:.4f} bpb {ev['val_bpb']:.4f}")
        return seconds
    session_tokens, session_start = 0, time.perf_counter()
    stopped_by = 0  # the signal that stopped the run at a step boundary
    saved_step = step if state is not None else -1  # the newest checkpoint's step: not rewritten on a stop
    model.train()
    try:
        while True:
            t_step = time.perf_counter()
            elapsed = clock.elapsed()
            if budget.kind == "time":
                frac = elapsed / max(budget.amount - reserve - hs_seconds, 1e-9)
                # rank 0's clock decides, so all ranks stop on the same step; a stop request rides along
                frac, stopped_by = stop.poll(ctx, frac)
            else:
                frac = budget.fraction(elapsed, tokens_seen, step)
                # under several ranks agreeing costs a sync: do it where the host waits anyway
                if not ctx.enabled or device.type != "cuda" or step % cfg.log_every == 0:
                    stopped_by = stop.poll(ctx)[1]
            if stopped_by:
                break
            max_frac = max(max_frac, frac)  # monotone even when the reserve estimate moves
            if max_frac >= 1.0 or (stop_after_steps is not None and step >= stop_after_steps):
                break
            lr = lr_at(max_frac, cfg.optim.lr, cfg.schedule.schedule, cfg.schedule.warmup_frac, cfg.schedule.min_lr_frac)
            if cfg.schedule.warmup_steps is not None:  # an explicit warmup in steps overrides the fraction
                lr = lr_at(max_frac, cfg.optim.lr, cfg.schedule.schedule, 0.0, cfg.schedule.min_lr_frac) * min(1.0, (step + 1) / max(1, cfg.schedule.warmup_steps))
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                t_data, waited = time.perf_counter(), getattr(loader, "wait_s", 0.0)
                x, y = loader.next_batch()
                batch_s += time.perf_counter() - t_data
                data_wait += getattr(loader, "wait_s", 0.0) - waited
                if device.type == "cuda":  # pinned host memory makes the copy truly asynchronous
                    x, y = x.pin_memory(), y.pin_memory()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if graphs:  # a new replay: outputs of the last one (read below, never kept) may be reused
                    torch.compiler.cudagraph_mark_step_begin()
                with ctx.micro_step(last=micro == accum - 1):  # gradients sync on the last micro-step only
                    with autocast:
                        logits, loss = run_model(x, y)
                        objective = loss_hook(step, max_frac, x, y, logits, loss) if loss_hook else None
                        if objective is None:
                            objective = loss
                    (objective / accum).backward()
                loss_sum += loss.detach() / accum  # the plain next-token loss, comparable across runs
            ctx.mean_(loss_sum)  # averaged over ranks: the loss of the whole global batch
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip) if cfg.optim.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=not graph_grads)
            step += 1
            tokens_seen += accum * step_micro
            session_tokens += accum * step_micro
            # Reading the loss waits for the GPU; do it only when logging so the host runs ahead.
            pending_losses.append(loss_sum)
            if step % cfg.log_every == 0 or step == 1 or not device.type == "cuda":
                losses.extend(torch.stack(pending_losses).tolist())
                pending_losses.clear()
                if not math.isfinite(losses[-1]):
                    raise BudgetLMError(f"training diverged at step {step} (loss {losses[-1]}); try a lower --lr")
            loss_val = losses[-1]
            if len(step_times) < TIMED_STEPS:  # wait for the device so the first steps' times are exact
                synchronize(device)
                step_times.append(time.perf_counter() - t_step)
                if first_step_s is None:
                    first_step_s = clock.elapsed() - session_before
                if len(step_times) == TIMED_STEPS:  # synchronized just above: an exact start
                    steady0 = (time.perf_counter(), session_tokens, data_wait, side_s)
            tok_rate = session_tokens / max(time.perf_counter() - session_start, 1e-9)
            if eval_speed is None and step == 3:  # time one eval batch once warm, to size the final eval
                t = time.perf_counter()
                ev = run_eval(cfg.batch_size * cfg.seq_len)
                measured_eval_speed(ctx.broadcast_float(ev["val_tokens"] / (time.perf_counter() - t)))
            elif eval_speed is None:  # forward-only is ~3x a training step; assume 2x until measured
                reserve = reserve_s + 1.0 + min(final_eval_tokens / max(2 * tok_rate, 1.0), 0.1 * budget.amount)
            progress.update(max_frac, step, loss_val, tok_rate, lr)
            if step % cfg.log_every == 0 or step == 1:
                rec = {"step": step, "tokens": tokens_seen, "loss": loss_val, "lr": lr, "frac": max_frac,
                       "tok_per_s": tok_rate, "elapsed": clock.elapsed(), "epoch": loader.epoch,
                       "flops_per_s": tok_rate * flops_per_token, "data_wait_s": data_wait,
                       "data_wait_frac": data_wait / max(clock.elapsed() - train_start, 1e-9)}
                if peak:
                    rec["mfu"] = tok_rate * flops_per_token / peak
                    rec["mfu_full_attn"] = tok_rate * flops_full / peak
                if device.type == "cuda":  # this rank's (rank 0's) high-water mark
                    rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
                if norm is not None:
                    rec["grad_norm"] = ctx.scalar(norm) if ctx.enabled else float(norm)
                write_metrics(rec)
            if cfg.eval.eval_every and step % cfg.eval.eval_every == 0:
                side_s += eval_point(cfg.eval.eval_tokens)
            elif points and points.due(max_frac) and step >= 3:  # from step 3 on: eval speed measured warm
                # rank 0's speeds, so every rank scores the same batches; unmeasured only after a resume
                n = points.tokens(eval_speed or ctx.broadcast_float(2 * tok_rate), max_frac)
                if n:
                    seconds = eval_point(n)
                    points.spent_s += seconds
                    side_s += seconds
                points.advance(max_frac)
            if cfg.eval.hellaswag_every and step % cfg.eval.hellaswag_every == 0:
                t = time.perf_counter()
                hs = run_hellaswag()
                hs_seconds = time.perf_counter() - t
                side_s += hs_seconds
                write_metrics({"step": step, "tokens": tokens_seen, "elapsed": clock.elapsed(), **hs})
                progress.note(f"step {step}: HellaSwag acc_norm {hs['hellaswag_acc_norm']:.4f} ({hs['hellaswag_n']} items)")
            t_side = time.perf_counter()
            if cfg.eval.sample_every and step % cfg.eval.sample_every == 0 and (ctx.is_main or ctx.parallel == "fsdp"):
                if ctx.parallel == "fsdp":  # sharded weights: every rank generates in lockstep
                    model.unshard()
                text = _sample(model, tokenizer, cfg.eval.sample_tokens, cfg.seed + step)
                if ctx.parallel == "fsdp":
                    model.reshard()
                if text is not None and ctx.is_main:
                    progress.note(f"step {step} sample: {text!r}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                checkpoint()
                saved_step = step
            side_s += time.perf_counter() - t_side
    finally:
        progress.close()
    synchronize(device)
    steady_rate = None
    if steady0 is not None and session_tokens > steady0[1]:
        t0, tok0, wait0, side0 = steady0
        busy = time.perf_counter() - t0 - (side_s - side0) - (data_wait - wait0)
        steady_rate = (session_tokens - tok0) / max(busy, 1e-9)

    if pending_losses:
        losses.extend(torch.stack(pending_losses).tolist())
        pending_losses.clear()  # or checkpoint() would add them a second time
    train_seconds = clock.elapsed() - train_start
    if stopped_by:
        if step != saved_step:
            checkpoint()  # the handlers are still in: a second Ctrl-C cannot cut this short
        if sinks is not None:
            sinks.close()
        message = f"stopped by {signal_name(stopped_by)} at step {step}; checkpoint saved; continue with --resume {out}"
        log(message)
        raise RunStopped(stopped_by, message)
    if step == 0 and stop_after_steps != 0:
        raise BudgetLMError(f"--budget {cfg.budget}: too small to take one training step "
                            f"(reserve for the final eval is {reserve:.1f}s)")
    t = time.perf_counter()
    synchronize(device)
    ev = run_eval(final_eval_tokens)
    if cfg.eval.hellaswag_every:
        ev.update(run_hellaswag())
    eval_seconds = time.perf_counter() - t
    ckpt_seconds = checkpoint()
    info = RunInfo(params=n_params, steps=step, tokens_seen=tokens_seen,
                   tokens_per_s=tok_rate, train_seconds=train_seconds,
                   val_loss=ev["val_loss"], val_ppl=ev["val_ppl"], val_bpb=ev["val_bpb"])
    info.extra = {"budget": str(budget), "elapsed": clock.elapsed(), "eval_seconds": eval_seconds,
                  "checkpoint_seconds": ckpt_seconds, "val_tokens": ev["val_tokens"], "epochs": loader.epoch,
                  "device": device.type, "dtype": str(dtype).replace("torch.", ""), "threads": threads,
                  "compile": compiled, "cuda_graphs": graphs, "accum": accum, "losses": losses, "world": ctx.world,
                  "parallel": ctx.parallel + ("+zero1" if ctx.zero_stage else ""),
                  "flops_per_token": flops_per_token, "mfu": (tok_rate * flops_per_token / peak) if peak else None,
                  "mfu_full_attn": (tok_rate * flops_full / peak) if peak else None,
                  "model": to_dict(model_cfg), "train": flat_dict(cfg),
                  "compile_s": compile_seconds(step_times, compiled), "first_step_s": first_step_s,
                  "data_wait_s": data_wait, "batch_s": batch_s,
                  "data_wait_frac": data_wait / max(train_seconds, 1e-9), "steady_tokens_per_s": steady_rate,
                  "data": meta}
    if cfg.eval.hellaswag_every:
        info.extra.update({k: v for k, v in ev.items() if k.startswith("hellaswag")})
    write_metrics({"step": step, "tokens": tokens_seen, "elapsed": clock.elapsed(), "final": True, **ev})
    if sinks is not None:
        sinks.close()
        summary = {k: v for k, v in to_dict(info).items() if k != "extra"}
        summary.update({k: v for k, v in info.extra.items() if k != "losses"})
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    compile_s = info.extra["compile_s"]
    log((f"compile {compile_s:.1f} s; " if compile_s is not None else "compile off; ")
        + (f"first step at {first_step_s:.1f} s" if first_step_s is not None else "no step in this session"))
    steady = f", steady {steady_rate:,.0f}" if steady_rate else ""
    log(f"trained {step} steps, {tokens_seen:,} tokens in {train_seconds:.1f}s ({tok_rate:,.0f} tok/s{steady}); "
        f"data wait {data_wait:.1f}s ({data_wait / max(train_seconds, 1e-9):.1%}); "
        f"final eval {eval_seconds:.1f}s + checkpoint {ckpt_seconds:.1f}s; total {clock.elapsed():.1f}s of budget {budget}")
    return info
