"""Distributed evaluation: run the model over a loader, pad across processes, gather, truncate."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from nlpjobs.tasks.base import EvalContext
from nlpjobs.train.stop import EvaluationInterrupted

StepFn = Callable[[dict[str, Any], Any], dict[str, tuple[torch.Tensor, int]]]


def collect(ctx: EvalContext, model: Any, loader: Any, step: StepFn,
            forward: Callable[[Any, dict[str, Any]], Any] | None = None) -> dict[str, list[np.ndarray]]:
    """Per-example rows of every tensor ``step`` returns, in dataset order on every process.

    ``step(batch, outputs)`` maps names to (tensor [batch, ...], pad_index). Each tensor is padded to
    the longest across processes along dim 1 (pad_index), gathered, and the rows are truncated to
    the dataset length, dropping the duplicates Accelerate adds to even out the last batch.
    """
    acc = ctx.accelerator
    model.eval()
    rows: dict[str, list[np.ndarray]] = {}
    total = len(loader.dataset)
    bar = tqdm(loader, desc="evaluate", disable=not (ctx.show_progress and acc.is_main_process), leave=False)
    with torch.no_grad():
        for batch in bar:
            inputs = {k: v for k, v in batch.items() if k in _forward_keys(batch)}
            outputs = forward(model, batch) if forward else model(**inputs)
            for name, (tensor, pad_index) in step(batch, outputs).items():
                if tensor.dim() > 1:
                    tensor = acc.pad_across_processes(tensor.contiguous(), dim=1, pad_index=pad_index)
                gathered = acc.gather(tensor.contiguous()).cpu().numpy()
                rows.setdefault(name, []).extend(list(gathered))
            if ctx.should_stop is not None and ctx.should_stop():
                raise EvaluationInterrupted(f"evaluation stopped after {len(next(iter(rows.values()), []))} rows")
    out = {name: values[:total] for name, values in rows.items()}
    for name, values in out.items():
        if len(values) != total:
            raise RuntimeError(f"evaluation gathered {len(values)} rows of {name!r} for {total} examples")
    return out


def _forward_keys(batch: dict[str, Any]) -> set[str]:
    return set(batch) - {"example_id", "offset_mapping", "example_index"}


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy); inf when it overflows (math.exp raises OverflowError, torch.exp gives inf)."""
    try:
        value = math.exp(mean_loss)
    except OverflowError:
        return float("inf")
    return value if math.isfinite(value) else float("inf")
