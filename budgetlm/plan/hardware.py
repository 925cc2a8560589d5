"""What a device can do: peak dense matmul FLOP/s and memory, per accelerator.

The planner turns a budget into tokens with `peak x MFU`, and the trainer reports MFU as
measured FLOP/s over the same peak, so both read this one table. Peaks are the vendors'
*dense* (no 2:4 sparsity) bf16 tensor numbers with fp32 accumulation; marketing sheets
often print the sparse figure, which is twice as large.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

import torch

from budgetlm.errors import BudgetLMError


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator: name, dense bf16 peak (TFLOP/s), memory (GB = 1e9 bytes), bf16 support, and
    the torch device type it runs as (cuda also for ROCm builds), which decides the trainer's defaults."""

    key: str
    name: str
    tflops: float
    mem_gb: float
    bf16: bool = True
    note: str = ""
    device: str = "cuda"

    @property
    def peak_flops(self) -> float:
        return self.tflops * 1e12

    @property
    def mem_bytes(self) -> float:
        return self.mem_gb * 1e9


# Sources (dense bf16, fp32 accumulate):
#  A100: NVIDIA A100 datasheet (2021): BF16 tensor 312 TFLOP/s (624 with sparsity); 40 or 80 GB HBM2e.
#  H100 SXM: NVIDIA H100 datasheet: BF16 tensor 1,979 TFLOP/s *with sparsity* -> 989 dense; 80 GB HBM3.
#  H100 PCIe: same datasheet: 1,513 sparse -> 756 dense; 80 GB HBM2e.
#  H200 SXM: NVIDIA H200 datasheet: same GH100 compute as H100 SXM (989 dense); 141 GB HBM3e.
#  MI300X: AMD Instinct MI300X datasheet: BF16 1,307.4 TFLOP/s dense (2,614.9 sparse); 192 GB HBM3.
#  RTX 3090: NVIDIA Ampere GA102 whitepaper, table 9: BF16 tensor w/ FP32 accumulate 71 TFLOP/s; 24 GB.
#  RTX 4090: NVIDIA Ada Lovelace whitepaper, appendix table: FP16/BF16 tensor w/ FP32 accumulate 165.2; 24 GB.
#  Apple M1..M4 (base chips, GPU fp32; MPS gives no faster bf16 path, M1 has no bf16 at all):
#   M1 8-core GPU 2.6 TFLOP/s, M2 10-core 3.6, M3 10-core ~4.1, M4 10-core ~4.3 (Apple keynote figures,
#   rough). Unified memory: base configs 8-16 GB; we assume 16 GB, override with --mem-gb.
#   Pro/Max variants have 2-4x the GPU cores: use --gpu custom --tflops X --mem-gb Y for those.
#  CPU: measured (a short fp32 matmul) because it varies 100x between a laptop and a server.
GPUS: dict[str, GPUSpec] = {s.key: s for s in (
    GPUSpec("a100-40gb", "NVIDIA A100 40GB", 312, 40),
    GPUSpec("a100-80gb", "NVIDIA A100 80GB", 312, 80),
    GPUSpec("h100", "NVIDIA H100 SXM 80GB", 989, 80),
    GPUSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", 756, 80),
    GPUSpec("h200", "NVIDIA H200 141GB", 989, 141),
    GPUSpec("mi300x", "AMD Instinct MI300X", 1307.4, 192),
    GPUSpec("rtx3090", "NVIDIA GeForce RTX 3090", 71, 24),
    GPUSpec("rtx4090", "NVIDIA GeForce RTX 4090", 165.2, 24),
    GPUSpec("m1", "Apple M1 (GPU, fp32)", 2.6, 16, bf16=False, note="unified memory", device="mps"),
    GPUSpec("m2", "Apple M2 (GPU, fp32)", 3.6, 16, bf16=False, note="unified memory", device="mps"),
    GPUSpec("m3", "Apple M3 (GPU, fp32)", 4.1, 16, bf16=False, note="unified memory", device="mps"),
    GPUSpec("m4", "Apple M4 (GPU, fp32)", 4.3, 16, bf16=False, note="unified memory", device="mps"),
)}
ALIASES = {"a100": "a100-80gb", "h100-sxm": "h100", "h100-80gb": "h100", "3090": "rtx3090", "4090": "rtx4090",
           "mi300": "mi300x", "a100-sxm4-40gb": "a100-40gb", "a100-sxm4-80gb": "a100-80gb"}
CPU_DEFAULT_TFLOPS = 1.0  # a rough many-core fp32 figure, used only when measuring is not wanted


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def get_gpu(name: str, tflops: float | None = None, mem_gb: float | None = None,
            measure_cpu: bool = True) -> GPUSpec:
    """The spec for --gpu NAME; `custom` needs --tflops and --mem-gb; --tflops/--mem-gb override any entry."""
    key = ALIASES.get(_norm(name), _norm(name))
    if key == "custom":
        if not tflops or not mem_gb or tflops <= 0 or mem_gb <= 0:
            raise BudgetLMError("--gpu custom needs positive --tflops (dense bf16 TFLOP/s) and --mem-gb")
        return GPUSpec("custom", f"custom ({tflops:g} TFLOP/s, {mem_gb:g} GB)", tflops, mem_gb)
    if key == "cpu":
        spec = GPUSpec("cpu", "CPU (fp32)", (measure_cpu_tflops() if measure_cpu else CPU_DEFAULT_TFLOPS),
                       _ram_gb(), bf16=False, note="measured matmul" if measure_cpu else "rough default", device="cpu")
    elif key in GPUS:
        spec = GPUS[key]
    else:
        raise BudgetLMError(f"--gpu: unknown {name!r}; choose from {', '.join([*GPUS, 'cpu', 'custom'])}")
    for flag, val in (("--tflops", tflops), ("--mem-gb", mem_gb)):
        if val is not None and val <= 0:
            raise BudgetLMError(f"{flag} must be positive, got {val}")
    return GPUSpec(spec.key, spec.name, tflops or spec.tflops, mem_gb or spec.mem_gb, spec.bf16, spec.note, spec.device)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s for a table key or a driver name such as torch.cuda.get_device_name()
    ('NVIDIA H100 80GB HBM3', 'AMD Instinct MI300X', 'NVIDIA A100-SXM4-40GB'); None if unknown,
    so the trainer can leave MFU out rather than print a wrong one."""
    n = _norm(device_name)
    key = ALIASES.get(n, n)
    if key in GPUS:
        return GPUS[key].peak_flops
    if key == "cpu":
        return measure_cpu_tflops() * 1e12
    patterns = [("h200", "h200"), ("h100-pcie", "h100-pcie"), ("h100", "h100"), ("mi300x", "mi300x"),
                ("a100.*40gb", "a100-40gb"), ("a100", "a100-80gb"), ("rtx-4090", "rtx4090"),
                ("rtx-3090", "rtx3090"), ("apple-m1", "m1"), ("apple-m2", "m2"), ("apple-m3", "m3"),
                ("apple-m4", "m4")]
    for pat, k in patterns:
        if re.search(pat, n):
            return GPUS[k].peak_flops
    return None


def _ram_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0


_CPU_TFLOPS: float | None = None


def measure_cpu_tflops(n: int = 1024, seconds: float = 0.3) -> float:
    """fp32 matmul throughput of this CPU with torch's current threads (cached): the honest
    'peak' for CPU MFU, since a spec-sheet AVX peak is rarely reached by PyTorch."""
    global _CPU_TFLOPS
    if _CPU_TFLOPS is None:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm up the BLAS threads
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        _CPU_TFLOPS = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12
    return _CPU_TFLOPS


def local_device() -> tuple[torch.device, str]:
    """(device, name) of the best accelerator on this machine, for --measure."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.cuda.get_device_name()
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps"), "apple-m1"  # MPS does not report the chip; assume the slowest
    return torch.device("cpu"), "cpu"
