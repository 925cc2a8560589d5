"""On 2+ CUDA GPUs (NCCL): `budgetlm train` under torchrun with DDP, DDP+ZeRO-1 and FSDP2, against
one GPU with the same global batch (fp32, eager), step by step; exact resume across ranks; and the
fast path (bf16 autocast + torch.compile) with sampling and HellaSwag on both DDP and FSDP.

    python benchmarks/dist_gpu_check.py [OUT_DIR]    # prints a JSON report, writes OUT_DIR/dist_check.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def sh(args: list[str], log: list[dict], name: str, nproc: int = 0, env: dict | None = None) -> bool:
    cmd = [sys.executable, "-m", "budgetlm", *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "budgetlm", *args]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420, env={**os.environ, **(env or {})})
    log.append({"name": name, "rc": res.returncode, "seconds": round(time.perf_counter() - t, 1),
                **({"stderr": res.stderr[-2500:]} if res.returncode else {})})
    print(f"{name}: rc {res.returncode} in {log[-1]['seconds']}s", flush=True)
    if res.returncode:
        print(res.stderr[-2500:], flush=True)
    return res.returncode == 0


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def rows(run: Path, key: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def main(out_dir: str) -> dict:
    import torch
    from test_hellaswag import write_fixture
    work = Path(tempfile.mkdtemp())
    data, log = work / "data", []
    report: dict = {"gpus": torch.cuda.device_count(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(0), "runs": log}
    cache = work / "cache"
    write_fixture(cache / "hellaswag" / "hellaswag_val.jsonl", n=40)
    sh(["prepare", "--data", "synth", "--tokenizer", "bpe:512", "--out", str(data), "--max-tokens", "400k"], log,
       "prepare")
    model = ["--data", str(data), "--n-layer", "2", "--n-head", "4", "--n-embd", "128", "-t", "64", "-d", "1024",
             "--log-every", "1", "--no-progress", "--budget", "20-steps"]
    exact = ["--dtype", "float32", "--compile", "off"]
    r = {k: work / k for k in ("single", "ddp", "zero_a", "zero_b", "fsdp", "fsdp_b", "ddp_fast", "fsdp_fast")}
    sh(["train", *model, *exact, "-b", "8", "-o", str(r["single"])], log, "single GPU, batch 8, accum 2")
    sh(["train", *model, *exact, "-b", "4", "-o", str(r["ddp"])], log, "DDP 2 ranks x batch 4", nproc=2)
    sh(["train", *model, *exact, "-b", "4", "-z", "1", "-o", str(r["zero_a"])], log, "ZeRO-1 straight", nproc=2)
    sh(["train", *model, *exact, "-b", "4", "-z", "1", "-n", "5", "--stop-after-steps", "10", "-o", str(r["zero_b"])],
       log, "ZeRO-1 first half", nproc=2)
    sh(["train", *model, *exact, "-b", "4", "-z", "1", "-n", "5", "-y", "1", "-o", str(r["zero_b"])], log,
       "ZeRO-1 resumed", nproc=2)
    sh(["train", *model, *exact, "-b", "4", "--parallel", "fsdp", "-o", str(r["fsdp"])], log, "FSDP2 2 ranks", nproc=2)
    sh(["train", *model, *exact, "-b", "4", "--parallel", "fsdp", "-n", "5", "--stop-after-steps", "10",
        "-o", str(r["fsdp_b"])], log, "FSDP2 first half", nproc=2)
    sh(["train", *model, *exact, "-b", "4", "--parallel", "fsdp", "-n", "5", "-y", "1", "-o", str(r["fsdp_b"])], log,
       "FSDP2 resumed", nproc=2)
    fast = ["--dtype", "bfloat16", "--compile", "on", "-b", "4", "-v", "10", "-h", "1", "-s", "10", "-g", "16"]
    env = {"BUDGETLM_CACHE": str(cache)}
    sh(["train", *model, *fast, "-o", str(r["ddp_fast"])], log, "DDP bf16+compile+sample+HellaSwag", nproc=2, env=env)
    sh(["train", *model, *fast, "--parallel", "fsdp", "-o", str(r["fsdp_fast"])], log,
       "FSDP2 bf16+compile+sample+HellaSwag", nproc=2, env=env)

    def diff(a: str, b: str) -> float | None:
        try:
            la, lb = losses(r[a]), losses(r[b])
        except FileNotFoundError:
            return None
        return max(abs(x - y) for x, y in zip(la, lb)) if len(la) == len(lb) == 20 else float("nan")
    report["max_abs_loss_diff"] = {"ddp_vs_single": diff("ddp", "single"), "zero1_vs_single": diff("zero_a", "single"),
                                   "fsdp_vs_single": diff("fsdp", "single"),
                                   "zero1_resumed_vs_straight": diff("zero_b", "zero_a"),
                                   "fsdp_resumed_vs_straight": diff("fsdp_b", "fsdp")}
    for k in ("ddp_fast", "fsdp_fast"):
        try:
            ls = losses(r[k])
            report[k] = {"first_loss": ls[0], "last_loss": ls[-1],
                         "hellaswag_steps": [x["step"] for x in rows(r[k], "hellaswag_acc_norm")],
                         "summary_world": json.loads((r[k] / "summary.json").read_text())["world"]}
        except (FileNotFoundError, IndexError) as e:
            report[k] = {"error": repr(e)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "dist_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out")
