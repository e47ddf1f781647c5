"""The initial-loss sanity check and the overfit verdict/curve."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from nlpjobs.tasks import get_task
from nlpjobs.train.smoke import OverfitResult, initial_loss_check


def _model(**config: int) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(**config))


def test_random_guess_per_head() -> None:
    batch = {"input_ids": torch.zeros(2, 384, dtype=torch.long)}
    assert get_task("ner").random_guess_loss(_model(num_labels=9), batch) == math.log(9)
    assert get_task("qa").random_guess_loss(_model(), batch) == math.log(384)  # start/end over the window
    for task in ("mlm", "clm", "translation", "summarization"):
        assert get_task(task).random_guess_loss(_model(vocab_size=4096), batch) == math.log(4096)


def test_initial_loss_warnings() -> None:
    ner, batch = get_task("ner"), {"input_ids": torch.zeros(1, 4)}
    fine = initial_loss_check(ner, _model(num_labels=9), batch, 2.3, random_init=False)
    assert fine is not None and fine["warning"] == "" and fine["ratio"] == 2.3 / math.log(9)
    high = initial_loss_check(ner, _model(num_labels=9), batch, 9.0, random_init=False)
    assert high is not None and "label alignment" in high["warning"]
    low = initial_loss_check(get_task("clm"), _model(vocab_size=1000), batch, 1.0, random_init=True)
    assert low is not None and "leak" in low["warning"]
    pretrained = initial_loss_check(get_task("clm"), _model(vocab_size=1000), batch, 1.0, random_init=False)
    assert pretrained is not None and pretrained["warning"] == ""  # a pretrained LM may start far below
    assert "not finite" in initial_loss_check(ner, _model(num_labels=9), batch, float("nan"), False)["warning"]


def test_overfit_verdict_and_curve() -> None:
    falling = OverfitResult(losses=[4.0, 3.0, 2.5, 1.9], ratio_needed=0.5)
    assert falling.passed
    assert not OverfitResult(losses=[4.0, 3.0, 2.1], ratio_needed=0.5).passed
    assert not OverfitResult(losses=[4.0, float("nan")], ratio_needed=0.5).passed
    curve = falling.curve(height=4).splitlines()
    assert curve[0].startswith("   4.000 |") and curve[3].startswith("   1.900 |")
    assert curve[0].endswith("█   ") and curve[3] == "   1.900 |████" and curve[-1].endswith("steps 1..4")
