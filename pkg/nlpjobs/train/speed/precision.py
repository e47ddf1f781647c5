"""What ``train.mixed_precision`` means on a CPU, and whether this CPU multiplies bf16 natively.

On a CPU, bf16 mixed precision is torch's autocast (fp32 weights and optimizer, bf16 products): CPUs with
AVX512-BF16 or AMX run bf16 products several times faster than fp32 ones (this bench host's EPYC: about 4x),
others convert them and gain nothing. fp16 has no fast CPU form (no x86 CPU this targets multiplies fp16
natively, and Accelerate trains fp16 jobs in fp32 on the CPU).
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
"""Where Linux lists the CPU's flags."""
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of CPUs that multiply bf16 natively (AVX512-BF16 dot products, AMX tiles)."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first processor's flags in ``CPUINFO`` (or ``cpuinfo``'s text); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def native_bf16(flags: set[str] | None = None) -> str | None:
    """The flag by which this CPU multiplies bf16 natively, or None."""
    flags = cpu_flags() if flags is None else flags
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def cpu_advice(mixed_precision: str, flags: set[str] | None = None) -> str:
    """One line for a CPU run: the precision it trains in, and what would be faster."""
    native = native_bf16(flags)
    if mixed_precision == "bf16":
        if native:
            return f"precision: bf16 mixed precision (autocast; this CPU multiplies bf16 natively: {native})"
        return ("precision: bf16 mixed precision, but this CPU has no native bf16 (no avx512_bf16 or amx_bf16 "
                "flag): its bf16 products are converted and likely slower than fp32; set "
                "train.mixed_precision=no")
    fp16 = "train.mixed_precision=fp16 has no CPU form, so " if mixed_precision == "fp16" else ""
    hint = (f"; this CPU multiplies bf16 natively ({native}): --set train.mixed_precision=bf16 trains faster"
            if native else "")
    return f"precision: {fp16}fp32{hint}"
