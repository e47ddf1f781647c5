"""The machine description of a benchmark run, with its measured fp32 matrix-multiply peak."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from importlib import metadata


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def device() -> str:
    """The device both engines of every figure train and evaluate on: "cuda" where torch sees a GPU (the
    first one), else "cpu". ``python -m bench --device cpu`` hides the GPUs from the whole run."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_one_gpu(figure: str) -> None:
    """Raise unless at most one GPU is visible: a course Trainer not launched distributed spreads itself over
    every visible GPU (DataParallel), while the nlpjobs engine in one process uses one."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 1:
        raise RuntimeError(f"{figure}: {count} GPUs are visible, and the course's Trainer would run DataParallel "
                           "over all of them while the nlpjobs engine uses one; run the bench with "
                           "CUDA_VISIBLE_DEVICES=<one GPU> (the scale figure, which compares 2 processes with 1, "
                           "is the one that uses two GPUs: run it alone, --figures scale)")


def matmul_gflops(size: int = 1024, seconds: float = 1.0, dtype: str = "float32") -> float:
    """Best GFLOP/s of ``size``×``size`` ``dtype`` matrix multiplies on :func:`device` and torch's threads.

    Repeats 2·n³-FLOP products for about ``seconds`` after one warm-up and returns the best timing of
    batches of products (the peak the hardware reaches, not the mean under interference).
    """
    import torch

    where = device()
    a = torch.randn(size, size, dtype=getattr(torch, dtype), device=where)
    b = torch.randn(size, size, dtype=getattr(torch, dtype), device=where)
    c = a @ b  # warm-up: thread pool, allocation
    if where == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    per_batch = 1
    t0 = time.perf_counter()
    # Grow the batch until one batch takes >= 50 ms, so timer resolution does not matter.
    while True:
        start = time.perf_counter()
        for _ in range(per_batch):
            c = torch.mm(a, b, out=c)
        if where == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        if took >= 0.05:
            best = min(best, took / per_batch)
            if time.perf_counter() - t0 >= seconds:
                break
        else:
            per_batch *= 2
    return 2.0 * size**3 / best / 1e9


NATIVE_BF16 = 1.5
"""A CPU's bf16 matmul peak over its fp32 one from which bf16 counts as native (AVX512-BF16 runs about 4x)."""


@dataclass
class Machine:
    cpu: str
    cores: int
    torch_threads: int
    accelerator: str
    matmul_gflops: float
    matmul_size: int
    versions: dict[str, str]
    matmul_gflops_fp16: float | None = None
    """The fp16 peak, measured on a GPU only (where the course's fp16=True recipes train in mixed precision)."""
    matmul_gflops_bf16: float | None = None
    """The bf16 peak, measured on the CPU (unless the run opts out)."""

    @property
    def native_bf16(self) -> bool:
        """Whether this CPU multiplies bf16 natively (AVX512-BF16, AMX): its measured bf16 peak is at least
        ``NATIVE_BF16`` times its fp32 one. Elsewhere bf16 products are converted to fp32 and run slower."""
        return bool(self.matmul_gflops_bf16 and self.matmul_gflops_bf16 >= NATIVE_BF16 * self.matmul_gflops)

    def peaks(self) -> dict[str, float]:
        """The measured matmul peaks by training precision (``train.mixed_precision``): "no" (fp32), on a GPU
        "fp16", and on a CPU with native bf16 "bf16" (the training figure's bf16 runs are keyed on it)."""
        return {"no": self.matmul_gflops, **({"fp16": self.matmul_gflops_fp16} if self.matmul_gflops_fp16 else {}),
                **({"bf16": self.matmul_gflops_bf16} if self.native_bf16 and self.matmul_gflops_bf16 else {})}

    def lines(self) -> list[str]:
        """The description printed above the table."""
        pkgs = " · ".join(f"{k} {v}" for k, v in self.versions.items())
        return [
            f"CPU: {self.cpu}, {self.cores} usable cores, {self.torch_threads} torch threads",
            f"accelerator: {self.accelerator}",
            f"measured fp32 matmul peak: {self.matmul_gflops:,.1f} GFLOP/s "
            f"(best of {self.matmul_size}×{self.matmul_size} products)"
            + (f"; fp16 {self.matmul_gflops_fp16:,.1f} GFLOP/s" if self.matmul_gflops_fp16 else "")
            + (f"; bf16 {self.matmul_gflops_bf16:,.1f} GFLOP/s ("
               + ("native: the training figure also runs both engines in bf16 mixed precision)" if self.native_bf16
                  else "not native: fp32 training only)") if self.matmul_gflops_bf16 else ""),
            f"python {platform.python_version()} · {pkgs}",
        ]


def describe(matmul_size: int = 1024, seconds: float = 1.0, bf16: bool = True) -> Machine:
    """Describe this machine and measure its fp32 matmul peak now (in the same run as the figures); on a GPU
    its fp16 peak too, on a CPU its bf16 peak (``bf16``)."""
    import torch

    gpu = device() == "cuda"
    accel = (f"{torch.cuda.get_device_name(0)} (both engines train and evaluate on it)" if gpu
             else "none (CPU only)")
    versions = {p: _version(p) for p in ("torch", "transformers", "datasets", "accelerate", "tokenizers")}
    return Machine(cpu_model(), usable_cores(), torch.get_num_threads(), accel,
                   matmul_gflops(matmul_size, seconds), matmul_size, versions,
                   matmul_gflops(matmul_size, seconds, "float16") if gpu else None,
                   matmul_gflops(matmul_size, seconds, "bfloat16") if bf16 and not gpu else None)


def steady_allocator(threshold: int = 1 << 30) -> str | None:
    """Fix glibc malloc's mmap and trim thresholds at ``threshold`` bytes, so that large temporaries (a
    training step's logits) reuse heap memory in every figure, whatever ran before in the process.

    glibc otherwise maps each block over its dynamic threshold (128 KiB, raised as large blocks are freed)
    afresh and faults its pages in every step: the course Trainer's 16 MB CLM logits ran at about 9,000
    tokens/s in a fresh process and 11,000 after the other tasks' figures. Returns the line for the results'
    machine description, or None where the C library has no ``mallopt``.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, threshold) == 1 and libc.mallopt(-1, threshold) == 1  # M_MMAP_, M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return None
    return (f"glibc malloc: mmap and trim thresholds fixed at {threshold >> 20} MiB for every figure (large "
            "temporaries reuse heap memory in both engines, whichever figure ran before)") if ok else None


def busy_cores(seconds: float = 2.0) -> float | None:
    """Cores kept busy by other work right now (from /proc/stat over ``seconds`` while this process sleeps);
    None where /proc/stat is not available. Unlike the load average it does not remember finished work."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else (os.cpu_count() or 1) * (1 - (idle1 - idle0) / total)
