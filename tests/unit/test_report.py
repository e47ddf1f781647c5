"""The run's loss curve: which run and task it shows, and perplexity on a log axis."""

from __future__ import annotations

from typing import Any

import pytest

from nlpjobs.report import curve_figure, loss_curve_png


def record(metric: str, values: list[float]) -> dict[str, Any]:
    return {"train_loss": [{"step": s, "loss": 5.0 / s} for s in range(1, 11)],
            "eval": [{"step": 5 * i, metric: v} for i, v in enumerate(values)]}


def axes(fig: Any) -> tuple[Any, Any]:
    left, right = fig.axes
    return left, right


@pytest.mark.parametrize(("metric", "scale"), [("perplexity", "log"), ("overall_f1", "linear")])
def test_the_eval_axis_is_logarithmic_for_perplexity_only(metric: str, scale: str) -> None:
    fig = curve_figure(record(metric, [9000.0, 120.0, 14.0]), metric, "t")
    left, right = axes(fig)
    assert right.get_yscale() == scale and left.get_yscale() == "linear"
    assert ("log scale" in right.get_ylabel()) == (scale == "log")


def test_the_png_names_the_task_and_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    titles: list[str] = []
    import nlpjobs.report as report

    real = report.curve_figure
    monkeypatch.setattr(report, "curve_figure", lambda *a: titles.append(a[2]) or real(*a))
    png = loss_curve_png(record("perplexity", [50.0, 20.0]), "perplexity", "clm", "clm-local")
    assert png is not None and png.startswith(b"\x89PNG")
    assert titles == ["nlpjobs clm · run clm-local"]


def test_no_training_loss_no_curve() -> None:
    assert curve_figure({"train_loss": []}, "perplexity", "t") is None
