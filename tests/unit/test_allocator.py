"""The allocator a process runs on (nlpjobs.allocator), what `make run` preloads, and the bench's allocator
figure (nlpjobs.bench.allocator): workers launched with and without tcmalloc, checked to run on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nlpjobs import allocator
from nlpjobs.bench import allocator as figure
from nlpjobs.bench.common import Sizes

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
    code = "from nlpjobs.allocator import in_use; print(in_use())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@needs_tcmalloc
def test_a_process_started_with_the_preload_runs_on_tcmalloc() -> None:
    assert _in_use_of_a_process(figure.worker_env(TCMALLOC)) == "tcmalloc"
    assert _in_use_of_a_process(figure.worker_env(None, {"LD_PRELOAD": str(TCMALLOC), "PATH": "/usr/bin"})) \
        == "glibc malloc"


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


# ---- the bench figure ---------------------------------------------------------------------------------


def test_worker_env_sets_only_the_preload_asked_for_and_hides_gpus() -> None:
    base = {"LD_PRELOAD": "/x/libother.so", "PATH": "/usr/bin"}
    assert figure.worker_env("/x/libtcmalloc.so", base)["LD_PRELOAD"] == "/x/libtcmalloc.so"
    plain = figure.worker_env(None, base)
    assert "LD_PRELOAD" not in plain and plain["CUDA_VISIBLE_DEVICES"] == "" and plain["PATH"] == "/usr/bin"


def test_without_tcmalloc_the_figure_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    samples = figure.measure("ner", Sizes.quick(), tmp_path)
    assert {s.figure for s in samples} == {figure.PREPARE_FIGURE, figure.TRAIN_FIGURE}
    assert all(s.nlpjobs is None and "libtcmalloc-minimal4" in (s.note or "") for s in samples)


def test_a_worker_on_another_allocator_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    reported = {"allocator": "glibc malloc", "prepare_examples_per_s": 1.0, "train_tokens_per_s": 1.0, "scores": {}}

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(argv, 0, stdout=json.dumps(reported) + "\n", stderr="")

    monkeypatch.setattr(figure.subprocess, "run", fake_run)
    assert figure.run_worker("ner", Sizes.quick(), tmp_path, None)["allocator"] == "glibc malloc"
    with pytest.raises(RuntimeError, match="launched on tcmalloc"):
        figure.run_worker("ner", Sizes.quick(), tmp_path, "/x/libtcmalloc_minimal.so.4")


@needs_tcmalloc
def test_the_figure_measures_both_allocators_on_the_same_training(tmp_path: Path) -> None:
    samples = figure.measure("ner", Sizes.quick(), tmp_path)
    prepare, train = (next(s for s in samples if s.figure == f) for f in (figure.PREPARE_FIGURE, figure.TRAIN_FIGURE))
    assert prepare.nlpjobs > 0 and prepare.baseline > 0 and train.nlpjobs > 0 and train.baseline > 0
    # the allocator changes where buffers live, not what the model learns
    assert train.metric["nlpjobs"] == pytest.approx(train.metric["baseline"], rel=1e-5)
