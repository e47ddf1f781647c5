"""The allocator a process runs on (nlpjobs.train.speed.allocator) and what `make run` preloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlpjobs.train.speed import allocator

ROOT = Path(__file__).resolve().parents[2]
TCMALLOC = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason=f"tcmalloc not installed ({allocator.INSTALL_HINT}); "
                                                               ".ci/run installs it")

MAPS = """\
7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000002000-7f0000003000 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/{extra}
7f0000004000-7f0000005000 rw-p 00000000 00:00 0 [heap]
"""


@pytest.mark.parametrize(("library", "name"), [("libtcmalloc_minimal.so.4.5.10", "tcmalloc"),
                                               ("libjemalloc.so.2", "jemalloc"), ("libz.so.1", "glibc malloc")])
def test_in_use_reads_the_process_memory_map(tmp_path: Path, library: str, name: str) -> None:
    maps = tmp_path / "maps"
    maps.write_text(MAPS.format(extra=library))
    assert allocator.in_use(maps) == name
    assert allocator.in_use(tmp_path / "missing") == "unknown"


def _in_use_of_a_process(env: dict[str, str]) -> str:
    code = "from nlpjobs.train.speed.allocator import in_use; print(in_use())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@needs_tcmalloc
def test_a_process_started_with_the_preload_runs_on_tcmalloc() -> None:
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert _in_use_of_a_process({**plain, "LD_PRELOAD": str(TCMALLOC)}) == "tcmalloc"
    assert _in_use_of_a_process(plain) == "glibc malloc"


def test_report_says_how_to_get_tcmalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "in_use", lambda: "glibc malloc")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/opt/lib/libtcmalloc_minimal.so.4")
    assert "LD_PRELOAD=/opt/lib/libtcmalloc_minimal.so.4" in allocator.report()
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert "libtcmalloc-minimal4" in allocator.report()
    monkeypatch.setattr(allocator, "in_use", lambda: "tcmalloc")
    assert allocator.report() == "tcmalloc"


def test_doctor_reports_the_allocator() -> None:
    from nlpjobs.doctor import environment

    rows = dict(environment())
    assert rows["allocator"] == allocator.report()


def _make_run(*overrides: str) -> str:
    out = subprocess.run(["make", "-n", "-W", ".venv/.installed", "run", *overrides], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if "nlpjobs run" in line][-1]


def test_make_run_preloads_tcmalloc_unless_turned_off() -> None:
    assert _make_run("TCMALLOC=/opt/lib/libtcmalloc_minimal.so.4").startswith(
        'LD_PRELOAD="/opt/lib/libtcmalloc_minimal.so.4${LD_PRELOAD:+ $LD_PRELOAD}" ')
    assert "LD_PRELOAD" not in _make_run("TCMALLOC=")
    assert ("LD_PRELOAD" in _make_run()) == (TCMALLOC is not None)
