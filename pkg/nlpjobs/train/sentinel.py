"""The NaN/Inf sentinel: stop at the first non-finite loss or gradient norm, and record
which rows of the offending batch are to blame, before anything is checkpointed."""

from __future__ import annotations

import math
from typing import Any

import torch

from nlpjobs import storage


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient; the report names the batch and its rows."""

    def __init__(self, message: str, report_uri: str) -> None:
        super().__init__(message)
        self.report_uri = report_uri


def row_losses(task: Any, model: Any, batch: dict[str, Any]) -> list[float]:
    """The task's loss of every row of ``batch`` on its own (slow; only after a failure)."""
    size = int(batch["input_ids"].shape[0])
    out = []
    with torch.no_grad():
        for i in range(size):
            row = {k: v[i:i + 1] if hasattr(v, "shape") and v.shape[:1] == (size,) else v for k, v in batch.items()}
            out.append(float(task.loss(model, row)))
    return out


def stop(*, what: str, value: float, task: Any, model: Any, batch: dict[str, Any], run_uri: str, step: int,
         micro: int, rank: int, example_rows: list[int] | None) -> NonFiniteError:
    """Write ``<run>/nonfinite/step-XXXXXXXX-rank-R.json`` and return the error to raise."""
    losses = row_losses(task, model, batch)
    rows = []
    for i, loss in enumerate(losses):
        rows.append({"row_in_batch": i, "train_row": example_rows[i] if example_rows and i < len(example_rows) else None,
                     "loss": loss if math.isfinite(loss) else str(loss), "finite": math.isfinite(loss),
                     "input_ids": batch["input_ids"][i].tolist(),
                     "labels": batch["labels"][i].tolist() if hasattr(batch.get("labels"), "shape") else None})
    bad = [r for r in rows if not r["finite"]]
    uri = storage.join(run_uri, "nonfinite", f"step-{step + 1:08d}-rank-{rank}.json")
    storage.write_json(uri, {"what": what, "value": str(value), "optimizer_step": step + 1, "micro_batch": micro,
                             "rank": rank, "nonfinite_rows": [r["row_in_batch"] for r in bad], "rows": rows})
    names = ", ".join(f"row {r['row_in_batch']}" + (f" (train row {r['train_row']})" if r["train_row"] is not None else "")
                      for r in bad) or "none on its own (the batch as a whole, or the weights, overflow)"
    return NonFiniteError(
        f"non-finite {what} ({value}) at optimizer step {step + 1}, micro-batch {micro} on rank {rank}; non-finite "
        f"rows: {names}. Nothing was checkpointed from this step; the batch (input ids, labels, per-row loss) is "
        f"saved at {uri}. Check those rows, lower train.learning_rate, or keep train.max_grad_norm set.", uri)
