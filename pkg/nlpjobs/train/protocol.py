"""What the training layer needs from a task, and what a task's evaluation is given.

The engine, the smoke checks and the sentinel work with any object that has these attributes; the registered
tasks (``nlpjobs.tasks``, the layer above) are such objects. Keeping the contract here lets the training loop
be read, tested and reused without the task registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from nlpjobs.config import JobConfig
    from nlpjobs.data.shards import Manifest


@dataclass
class EvalContext:
    """What a task's evaluation needs: the accelerator, the job, the dataset and its tokenizer."""

    accelerator: Accelerator
    job: JobConfig
    manifest: Manifest
    tokenizer: Any
    show_progress: bool = True
    should_stop: Callable[[], bool] | None = None
    """Called after every evaluation batch (on every process): True abandons the evaluation (SIGTERM)."""


class TrainTask(Protocol):
    """The parts of a task the training loop calls."""

    name: str
    model_columns: tuple[str, ...]
    headline_metric: str
    groups_by_length: bool
    """Whether batches are grouped by length where the job does not say."""

    def build_model(self, job: JobConfig, manifest: Manifest, tokenizer: Any) -> Any:
        """Fresh (or pretrained) weights with the task's head."""

    def load_trained(self, model_dir: str) -> Any:
        """The exported model of a finished run."""

    def collator(self, tokenizer: Any, model: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Turns rows of the prepared splits into a batch."""

    def loss(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The training loss of one batch."""

    def head_batch(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        """Model inputs without labels and each logit position's target, where the loss is the head's plain
        cross-entropy; else None."""

    def random_guess_loss(self, model: Any, batch: dict[str, Any]) -> float | None:
        """The loss of a uniform guess over the classes, for the initial-loss check."""

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        """Metrics of ``model`` on the prepared 'eval' split."""

    def summary(self, metrics: dict[str, Any]) -> str:
        """One line of the metrics for logs."""
