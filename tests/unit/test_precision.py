"""What train.mixed_precision means on a CPU (nlpjobs/train/speed/precision.py) and the doctor's accelerator row."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlpjobs.train.speed import precision
from nlpjobs.train.speed.precision import cpu_advice, cpu_flags, native_bf16

EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n\n" \
       "processor\t: 1\nflags\t\t: fpu\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_tile amx_bf16 amx_int8\n"
OLDER = "flags\t\t: fpu sse avx2 avx512f avx512bw\n"


def test_flags_are_the_first_processors() -> None:
    assert cpu_flags(EPYC) == {"fpu", "sse", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert cpu_flags("model name\t: no flags line\n") == set()


def test_flags_default_to_the_machines_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(SAPPHIRE_RAPIDS)
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert cpu_flags() == cpu_flags(SAPPHIRE_RAPIDS) and native_bf16() == "amx_bf16"
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")  # no /proc (macOS, some sandboxes)
    assert cpu_flags() == set() and native_bf16() is None


@pytest.mark.parametrize(("text", "native"), [(EPYC, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (OLDER, None)])
def test_native_bf16_needs_its_flag(text: str, native: str | None) -> None:
    assert native_bf16(cpu_flags(text)) == native


def test_advice_names_the_precision_and_the_faster_one() -> None:
    fast, slow = cpu_flags(EPYC), cpu_flags(OLDER)
    assert cpu_advice("no", fast) == ("precision: fp32; this CPU multiplies bf16 natively (avx512_bf16): "
                                      "--set train.mixed_precision=bf16 trains faster")
    assert cpu_advice("no", slow) == "precision: fp32"
    assert cpu_advice("fp16", slow) == "precision: train.mixed_precision=fp16 has no CPU form, so fp32"
    assert "avx512_bf16" in cpu_advice("bf16", fast) and "slower" not in cpu_advice("bf16", fast)
    assert "likely slower than fp32" in cpu_advice("bf16", slow) and "mixed_precision=no" in cpu_advice("bf16", slow)


def test_doctor_row_says_whether_bf16_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from nlpjobs import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags, expected in ((cpu_flags(EPYC), "bf16 native (avx512_bf16)"), (cpu_flags(OLDER), "no native bf16")):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        row = dict(doctor.environment())["accelerator"]
        assert row.startswith("none: CPU only") and expected in row
