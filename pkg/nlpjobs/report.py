"""Run reports: metrics.json (one section per stage) and the loss-curve PNG."""

from __future__ import annotations

import io
from typing import Any

from nlpjobs import storage


def update_metrics(run_uri: str, section: str, values: dict[str, Any]) -> None:
    """Set one stage's section of <run>/metrics.json, keeping the other stages' sections."""
    uri = storage.join(run_uri, "metrics.json")
    current = storage.read_json(uri) if storage.exists(uri) else {}
    current[section] = values
    storage.write_json(uri, current)


LOG_SCALE_METRICS = ("perplexity",)
"""Metrics drawn on a log axis: they are exponentials of a loss and span orders of magnitude in a run."""


def curve_figure(record: dict[str, Any], metric: str, title: str) -> Any | None:
    """The loss-curve figure: training loss (left axis) and the eval metric (right axis, log for perplexity)
    against optimizer steps, titled with the task and run; None when the record has no training loss."""
    points = record.get("train_loss") or []
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([p["step"] for p in points], [p["loss"] for p in points], color="tab:blue", label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss", color="tab:blue")
    ax.grid(alpha=0.3)
    evals = [e for e in record.get("eval", []) if isinstance(e.get(metric), (int, float))]
    if evals:
        right = ax.twinx()
        right.plot([e["step"] for e in evals], [e[metric] for e in evals], "o-", color="tab:orange",
                   label=f"eval {metric}")
        right.set_ylabel(f"eval {metric}" + (" (log scale)" if metric in LOG_SCALE_METRICS else ""),
                         color="tab:orange")
        if metric in LOG_SCALE_METRICS and all(e[metric] > 0 for e in evals):
            right.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def loss_curve_png(record: dict[str, Any], metric: str, task: str, run: str) -> bytes | None:
    """The loss-curve figure as PNG bytes, titled "<task> · run <run>"."""
    fig = curve_figure(record, metric, f"nlpjobs {task} · run {run}")
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
