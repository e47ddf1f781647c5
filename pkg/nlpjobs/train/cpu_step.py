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
here the same products with this mask (in fp32 for bf16 inputs, as torch's math path upcasts them). Tensors not on the CPU, evaluation, in-place calls, grouped-query
attention and probabilities the 16-bit lanes cannot express go to torch's own functions.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

_TORCH_DROPOUT = F.dropout
_TORCH_ATTENTION = F.scaled_dot_product_attention
_LANES = 1 << 16


def keep_threshold(p: float) -> int | None:
    """Lanes below ``threshold - 2**15`` are kept (probability ``threshold / 2**16``); None: leave ``p`` to torch."""
    threshold = round((1.0 - p) * _LANES)
    return threshold if 0 < threshold < _LANES else None


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.dropout``, with the mask drawn four elements per random word on the CPU."""
    threshold = keep_threshold(p) if training and not inplace and input.device.type == "cpu" else None
    if threshold is None or not input.is_floating_point() or input.numel() == 0:
        return _TORCH_DROPOUT(input, p, training, inplace)
    n = input.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # all 64 bits random
    lanes = words.view(torch.int16)[:n].view(input.shape)
    return input * (lanes < threshold - _LANES // 2) * (_LANES / threshold)


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
    root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(query.shape[-1]))
    weights = (query * root) @ (key * root).transpose(-2, -1)  # torch's math path scales both sides by sqrt
    if is_causal:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
        weights = weights.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        weights = (weights.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                   else weights + attn_mask)
    weights = torch._safe_softmax(weights, -1)  # rows with every key masked give zeros, as in torch's math path
    return dropout(weights, dropout_p) @ value


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
