"""The bench's allocator figure (bench.allocator): workers launched with and without tcmalloc, checked to run
on the allocator launched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import allocator as figure
from bench.common import Sizes
from nlpjobs.train.speed import allocator

TCMALLOC = allocator.find_tcmalloc()
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason=f"tcmalloc not installed ({allocator.INSTALL_HINT}); "
                                                               ".ci/run installs it")


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
