"""Debugging aids from the course's chapter 8: the initial-loss sanity check and the
one-batch overfit smoke test."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from nlpjobs.train.protocol import TrainTask as Task

log = logging.getLogger(__name__)
HIGH, LOW = 1.5, 0.5
"""A first loss above HIGH x the random-guess value, or (random init only) below LOW x, is suspicious."""


def initial_loss_check(task: Task, model: Any, batch: dict[str, Any], loss: float,
                       random_init: bool) -> dict[str, Any] | None:
    """Compare the first training loss with a uniform guess (ln of the class count); warn when far off."""
    guess = task.random_guess_loss(model, batch)
    if not guess:
        return None
    ratio = loss / guess
    record = {"loss": loss, "random_guess": guess, "ratio": ratio, "warning": ""}
    if not math.isfinite(loss):
        record["warning"] = "the first loss is not finite"
    elif ratio > HIGH:
        record["warning"] = (f"first loss {loss:.3f} is {ratio:.1f}x a random guess ({guess:.3f} = ln of the class "
                             "count): check label alignment, the head's label count and the learning rate")
    elif random_init and ratio < LOW:
        record["warning"] = (f"first loss {loss:.3f} is far below a random guess ({guess:.3f}) for a randomly "
                             "initialised model: the labels may leak into the inputs")
    if record["warning"]:
        log.warning("initial-loss check: %s", record["warning"])
    return record


@dataclass
class OverfitResult:
    losses: list[float] = field(default_factory=list)
    ratio_needed: float = 0.5
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.losses) and math.isfinite(self.losses[-1]) and \
            self.losses[-1] <= self.ratio_needed * self.losses[0]

    def curve(self, width: int = 60, height: int = 8) -> str:
        """The loss per step as a small text plot (terminals and pod logs have no images)."""
        values = self.losses
        if not values:
            return ""
        step = max(1, math.ceil(len(values) / width))
        cols = [min(values[i:i + step]) for i in range(0, len(values), step)]
        top, bottom = max(cols), min(cols)
        span = (top - bottom) or 1.0
        rows = []
        for r in range(height, 0, -1):
            level = bottom + span * (r - 1) / height
            label = f"{top:8.3f} |" if r == height else f"{bottom:8.3f} |" if r == 1 else "         |"
            rows.append(label + "".join("█" if v >= level else " " for v in cols))
        rows.append("         +" + "-" * len(cols) + f"  steps 1..{len(values)}")
        return "\n".join(rows)


def first_train_batch(task: Task, train_ds: Any, tokenizer: Any, model: Any, size: int) -> dict[str, Any]:
    """The first ``size`` rows of the (model-input) training split, collated as the engine collates them."""
    return task.collator(tokenizer, model)([train_ds[i] for i in range(min(size, len(train_ds)))])
