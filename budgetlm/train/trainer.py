"""The training loop: one step = accumulate micro-batches, clip, AdamW, with the learning
rate read from the fraction of budget spent. Eval, checkpoints and a reserve for the final
eval all live inside the budget, so a 5-minute run is five minutes end to end.

A run is built (`_build`: data, model, fast path, optimizer, resume), looped (`_loop`: one
phase call per line) and finished (`_finish`: final eval, checkpoint, summary).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from budgetlm.config import ModelConfig, RunInfo, TrainConfig, flat_dict, to_dict
from budgetlm.data.loader import BatchLoader
from budgetlm.data.prepare import data_tokenizer, load_meta
from budgetlm.data.shards import load_pattern, load_split
from budgetlm.device import autocast_ctx, pick_device, pick_dtype, set_threads, synchronize
from budgetlm.errors import BudgetLMError
from budgetlm.models import build_model
from budgetlm.train.budget import Budget, BudgetClock, Clock, accum_at, parse_budget, whole_batch_tokens
from budgetlm.train.checkpoint import load_weights
from budgetlm.train.checkpointer import Checkpointer, RunState, check_resume
from budgetlm.train.distributed import DistContext, setup as setup_distributed
from budgetlm.train.eval_points import EvalPoints
from budgetlm.train.evaluator import Evaluator
from budgetlm.train.fastpath import FastPath, resolve_fast_path
from budgetlm.train.interrupt import RunStopped, StopSignals, signal_name
from budgetlm.train.optim import make_optimizer, set_group_lrs
from budgetlm.train.progress import Progress
from budgetlm.train.runlock import hold_run_lock
from budgetlm.train.sinks import drop_metrics_after, open_sinks
from budgetlm.train.step import StepResult, train_step
from budgetlm.train.throughput import Throughput, measured_compile_seconds

# Replaces the loss (distillation and the like): (step, frac, x, y, logits, loss) -> loss, or None to keep it.
LossHook = Callable[..., "torch.Tensor | None"]


def _device_peak(device: torch.device) -> float | None:
    """Peak dense FLOP/s of the device (hardware table), for MFU; None where unknown."""
    from budgetlm.plan.hardware import peak_flops
    if device.type == "cuda":
        return peak_flops(torch.cuda.get_device_name(device))
    return None


def _check_val_split(n_tokens: int, cfg: TrainConfig, data_dir: str | Path) -> None:
    """The evals need one window of seq_len+1 validation tokens; fail before training, not after it."""
    if n_tokens < cfg.seq_len + 1:
        where = f"--val-shards {cfg.data.val_shards}" if cfg.data.val_shards else f"{data_dir}: the val split"
        raise BudgetLMError(f"{where} has {n_tokens} tokens; the evals need at least seq_len+1 = {cfg.seq_len + 1} "
                            f"(prepare the data with --val-frac above 0, or give --val-shards)")


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


def train(model_cfg: ModelConfig, cfg: TrainConfig, data_dir: str | Path, resume: str | None = None,
          loss_hook: LossHook | None = None, clock: Clock | None = None, reserve_s: float = 0.0,
          stop_after_steps: int | None = None, log: Callable[[str], None] = print,
          budget: Budget | None = None) -> RunInfo:
    """Train under cfg.budget and return the run's summary (also written to OUT/summary.json).

    reserve_s: seconds the caller needs after training (e.g. sampling), kept out of a time budget.
    stop_after_steps: end early as if interrupted (the schedule still assumes the full budget).
    budget: cfg.budget already parsed (speedrun parses it once); None parses cfg.budget here.
    Under torchrun (WORLD_SIZE > 1) every rank calls this; rank 0 alone writes files and logs.
    The run holds OUT/.lock throughout; SIGINT/SIGTERM stop it at a step boundary with a
    checkpoint, then raise RunStopped (see budgetlm.train.interrupt).
    """
    from budgetlm.data.stream import stop_producer
    budget = budget or parse_budget(cfg.budget)
    try:
        with setup_distributed(pick_device(cfg.device), cfg.dist.parallel, cfg.dist.zero_stage) as ctx:
            log = log if ctx.is_main else (lambda *_: None)
            with hold_run_lock(cfg.out_dir, ctx, log), StopSignals() as stop:
                run = _build(ctx, model_cfg, cfg, budget, data_dir, resume, loss_hook, clock or Clock(), reserve_s,
                             stop_after_steps, log)
                try:
                    stopped_by = _loop(run, stop)
                finally:
                    run.progress.close()
                return _finish(run, stopped_by)
    finally:
        stop_producer(data_dir)  # a background tokenizer feeding this run (speedrun) ends with it


@dataclass
class Run:
    """Everything a run builds once, and its counters."""

    ctx: DistContext
    cfg: TrainConfig
    model_cfg: ModelConfig
    out: Path
    device: torch.device
    dtype: torch.dtype
    threads: int
    meta: dict
    loader: Any
    accum: int
    step_micro: int  # tokens in one micro-step of all ranks (llm.c: B*T*num_processes)
    model: torch.nn.Module
    fast: FastPath
    run_model: Any
    optimizer: torch.optim.Optimizer
    loss_hook: LossHook | None
    state: RunState
    budget: BudgetClock
    checkpointer: Checkpointer
    evaluator: Evaluator
    points: EvalPoints | None
    progress: Progress
    speed: Throughput
    sinks: Any
    n_params: int
    flops_per_token: float
    flops_full: float  # nanoGPT's/TinyLlama's MFU counts attention over the whole T x T square
    peak: float | None  # the device's peak dense FLOP/s, for MFU; None where unknown
    stop_after_steps: int | None
    log: Callable[[str], None]

    def write_metrics(self, rec: dict[str, Any]) -> None:
        if self.sinks is not None:
            self.sinks.log(rec)

    def stamp(self) -> dict[str, Any]:
        return {"step": self.state.step, "tokens": self.state.tokens_seen, "elapsed": self.budget.clock.elapsed()}


def _accum(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(micro-steps per step, tokens in one micro-step of all ranks)."""
    step_micro = cfg.batch_size * cfg.seq_len * world
    accum = max(1, (cfg.total_batch_tokens or step_micro) // step_micro)
    if cfg.total_batch_tokens and cfg.total_batch_tokens % step_micro:
        what = "batch*seq" if world == 1 else f"batch*seq*world ({world} ranks)"
        raise BudgetLMError(f"--total-batch {cfg.total_batch_tokens} is not a multiple of {what} = {step_micro}")
    return accum, step_micro


def _build(ctx: DistContext, model_cfg: ModelConfig, cfg: TrainConfig, budget: Budget, data_dir: str | Path,
           resume: str | None, loss_hook: LossHook | None, clock: Clock, reserve_s: float,
           stop_after_steps: int | None, log: Callable[[str], None]) -> Run:
    if cfg.recipe == "auto":  # no bundle was applied (the verbs apply it, train/recipe.py): this trains as given
        cfg = copy.copy(cfg)  # not dataclasses.replace: the caller's config is trained as it is, unchecked again
        cfg.recipe = "plain"
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
    accum, step_micro = _accum(cfg, ctx.world)
    if cfg.schedule.batch_warmup_frac and accum == 1:
        raise BudgetLMError(f"--batch-warmup-frac ramps gradient accumulation, and this run has none: --total-batch "
                            f"{cfg.total_batch_tokens or step_micro} is one micro-batch ({cfg.batch_size}x{cfg.seq_len}"
                            f"{'' if ctx.world == 1 else f'x{ctx.world} ranks'}); raise --total-batch or lower --batch-size")
    if cfg.distill.teacher and loss_hook is None:
        from budgetlm.train.distill import make_teacher_hook
        loss_hook = make_teacher_hook(cfg.distill.teacher, load_split(data_dir, "train") if train_tokens is None else train_tokens,
                                      tokenizer.vocab_size, tokenizer.eot_id, cfg.distill.distill_steps, cfg.distill.distill_alpha,
                                      cfg.distill.distill_temp, log=log)

    model = build_model(model_cfg).to(device)
    fast = resolve_fast_path(cfg, device, dtype, model, accum=accum, distributed=ctx.enabled,
                             loss_hook=loss_hook is not None)
    fp8_layers = fast.apply(model)  # before wrapping: DDP/FSDP see the FP8 Linears
    resumed = check_resume(resume, model_cfg, cfg, tokenizer, data_dir) if resume else None
    if resumed:
        load_weights(model, resumed[1], str(resumed[0]))  # before sharding: every rank loads the full weights
    ddp_model = ctx.wrap(model, dtype)  # DDP wrapper / FSDP-sharded model / the model itself
    optimizer = ctx.make_optimizer(model, make_optimizer, cfg, device)
    state = RunState()
    final_tokens = cfg.eval.final_eval_tokens or val_tokens.size
    if fast.compile and not ctx.enabled:  # whole batches: no new shape to compile at the end
        final_tokens = whole_batch_tokens(final_tokens, val_tokens.size, cfg.seq_len, cfg.batch_size * cfg.seq_len)
    bclock = BudgetClock(budget, clock, final_tokens, cfg.batch_size * cfg.seq_len, reserve_s, log=log)
    checkpointer = Checkpointer(ctx, cfg, model_cfg, model, optimizer, loader, tokenizer, state, bclock,
                                out / "checkpoints")
    if resumed:
        checkpointer.restore(resumed[2], str(resumed[0]))
        log(f"resumed from {resumed[0]} at step {state.step} ({state.tokens_seen:,} tokens, "
            f"{resumed[2]['elapsed']:.1f}s spent)")
    run_model = fast.compile_model(ddp_model)
    autocast = autocast_ctx(device, dtype)
    if resumed and ctx.is_main:
        drop_metrics_after(out / "metrics.jsonl", state.step)  # the resumed run logs those steps again
    sinks = open_sinks(out, cfg.log_to, resume_step=state.step if resumed else None,
                       config={"model": to_dict(model_cfg), "train": flat_dict(cfg)}, log=log) if ctx.is_main else None
    n_params = model.num_params()
    fpt = model.flops_per_token(cfg.seq_len)
    evaluator = Evaluator(ctx, cfg, model, run_model, tokenizer, val_tokens, device, autocast)
    _log_model(log, ctx, cfg, model_cfg, n_params, device, dtype, threads, fast, fp8_layers, accum, budget, meta)
    # Time budgets with no --eval-every: an eval at each 1/eval_points of the budget, so curves have points.
    points = EvalPoints.for_run(budget, cfg.eval.eval_points, cfg.eval.eval_every,
                                cfg.batch_size * cfg.seq_len if fast.compile else cfg.seq_len,
                                cfg.eval.eval_tokens, bclock.max_frac)
    return Run(ctx=ctx, cfg=cfg, model_cfg=model_cfg, out=out, device=device, dtype=dtype, threads=threads,
               meta=meta, loader=loader, accum=accum, step_micro=step_micro, model=model, fast=fast,
               run_model=run_model, optimizer=optimizer, loss_hook=loss_hook, state=state, budget=bclock,
               checkpointer=checkpointer, evaluator=evaluator, points=points,
               progress=Progress(budget, enabled=cfg.progress and ctx.is_main), speed=Throughput.start(clock),
               sinks=sinks, n_params=n_params, flops_per_token=fpt,
               flops_full=model.flops_per_token_full_attention(cfg.seq_len), peak=_device_peak(device),
               stop_after_steps=stop_after_steps, log=log)


def _log_model(log, ctx, cfg, model_cfg, n_params, device, dtype, threads, fast, fp8_layers, accum, budget, meta) -> None:
    log(f"model: {n_params:,} params ({model_cfg.n_layer} layers, {model_cfg.n_embd} wide, {model_cfg.n_head} heads, "
        f"vocab {model_cfg.vocab_size}) | device {device.type} {str(dtype).replace('torch.', '')} | threads {threads} "
        f"| compile {('on, CUDA graphs' if fast.cuda_graphs else 'on') if fast.compile else 'off'}"
        f"{f' | fp8 {cfg.fast.fp8} ({len(fp8_layers)} Linears)' if fp8_layers else ''}{' | fp8 head' if fast.fp8_head else ''}"
        f" | recipe {cfg.recipe} | batch {cfg.batch_size}x{cfg.seq_len}x{accum}"
        f"{f'x{ctx.world} ranks ({ctx.parallel}' + (', zero1)' if ctx.zero_stage else ')') if ctx.enabled else ''} "
        f"| budget {budget} | data {_data_note(meta)}")


def _loop(r: Run, stop: StopSignals) -> int:
    """Train until the budget is spent, stop_after_steps, or a signal (whose number it returns)."""
    cfg, st, bc = r.cfg, r.state, r.budget
    r.model.train()
    while True:
        t_step = time.perf_counter()
        # under several ranks agreeing on a stop costs a sync: a token/step budget does it where the host waits anyway
        sync = not r.ctx.enabled or r.device.type != "cuda" or st.step % cfg.log_every == 0
        stopped_by = bc.poll(st.step, st.tokens_seen, stop, r.ctx, sync)
        if stopped_by:
            return stopped_by
        if bc.spent or (r.stop_after_steps is not None and st.step >= r.stop_after_steps):
            return 0
        lr = bc.lr(st.step, cfg.optim.lr, cfg.schedule.schedule, cfg.schedule.warmup_frac, cfg.schedule.min_lr_frac, cfg.schedule.warmup_steps, cfg.schedule.decay_frac)
        set_group_lrs(r.optimizer, lr)  # each group: lr times its own scale (train/optim.py)
        accum = accum_at(bc.max_frac, r.accum, cfg.schedule.batch_warmup_frac)
        result = train_step(r.run_model, r.model, r.optimizer, r.loader, r.ctx, accum=accum, device=r.device,
                            autocast=r.evaluator.autocast, cuda_graphs=r.fast.cuda_graphs,
                            graph_grads=r.fast.graph_grads, grad_clip=cfg.optim.grad_clip,
                            loss_hook=partial(r.loss_hook, st.step, bc.max_frac) if r.loss_hook else None)
        _count_step(r, result, accum)
        r.speed.time_step(t_step, r.device)
        _size_reserve(r)
        r.progress.update(bc.max_frac, st.step, st.losses[-1], r.speed.tok_rate, lr)
        if st.step % cfg.log_every == 0 or st.step == 1:
            _log_step(r, lr, result.grad_norm)
        _periodic_evals(r)
        _samples_and_checkpoints(r)


def _count_step(r: Run, result: StepResult, accum: int) -> None:
    st = r.state
    st.step += 1
    st.tokens_seen += accum * r.step_micro
    r.speed.add_step(accum * r.step_micro, result)
    # Reading the loss waits for the GPU; do it only when logging so the host runs ahead.
    st.pending.append(result.loss)
    if st.step % r.cfg.log_every == 0 or st.step == 1 or not r.device.type == "cuda":
        st.read_losses()
        if not math.isfinite(st.losses[-1]):
            raise BudgetLMError(f"training diverged at step {st.step} (loss {st.losses[-1]}); try a lower --lr")


def _size_reserve(r: Run) -> None:
    """The final eval's reserve: from one timed eval batch at step 3 (warm), guessed before that."""
    if r.budget.eval_speed is None and r.state.step == 3:
        r.budget.measured_eval_speed(r.evaluator.speed())
    elif r.budget.eval_speed is None:
        r.budget.guess_reserve(r.speed.tok_rate)


def _log_step(r: Run, lr: float, norm: torch.Tensor | None) -> None:
    sp, elapsed = r.speed, r.budget.clock.elapsed()
    rec = {"step": r.state.step, "tokens": r.state.tokens_seen, "loss": r.state.losses[-1], "lr": lr,
           "frac": r.budget.max_frac, "tok_per_s": sp.tok_rate, "elapsed": elapsed, "epoch": r.loader.epoch,
           "flops_per_s": sp.tok_rate * r.flops_per_token, "data_wait_s": sp.data_wait,
           "data_wait_frac": sp.data_wait_frac(r.budget.clock.elapsed() - sp.train_start)}
    if r.peak:
        rec["mfu"] = sp.tok_rate * r.flops_per_token / r.peak
        rec["mfu_full_attn"] = sp.tok_rate * r.flops_full / r.peak
    if r.device.type == "cuda":  # this rank's (rank 0's) high-water mark
        rec["peak_mem_gb"] = torch.cuda.max_memory_allocated(r.device) / 1e9
    if norm is not None:
        rec["grad_norm"] = r.ctx.scalar(norm) if r.ctx.enabled else float(norm)
    r.write_metrics(rec)


def _eval_point(r: Run, max_tokens: int) -> float:
    """A validation eval during training: logged, and its speed re-sizes the final eval's reserve.
    Returns its seconds (rank 0's)."""
    ev, seconds = r.evaluator.timed_validation(max_tokens)
    r.budget.measured_eval_speed(ev["val_tokens"] / max(seconds, 1e-9))
    r.write_metrics({**r.stamp(), **ev})
    r.progress.note(f"step {r.state.step}: val loss {ev['val_loss']:.4f} bpb {ev['val_bpb']:.4f}")
    return seconds


def _periodic_evals(r: Run) -> None:
    cfg, step, frac, points = r.cfg, r.state.step, r.budget.max_frac, r.points
    if cfg.eval.eval_every and step % cfg.eval.eval_every == 0:
        r.speed.side_s += _eval_point(r, cfg.eval.eval_tokens)
    elif points and points.due(frac) and step >= 3:  # from step 3 on: eval speed measured warm
        # rank 0's speeds, so every rank scores the same batches; unmeasured only after a resume
        n = points.tokens(r.budget.eval_speed or r.ctx.broadcast_float(2 * r.speed.tok_rate), frac)
        if n:
            seconds = _eval_point(r, n)
            points.spent_s += seconds
            r.speed.side_s += seconds
        points.advance(frac)
    if cfg.eval.hellaswag_every and step % cfg.eval.hellaswag_every == 0:
        t = time.perf_counter()
        hs = r.evaluator.hellaswag()
        r.budget.hs_seconds = time.perf_counter() - t
        r.speed.side_s += r.budget.hs_seconds
        r.write_metrics({**r.stamp(), **hs})
        r.progress.note(f"step {step}: HellaSwag acc_norm {hs['hellaswag_acc_norm']:.4f} ({hs['hellaswag_n']} items)")


def _samples_and_checkpoints(r: Run) -> None:
    cfg, step = r.cfg, r.state.step
    t_side = time.perf_counter()
    if cfg.eval.sample_every and step % cfg.eval.sample_every == 0:
        text = r.evaluator.sample(step)
        if text is not None:
            r.progress.note(f"step {step} sample: {text!r}")
    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
        r.checkpointer.save()
    r.speed.side_s += time.perf_counter() - t_side


def _stop(r: Run, stopped_by: int) -> None:
    """A signal stopped the run at a step boundary: checkpoint (unless this step has one) and raise RunStopped."""
    if r.state.step != r.checkpointer.saved_step:
        r.checkpointer.save()  # the handlers are still in: a second Ctrl-C cannot cut this short
    if r.sinks is not None:
        r.sinks.close()
    message = f"stopped by {signal_name(stopped_by)} at step {r.state.step}; checkpoint saved; continue with --resume {r.out}"
    r.log(message)
    raise RunStopped(stopped_by, message)


def _finish(r: Run, stopped_by: int) -> RunInfo:
    """The final eval and checkpoint, summary.json and the closing log lines."""
    cfg, st, sp, clock = r.cfg, r.state, r.speed, r.budget.clock
    synchronize(r.device)
    steady_rate = sp.steady_rate()
    st.read_losses()  # or the checkpoint would add them a second time
    train_seconds = clock.elapsed() - sp.train_start
    if stopped_by:
        _stop(r, stopped_by)
    if st.step == 0 and r.stop_after_steps != 0:
        raise BudgetLMError(f"--budget {cfg.budget}: too small to take one training step "
                            f"(reserve for the final eval is {r.budget.reserve:.1f}s)")
    t = time.perf_counter()
    synchronize(r.device)
    ev = r.evaluator.validation(r.budget.final_eval_tokens)
    if cfg.eval.hellaswag_every:
        ev.update(r.evaluator.hellaswag())
    eval_seconds = time.perf_counter() - t
    ckpt_seconds = r.checkpointer.save()
    info = _run_info(r, ev, train_seconds, eval_seconds, ckpt_seconds, steady_rate)
    r.write_metrics({**r.stamp(), "final": True, **ev})
    if r.sinks is not None:
        r.sinks.close()
        summary = {k: v for k, v in to_dict(info).items() if k != "extra"}
        summary.update({k: v for k, v in info.extra.items() if k != "losses"})
        (r.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    compile_s, first_step_s = info.extra["compile_s"], sp.first_step_s
    r.log((f"compile {compile_s:.1f} s; " if compile_s is not None else "compile off; ")
          + (f"first step at {first_step_s:.1f} s" if first_step_s is not None else "no step in this session"))
    steady = f", steady {steady_rate:,.0f}" if steady_rate else ""
    r.log(f"trained {st.step} steps, {st.tokens_seen:,} tokens in {train_seconds:.1f}s ({sp.tok_rate:,.0f} tok/s{steady}); "
          f"data wait {sp.data_wait:.1f}s ({sp.data_wait_frac(train_seconds):.1%}); "
          f"final eval {eval_seconds:.1f}s + checkpoint {ckpt_seconds:.1f}s; total {clock.elapsed():.1f}s "
          f"of budget {r.budget.budget}")
    return info


def _run_info(r: Run, ev: dict, train_seconds: float, eval_seconds: float, ckpt_seconds: float,
              steady_rate: float | None) -> RunInfo:
    cfg, st, sp, ctx = r.cfg, r.state, r.speed, r.ctx
    mfu = (lambda fpt: sp.tok_rate * fpt / r.peak if r.peak else None)
    info = RunInfo(params=r.n_params, steps=st.step, tokens_seen=st.tokens_seen,
                   tokens_per_s=sp.tok_rate, train_seconds=train_seconds,
                   val_loss=ev["val_loss"], val_ppl=ev["val_ppl"], val_bpb=ev["val_bpb"])
    info.extra = {"budget": str(r.budget.budget), "elapsed": r.budget.clock.elapsed(), "eval_seconds": eval_seconds,
                  "checkpoint_seconds": ckpt_seconds, "val_tokens": ev["val_tokens"], "epochs": r.loader.epoch,
                  "device": r.device.type, "dtype": str(r.dtype).replace("torch.", ""), "threads": r.threads,
                  "compile": r.fast.compile, "cuda_graphs": r.fast.cuda_graphs, "accum": r.accum,
                  "losses": st.losses, "world": ctx.world,
                  "parallel": ctx.parallel + ("+zero1" if ctx.zero_stage else ""),
                  "flops_per_token": r.flops_per_token, "mfu": mfu(r.flops_per_token),
                  "mfu_full_attn": mfu(r.flops_full),
                  "model": to_dict(r.model_cfg), "train": flat_dict(cfg),
                  "compile_s": measured_compile_seconds(sp.step_times, r.fast.compile), "first_step_s": sp.first_step_s,
                  "data_wait_s": sp.data_wait, "batch_s": sp.batch_s,
                  "data_wait_frac": sp.data_wait_frac(train_seconds), "steady_tokens_per_s": steady_rate,
                  "data": r.meta}
    if cfg.eval.hellaswag_every:
        info.extra.update({k: v for k, v in ev.items() if k.startswith("hellaswag")})
    return info
