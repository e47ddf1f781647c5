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


def loss_curve_png(record: dict[str, Any], metric: str) -> bytes | None:
    """Training loss (and the headline eval metric, right axis) against optimizer steps."""
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
        right.set_ylabel(f"eval {metric}", color="tab:orange")
    ax.set_title("nlpjobs training")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
