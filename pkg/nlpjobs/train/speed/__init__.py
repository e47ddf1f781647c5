"""Speed rewrites of the CPU training step, behind one entry point: :func:`prepare`.

The engine asks for the step's loss function once, before ``accelerator.prepare``, and calls it for every
micro-batch; it does not know which rewrites exist. Each rewrite computes what it replaces, and each is
checked equal to it:

============================  ==============================================  =====================================
rewrite (module)              replaces                                        checked equal by
============================  ==============================================  =====================================
dropout masks from 64-bit     torch's ``dropout`` (one Bernoulli draw per     tests: the keep rate and scaling;
words (``kernels``)           element)                                        seeded runs reproduce
attention with its own        torch's math-path ``scaled_dot_product_         tests: outputs and q/k/v/mask
backward (``kernels``)        attention`` with dropout on the CPU             gradients equal autograd's chain
one-kernel tanh-GELU          transformers' ``gelu_new`` (eight elementwise   tests: equal within float rounding
(``kernels``)                 operations)
blockwise head loss           the model's ``[tokens, vocab]`` logits and      at run time: the first batch's loss
(``head_loss``)               their cross-entropy                             against the model's own (eval mode);
                                                                              a mismatch keeps the plain path
============================  ==============================================  =====================================

All of them apply only with ``train.cpu_kernels`` on, on the CPU, in fp32 or bf16 mixed precision, and
without activation checkpointing (its recomputed forward would draw other dropout masks than the forward);
the head loss also not under DeepSpeed (ZeRO-3 partitions the head's weight). ``precision`` and
``allocator`` only report: whether the CPU multiplies bf16 natively, and which allocator the process runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nlpjobs.train.speed.allocator import report as allocator_report
from nlpjobs.train.speed.head_loss import HeadLoss
from nlpjobs.train.speed.kernels import fast_dropout, fuse_tanh_gelu
from nlpjobs.train.speed.precision import cpu_advice

LossFn = Callable[[Any, dict[str, Any]], torch.Tensor]
"""``loss(model, batch)``: the training loss of one micro-batch."""
HeadBatchFn = Callable[[dict[str, Any]], "tuple[dict[str, Any], torch.Tensor] | None"]
"""``head_batch(batch)``: the model inputs without labels and each logit position's target, or None where the
task's loss is not the head's plain cross-entropy."""


@dataclass
class StepLoss:
    """``step_loss(model, batch)``: the task's ``loss`` of one micro-batch, computed with the CPU kernels in the
    forward pass when ``kernels``, through ``head_loss`` where that applies to the batch."""

    loss: LossFn
    kernels: bool = False
    head_loss: HeadLoss | None = None

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        if not self.kernels:
            return self.loss(model, batch)
        with fast_dropout():  # the forward only: the backward draws no masks
            value = self.head_loss(model, batch) if self.head_loss is not None else None
            return self.loss(model, batch) if value is None else value


def prepare(job: Any, accelerator: Any, model: torch.nn.Module, loss: LossFn, head_batch: HeadBatchFn) -> StepLoss:
    """The step's loss function for ``model`` (before ``accelerator.prepare``): ``loss`` through the rewrites
    that apply to this job, model and device. On the CPU it prints what was chosen, the allocator the process
    runs on and what the precision means there."""
    if accelerator.device.type != "cpu":
        return StepLoss(loss)
    step = _cpu_step(job, accelerator, model, loss, head_batch)
    accelerator.print(f"allocator: {allocator_report()}")
    accelerator.print(cpu_advice(accelerator.mixed_precision))
    return step


def _cpu_step(job: Any, accelerator: Any, model: torch.nn.Module, loss: LossFn, head_batch: HeadBatchFn) -> StepLoss:
    if not (job.train.cpu_kernels and accelerator.mixed_precision in ("no", "bf16")
            and not getattr(model, "is_gradient_checkpointing", False)):
        return StepLoss(loss)
    gelus = fuse_tanh_gelu(model)
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else None
    head_loss = None if job.deepspeed.enabled else HeadLoss.create(model, head_batch, loss,
                                                                   report=accelerator.print, dtype=dtype)
    accelerator.print(f"CPU kernels: dropout masks from 64-bit words, {gelus} one-kernel tanh-GELU modules, "
                      f"blockwise head loss {'to be checked on the first batch' if head_loss else 'not applicable'}")
    return StepLoss(loss, kernels=True, head_loss=head_loss)
