"""Score a checkpoint: on a prepared folder's split (loss, perplexity, bits per byte), or on a text
file, plus HellaSwag, shallow fusion, generated-story metrics and an LLM judge on request. The
`eval` verb is a thin shell around `run_eval`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budgetlm.errors import BudgetLMError


@dataclass
class EvalRequest:
    """What to score; None / 0 / False leave a part out."""

    checkpoint: str
    data: str | None = None
    text: str | None = None
    split: str = "val"
    seq_len: int | None = None
    batch_size: int = 16
    max_tokens: int | None = None
    hellaswag: int | None = None  # N items (0 = all), None = no HellaSwag
    hellaswag_file: str | None = None
    stories: int = 0
    fuse: str | None = None
    judge: bool = False
    judge_cache: str | None = None
    seed: int = 0
    device: str = "auto"


def check_request(req: EvalRequest) -> None:
    """Combinations that cannot work, refused before a model is loaded."""
    if req.text and req.data:
        raise BudgetLMError("--text and --data: give one (a text file to score, or a prepared data folder)")
    for flag, on in (("--fuse", req.fuse), ("--stories", req.stories), ("--judge", req.judge)):
        if on and not req.data:
            raise BudgetLMError(f"{flag} needs --data (the prepared folder)")
    if not (req.data or req.text or req.hellaswag is not None):
        raise BudgetLMError("give --data DIR (prepared folder), --text FILE or --hellaswag [N]")


def run_eval(req: EvalRequest) -> dict[str, Any]:
    """The results as one dict (stories included; the CLI prints it without them)."""
    from budgetlm.report.summary import load_model
    check_request(req)
    model, tok, ckpt = load_model(req.checkpoint, req.device or "auto")
    device = next(model.parameters()).device
    from budgetlm.train.checkpoint import trained_seq_len
    seq = req.seq_len or trained_seq_len(ckpt) or model.cfg.block_size  # windows as the run's own evals scored
    if not req.data:
        return _eval_text(req, model, tok, ckpt, device, seq)
    return _eval_data(req, model, tok, ckpt, device, seq)


def _eval_data(req: EvalRequest, model, tok, ckpt: Path, device, seq: int) -> dict[str, Any]:
    from budgetlm.data.prepare import data_tokenizer
    from budgetlm.data.shards import load_split
    from budgetlm.eval.perplexity import evaluate
    data_tok = data_tokenizer(req.data)
    if data_tok.fingerprint() != tok.fingerprint():
        raise BudgetLMError(f"--data {req.data}: tokenizer ({data_tok.spec}) does not match the checkpoint's "
                            f"({tok.spec}) in {ckpt}")
    val = load_split(req.data, req.split)
    result = evaluate(model, val, tok.token_bytes(), seq, req.batch_size, device, max_tokens=req.max_tokens or 0)
    result.update({"checkpoint": str(ckpt), "split": req.split})
    if req.hellaswag is not None:
        from budgetlm.eval.hellaswag import score_file
        result["hellaswag"] = score_file(model, tok, req.hellaswag_file, req.hellaswag, device)
    fuser = None
    if req.fuse:
        from budgetlm.sample.fusion import Fuser
        fuser = Fuser.build(model, req.data, req.fuse, tok, log=lambda m: print(m, file=sys.stderr))
        fused = evaluate(model, val, tok.token_bytes(), seq, req.batch_size, device,
                         max_tokens=req.max_tokens or 0, logits_fn=fuser.logits_fn)
        result["fused"] = {"spec": req.fuse, **fused}
    if req.stories:
        from budgetlm.data.prepare import load_meta
        from budgetlm.eval.story_eval import story_eval
        lower = bool(load_meta(req.data).get("lowercase"))
        result["stories"] = story_eval(model, tok, req.stories, seed=req.seed, lowercase_prompts=lower,
                                       logits_hook=fuser.logits_hook if fuser else None)
    if req.judge:
        result["judge"] = _judge(req, result)
    return result


def _judge(req: EvalRequest, result: dict[str, Any]) -> dict[str, Any]:
    from budgetlm.eval.judge import Judge
    if not req.stories:
        raise BudgetLMError("--judge needs --stories N (stories to judge)")
    st = result["stories"]["stories"]
    scores = Judge(cache_path=req.judge_cache).score_many([s["text"] for s in st], [s["prompt"] for s in st])
    return {k: v for k, v in scores.items() if k != "results"}


def _eval_text(req: EvalRequest, model, tok, ckpt: Path, device, seq: int) -> dict[str, Any]:
    """`eval --text FILE` and/or `--hellaswag [N]`, with no prepared folder."""
    from budgetlm.eval.hellaswag import score_file
    from budgetlm.eval.text import evaluate_text
    result = evaluate_text(model, tok, req.text, seq, req.batch_size, device, req.max_tokens or 0) \
        if req.text else {}
    result.update({"checkpoint": str(ckpt)} | ({"text": req.text} if req.text else {}))
    if req.hellaswag is not None:
        result["hellaswag"] = score_file(model, tok, req.hellaswag_file, req.hellaswag, device)
    return result


def printed(result: dict[str, Any]) -> dict[str, Any]:
    """What the verb prints: the stories' metrics, not the stories themselves."""
    out = {k: v for k, v in result.items() if k != "stories"}
    if "stories" in result:
        out["story_metrics"] = result["stories"]["story_metrics"]
    return out
