"""Faster CPU versions of two operations of a training step, computing the same functions as the model's own.

- **Dropout masks from 64-bit random words.** torch's CPU dropout draws one Bernoulli sample per element
  (``bernoulli_``, 2-6 ns each: 14% of a small GPT-2 step); here one 64-bit word from the same generator
  gives four 16-bit lanes, each kept when below the keep threshold. The keep probability is ``1 - p``
  rounded to a multiple of 2**-16 (within 7.6e-6 of it) and kept elements are scaled by its inverse, so the
  output's expectation is the input, as with torch's dropout. Seeded runs stay reproducible (torch's default
  generator, saved with checkpoints).
- **One tanh-GELU kernel.** GPT-2's and mT5's ``gelu_new`` is eight elementwise operations in Python;
  ``torch.nn.functional.gelu(approximate="tanh")`` is the same formula in one kernel (equal to within float
  rounding: transformers' ``gelu_pytorch_tanh``).

``fast_dropout`` replaces ``torch.nn.functional.dropout`` and ``scaled_dot_product_attention`` while the
training forward runs (modules, models and transformers' sdpa attention call them through those names). On
the CPU, attention with dropout runs torch's unfused math path anyway, drawing its mask with ``bernoulli_``;
here the same products with this mask (in fp32 for bf16 inputs, as torch's math path upcasts them), with a
backward pass of its own. Tensors not on the CPU, evaluation, in-place calls, grouped-query attention and
probabilities the 16-bit lanes cannot express go to torch's own functions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

_TORCH_DROPOUT = F.dropout
_TORCH_ATTENTION = F.scaled_dot_product_attention
_LANES = 1 << 16


def keep_threshold(p: float) -> int | None:
    """Lanes below ``threshold - 2**15`` are kept (probability ``threshold / 2**16``); None: leave ``p`` to torch."""
    threshold = round((1.0 - p) * _LANES)
    return threshold if 0 < threshold < _LANES else None


def _keep_mask(shape: torch.Size, threshold: int) -> torch.Tensor:
    """A boolean mask of ``shape``, each element kept with probability ``threshold / 2**16``: four 16-bit lanes
    per random 64-bit word of torch's default generator."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # all 64 bits random
    return words.view(torch.int16)[:n].view(shape) < threshold - _LANES // 2


def _drop(input: torch.Tensor, threshold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input`` with a :func:`_keep_mask`'s dropped elements zeroed and the kept ones scaled by the inverse keep
    probability; and the mask."""
    keep = _keep_mask(input.shape, threshold)
    return input * keep * (_LANES / threshold), keep


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.dropout``, with the mask drawn four elements per random word on the CPU."""
    threshold = keep_threshold(p) if training and not inplace and input.device.type == "cpu" else None
    if threshold is None or not input.is_floating_point() or input.numel() == 0:
        return _TORCH_DROPOUT(input, p, training, inplace)
    return _drop(input, threshold)[0]


def _causal_bias(queries: int, keys: int) -> torch.Tensor:
    """0 where a query may see a key (the key's position at most the query's, as torch's ``is_causal``), else
    -inf."""
    return torch.zeros(queries, keys).masked_fill_(~torch.ones(queries, keys, dtype=torch.bool).tril(), float("-inf"))


class _Attention(torch.autograd.Function):
    """torch's math-path attention with :func:`dropout`'s mask, and a backward pass written out: autograd's
    chain of the same forward spends a pass over the [queries, keys] weights per operation (the mask's fill, the
    dropout's two products, the scaling); here the dropout's gradient is two in-place products and the
    softmax's backward is torch's own. Same values as that chain (a NaN weight where a mask is -inf stays NaN
    here, which filling would hide)."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                is_causal: bool, threshold: int, scale: float | None) -> torch.Tensor:
        root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(query.shape[-1]))
        scaled_query, scaled_key = query * root, key * root  # torch's math path scales both sides by sqrt
        weights = scaled_query @ scaled_key.transpose(-2, -1)
        # masks as additive biases (0 kept, -inf masked: the same weights as filling, in a quarter of the time)
        bias = _causal_bias(*weights.shape[-2:]) if is_causal else attn_mask
        if bias is not None and bias.dtype == torch.bool:
            bias = torch.zeros(bias.shape).masked_fill_(~bias, float("-inf"))
        if bias is not None:
            fits = torch.broadcast_shapes(bias.shape, weights.shape) == weights.shape
            weights = weights.add_(bias) if fits else weights + bias  # a mask with more rows: its shape
        # rows with every key masked give zeros, as in torch's math path (_safe_softmax); softmax alone, 3x
        # faster, where no row is (always with the causal mask: each query keeps its own position)
        empty_rows = attn_mask is not None and bool((bias == float("-inf")).all(-1).any())
        probs = torch._safe_softmax(weights, -1) if empty_rows else torch.softmax(weights, -1)
        dropped, keep = _drop(probs, threshold)
        ctx.save_for_backward(scaled_query, scaled_key, value, probs, keep, dropped)
        ctx.root, ctx.factor = root, _LANES / threshold
        ctx.mask_shape = attn_mask.shape if attn_mask is not None and attn_mask.is_floating_point() else None
        return dropped @ value

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled_query, scaled_key, value, probs, keep, dropped = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_value = dropped.transpose(-2, -1) @ grad if needs[2] else None
        grad_probs = (grad @ value.transpose(-2, -1)).mul_(ctx.factor).mul_(keep)
        grad_weights = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)  # 0 where masked
        grad_query = (grad_weights @ scaled_key).mul_(ctx.root) if needs[0] else None
        grad_key = (scaled_query.transpose(-2, -1) @ grad_weights).transpose(-2, -1).mul_(ctx.root) if needs[1] else None
        grad_mask = grad_weights.sum_to_size(ctx.mask_shape) if needs[3] and ctx.mask_shape is not None else None
        return grad_query, grad_key, grad_value, grad_mask, None, None, None


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
              dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
              enable_gqa: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention``; with dropout on the CPU, torch's own math path (the one it runs then)
    with :func:`dropout` for the attention weights' mask."""
    if (dropout_p == 0.0 or enable_gqa or query.device.type != "cpu" or keep_threshold(dropout_p) is None
            or not torch.is_grad_enabled() or (is_causal and attn_mask is not None)):  # the last: torch's error
        return _TORCH_ATTENTION(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                scale=scale, enable_gqa=enable_gqa)
    low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if low is not None or query.dtype in (torch.bfloat16, torch.float16):
        # Autocast would hand torch's attention its inputs in ``low``; torch's math path computes 16-bit
        # inputs in fp32 and returns their dtype: the same here.
        low = low or query.dtype
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(low).float()
        with torch.autocast("cpu", enabled=False):
            return attention(*(t.to(low).float() for t in (query, key, value)), attn_mask, dropout_p, is_causal,
                             scale).to(low)
    return _Attention.apply(query, key, value, attn_mask, is_causal, keep_threshold(dropout_p), scale)


@contextlib.contextmanager
def fast_dropout() -> Iterator[None]:
    """While active, ``torch.nn.functional.dropout`` is :func:`dropout` and
    ``torch.nn.functional.scaled_dot_product_attention`` is :func:`attention`."""
    F.dropout, F.scaled_dot_product_attention = dropout, attention
    try:
        yield
    finally:
        F.dropout, F.scaled_dot_product_attention = _TORCH_DROPOUT, _TORCH_ATTENTION


def fuse_tanh_gelu(model: torch.nn.Module) -> int:
    """Replace the model's Python tanh-GELU modules (``gelu_new``, ``gelu_fast``) with the one-kernel one;
    returns how many were replaced. The config is unchanged: a saved model loads with its own activation."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(parent, name, GELUTanh())
                replaced += 1
    return replaced
