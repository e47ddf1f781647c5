"""A language-model head's cross-entropy computed a block of rows at a time, gradients included (CPU training).

The plain path writes the [tokens, vocabulary] logits, then log-softmax, the loss's gradient and the
softmax's backward each make a pass over that matrix in memory (32 MB per pass for 2,048 tokens and 4,096
words). Here the head's product, the softmax and the gradient of each block of rows stay in cache: the
forward pass returns the mean loss and keeps the gradients of the hidden states and of the head's weight
(and bias), which the backward pass scales. The same products are computed, so the FLOPs are the model's.

``HeadLoss`` runs the model without its output layer (the layer is swapped for an identity during the
forward, so whatever the model does before the head, like T5's rescaling, still happens) and applies the
head here (with the ``final_logits_bias`` that BART-family models add after it). The first batch checks the
result against the model's own loss (evaluation mode, no gradients); a model that does anything else after
its head (Gemma's soft-capping, a logit scale) fails the check and keeps the plain path.

Under bf16 mixed precision (``dtype``), the head's products take bf16 inputs, as autocast's linear layer
does: each block's logits are rounded to bf16 and then taken to fp32 for the softmax (transformers' loss
upcasts the logits the same way), the gradients of the hidden states and of the weight are bf16 products
kept in fp32 buffers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
BLOCK_BYTES = 4 << 20
"""Logit bytes per block of rows (256 rows of a 4,096-word vocabulary: 87 vs 96 ms a GPT-2 step with 1,024)."""
IGNORE = -100


def block_rows(vocab: int, width: int, itemsize: int = 4) -> int:
    """Rows per block: a block's logits take about ``BLOCK_BYTES``, and there are at least ``2 x width`` rows
    (each block adds its part of the head's [vocab, width] weight gradient: a pass over that whole matrix,
    which more, smaller blocks would repeat; Marian's 59,514 x 512 head ran 7% slower in 64-row blocks)."""
    return max(2 * width, BLOCK_BYTES // max(1, vocab * itemsize))


def _product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, add: bool = False) -> None:
    """``out = a @ b`` (``add``: ``out += a @ b``): in place where the operands have ``out``'s dtype (fp32), else
    through the product's own tensor (bf16 products into fp32 buffers: CPU matmuls have no other output dtype)."""
    if a.dtype == out.dtype and add:
        out.addmm_(a, b)
    elif a.dtype == out.dtype:
        torch.mm(a, b, out=out)
    elif add:
        out += a @ b
    else:
        out.copy_(a @ b)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, rows: int, dtype: torch.dtype | None) -> torch.Tensor:
        valid = targets != IGNORE
        low = weight.to(dtype or weight.dtype)  # the products' operands: the weight itself, or its bf16 copy
        low_bias = None if bias is None else bias.to(low.dtype)
        count = valid.sum().to(hidden.dtype)  # 0: NaN, as the mean of no terms in F.cross_entropy
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        total = hidden.new_zeros(())
        for start in range(0, hidden.shape[0], rows):
            end = min(hidden.shape[0], start + rows)
            block, keep = hidden[start:end].to(low.dtype), valid[start:end].to(hidden.dtype)
            target = targets[start:end].clamp(min=0)
            logits = block @ low.T if low_bias is None else torch.addmm(low_bias, block, low.T)
            log_probs = torch.log_softmax(logits.to(hidden.dtype), dim=1)  # bf16 logits upcast, as in the model's loss
            total -= (log_probs.gather(1, target[:, None]).squeeze(1) * keep).sum()
            # d(mean loss)/d(logits) = (softmax - one_hot(target)) * keep / count, in place
            grad = log_probs.exp_()
            grad[torch.arange(end - start, device=grad.device), target] -= keep
            grad.mul_((keep / count)[:, None])
            if grad_bias is not None:
                grad_bias += grad.sum(dim=0)
            grad = grad.to(low.dtype)
            if grad_hidden is not None:
                _product(grad_hidden[start:end], grad, low)
            if grad_weight is not None:
                _product(grad_weight, grad.T, block, add=True)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.present = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        grads = [next(saved) * grad_output if present else None for present in ctx.present]
        return grads[0], grads[1], grads[2], None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T + bias`` against ``targets`` (-100: ignored), as
    ``F.cross_entropy(F.linear(hidden, weight, bias), targets)``; hidden [N, d], weight [V, d], targets [N].
    ``dtype``: the products' input precision (bf16 mixed precision), as ``F.linear`` under autocast to it;
    None: the tensors' own."""
    if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        low = dtype or weight.dtype
        logits = F.linear(hidden.to(low), weight.to(low), None if bias is None else bias.to(low))
        return F.cross_entropy(logits.to(hidden.dtype), targets, ignore_index=IGNORE)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, block_rows(*weight.shape), dtype)


FINAL_BIAS = "final_logits_bias"
"""The buffer BART, Marian, mBART and Pegasus add to the head's output: folded into the head's bias here."""


@contextlib.contextmanager
def _without_head(model: torch.nn.Module, name: str) -> Iterator[None]:
    """The model's output layer (attribute ``name``) swapped for an identity (and its final logits bias for a
    zero the hidden states broadcast over): its ``logits`` are the head's inputs."""
    head = getattr(model, name)
    final_bias = getattr(model, FINAL_BIAS, None)
    setattr(model, name, torch.nn.Identity())
    if isinstance(final_bias, torch.Tensor):
        setattr(model, FINAL_BIAS, final_bias.new_zeros(1, 1))
    try:
        yield
    finally:
        setattr(model, name, head)
        if isinstance(final_bias, torch.Tensor):
            setattr(model, FINAL_BIAS, final_bias)


def _head_bias(model: torch.nn.Module, head: torch.nn.Linear) -> torch.Tensor | None:
    final_bias = getattr(model, FINAL_BIAS, None)
    if not isinstance(final_bias, torch.Tensor):
        return head.bias
    return final_bias.reshape(-1) if head.bias is None else head.bias + final_bias.reshape(-1)


class HeadLoss:
    """The training loss of a model with a linear language-model head, computed by ``linear_cross_entropy``.

    ``arrange(batch)`` gives the model's inputs (without labels) and each position's target (a [batch, length]
    tensor aligned with the logits, -100 ignored), or None when the task's loss is not the head's plain
    cross-entropy; ``reference(model, batch)`` is the task's own loss, for the first batch's check.
    """

    def __init__(self, model: torch.nn.Module, head_name: str,
                 arrange: Callable[[dict[str, Any]], tuple[dict[str, Any], torch.Tensor] | None],
                 reference: Callable[[Any, dict[str, Any]], torch.Tensor],
                 report: Callable[[str], Any] = log.info, dtype: torch.dtype | None = None) -> None:
        self.model, self.head_name = model, head_name
        """The model attribute holding its output layer."""
        self.dtype = dtype
        """The products' input precision under bf16 mixed precision; None: fp32."""
        self.arrange, self.reference, self.report = arrange, reference, report
        self.checked: bool | None = None
        """None until the first batch; then whether this path gives the model's own loss."""

    @classmethod
    def create(cls, model: torch.nn.Module, arrange: Any, reference: Any,
               report: Callable[[str], Any] = log.info, dtype: torch.dtype | None = None) -> HeadLoss | None:
        """A HeadLoss when the model's output layer is a linear layer held directly by the model, else None.
        ``dtype``: the autocast precision the model trains in (bf16), None for fp32."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        name = next((n for n, child in model.named_children() if child is head), None)
        if not isinstance(head, torch.nn.Linear) or name is None:
            return None
        return cls(model, name, arrange, reference, report, dtype)

    def _loss(self, wrapped: Any, arranged: tuple[dict[str, Any], torch.Tensor]) -> torch.Tensor:
        head = getattr(self.model, self.head_name)
        inputs, targets = arranged
        with _without_head(self.model, self.head_name):
            hidden = wrapped(**inputs).logits
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, _head_bias(self.model, head),
                                    targets.reshape(-1), self.dtype)

    def _check(self, wrapped: Any, batch: dict[str, Any], arranged: tuple[dict[str, Any], torch.Tensor]) -> bool:
        """Whether this path's loss equals the task's on ``batch`` (evaluation mode: no dropout, no RNG)."""
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                expected = float(self.reference(wrapped, batch))
                try:
                    got = float(self._loss(wrapped, arranged))
                except (RuntimeError, ValueError, TypeError) as exc:  # e.g. an output op the head's inputs cannot take
                    self.report(f"blockwise head loss not used: {exc}")
                    return False
        finally:
            self.model.train(training)
        same = abs(got - expected) <= 1e-4 * max(1.0, abs(expected))
        self.report(f"blockwise head loss {'used' if same else 'not used'}: {got:.6f} on the first batch, "
                    f"the model's own loss {expected:.6f}")
        return same

    def __call__(self, wrapped: Any, batch: dict[str, Any]) -> torch.Tensor | None:
        """The loss through the blockwise head, or None when this model must use the plain path."""
        arranged = self.arrange(batch) if self.checked is not False else None
        if arranged is None:
            return None
        if self.checked is None:
            self.checked = self._check(wrapped, batch, arranged)
        return self._loss(wrapped, arranged) if self.checked else None
