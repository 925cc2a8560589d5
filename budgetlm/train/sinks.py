"""Where the trainer's metric records go: metrics.jsonl always, and optionally TensorBoard event
files and Weights & Biases (offline) so a long run can be watched live.

A record is one flat dict with `step` and `tokens` and any scalars (loss, lr, tok_per_s,
val_loss, val_bpb, data_wait_s, mfu, grad_norm, hellaswag_acc_norm, ...). metrics.jsonl gets
the record as it is; the live sinks get every numeric field but the axes, against `step`, and
the headline curves also against tokens seen (`by_tokens/...`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Protocol

from budgetlm.errors import BudgetLMError

SINKS = ("jsonl", "tensorboard", "wandb")
# The default: metrics.jsonl plus TensorBoard when it is importable. Event files cost one import
# (~0.25 s measured on a 2-core CPU) and a few KB, and `tensorboard --logdir RUN/tensorboard`
# then shows a long run's curves live with no flag. W&B stays opt-in: it creates a folder of its
# own, and a run should not look like it wants an account.
DEFAULT_LOG_TO = "auto"
AXES = ("step", "tokens")  # x axes, not curves
TOKEN_CURVES = ("loss", "val_loss", "val_bpb", "hellaswag_acc_norm")  # also drawn against tokens seen
TB_DIR, WANDB_ID_FILE = "tensorboard", "wandb_run_id.txt"


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's curves: every finite number but the axes (bools such as `final` are flags, not values)."""
    return {k: float(v) for k, v in record.items()
            if k not in AXES and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class JsonlSink:
    """metrics.jsonl: one JSON object per record, appended and flushed so a reader sees it at once."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "a")

    def log(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoardSink:
    """Event files in RUN/tensorboard. On resume from step N, events an earlier session wrote past N
    (after its last checkpoint) are dropped (purge_step N+1), so curves never double back."""

    def __init__(self, log_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(log_dir), purge_step=purge, flush_secs=10)

    def log(self, record: dict[str, Any]) -> None:
        step, tokens = int(record["step"]), int(record.get("tokens", 0))
        for k, v in scalars(record).items():
            self.writer.add_scalar(k, v, step)
            if k in TOKEN_CURVES:
                self.writer.add_scalar(f"by_tokens/{k}", v, tokens)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A W&B run in offline mode (files under RUN/wandb; `wandb sync` uploads them later, if ever).
    The run id is kept in the run folder so a resumed run continues the same W&B run."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None = None) -> None:
        import wandb
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(project="budgetlm", name=run_dir.name or None, dir=str(run_dir), id=run_id,
                              resume="allow", mode="offline", config=config or {})
        self.run.define_metric("tokens")
        for k in TOKEN_CURVES:
            self.run.define_metric(f"by_tokens/{k}", step_metric="tokens")

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        values.update({f"by_tokens/{k}": v for k, v in values.items() if k in TOKEN_CURVES})
        self.run.log({"tokens": int(record.get("tokens", 0)), **values}, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Sinks:
    """Fans each record out to every sink."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def log(self, record: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log(record)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def parse_log_to(spec: str | None) -> tuple[list[str], bool]:
    """(sink names, asked explicitly). 'auto' = jsonl + tensorboard when installed; jsonl is always in."""
    text = (spec or DEFAULT_LOG_TO).strip().lower()
    if text == "auto":
        return ["jsonl", "tensorboard"], False
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SINKS]
    if bad:
        raise BudgetLMError(f"--log-to: unknown sink(s) {', '.join(bad)}; choose from {', '.join(SINKS)} or auto")
    return ["jsonl"] + [n for n in dict.fromkeys(names) if n != "jsonl"], True


def _available(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def open_sinks(run_dir: str | Path, log_to: str | None = None, resume_step: int | None = None,
               config: dict[str, Any] | None = None, log: Callable[[str], None] = print) -> Sinks:
    """The sinks `log_to` names for a run folder; a live sink whose package is missing is skipped with
    a one-line note, never an error."""
    run_dir = Path(run_dir)
    names, explicit = parse_log_to(log_to)
    sinks: list[Sink] = [JsonlSink(run_dir / "metrics.jsonl")]
    for name in names[1:]:
        flag = f"--log-to {name if explicit else 'auto'}"
        if not _available(name):  # the sink's name is its package's
            log(f"note: {flag}: the '{name}' package is not installed; no {name} logs "
                f"(metrics.jsonl is written as always)")
            continue
        try:
            sinks.append(TensorBoardSink(run_dir / TB_DIR, resume_step) if name == "tensorboard"
                         else WandbSink(run_dir, config))
        except ImportError as e:  # installed but broken (e.g. a version clash): still no crash
            log(f"note: {flag}: {name} could not be loaded ({e}); no {name} logs")
    return Sinks(sinks)


def drop_metrics_after(path: Path, step: int) -> None:
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
