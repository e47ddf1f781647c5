"""The CPU training-step kernels (train/speed/kernels.py): dropout with masks from 64-bit words, attention with
that dropout, and the one-kernel tanh-GELU, each checked against torch's / transformers' own function."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nlpjobs.train.speed import kernels as cpu_step


def test_dropout_keeps_each_element_with_probability_one_minus_p() -> None:
    torch.manual_seed(0)
    x = torch.full((1 << 20,), 2.0)
    for p in (0.1, 0.5, 0.9):
        out = cpu_step.dropout(x, p)
        kept = out != 0
        threshold = cpu_step.keep_threshold(p)
        assert threshold is not None and abs(threshold / 65536 - (1 - p)) <= 2 ** -17
        assert torch.equal(out[kept], torch.full_like(out[kept], 2.0 * 65536 / threshold))  # E[out] = x
        sigma = math.sqrt(p * (1 - p) / x.numel())
        # every 16-bit lane of the random words: a lane whose bits are not all random keeps too many
        for lane in range(4):
            share = kept[lane::4].float().mean().item()
            assert abs(share - (1 - p)) < 6 * sigma * 2, (p, lane, share)


def test_dropout_is_seeded_and_its_gradient_is_the_scaled_mask() -> None:
    x = torch.randn(8, 33, 17, requires_grad=True)  # numel not a multiple of 4
    torch.manual_seed(3)
    a = cpu_step.dropout(x, 0.2)
    torch.manual_seed(3)
    b = cpu_step.dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, cpu_step.dropout(x, 0.2))
    (grad,) = torch.autograd.grad(a.sum(), x)
    scale = 65536 / cpu_step.keep_threshold(0.2)
    assert torch.equal(grad, (a != 0).float() * scale)


def test_dropout_leaves_other_calls_to_torch() -> None:
    x = torch.randn(64)
    assert torch.equal(cpu_step.dropout(x, 0.3, training=False), x)
    assert cpu_step.keep_threshold(1e-7) is None and cpu_step.keep_threshold(1 - 1e-7) is None
    torch.manual_seed(1)
    expected = F.dropout(x, 1e-7)
    torch.manual_seed(1)
    assert torch.equal(cpu_step.dropout(x, 1e-7), expected)  # p the lanes cannot express: torch's dropout
    ints = torch.arange(8)
    assert torch.equal(cpu_step.dropout(x.clone(), 1.0), torch.zeros(64))
    with pytest.raises(RuntimeError):  # torch's own error for integer input, unchanged
        cpu_step.dropout(ints, 0.5)


@pytest.mark.parametrize("kind", ["causal", "bool", "float", "scale"])
def test_attention_is_torchs_math_path_with_this_dropout(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    kwargs = {"causal": {"is_causal": True}, "bool": {"attn_mask": torch.rand(2, 1, 16, 16) > 0.3},
              "float": {"attn_mask": torch.randn(2, 1, 16, 16)}, "scale": {"scale": 0.3}}[kind]
    if kind == "bool":
        kwargs["attn_mask"][0, 0, 3] = False  # a query that may attend to nothing: zeros, as torch gives
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    seen: list[int] = []
    monkeypatch.setattr(cpu_step, "_keep_mask",
                        lambda shape, threshold: seen.append(threshold) or torch.ones(shape, dtype=torch.bool))
    got = cpu_step.attention(q, k, v, dropout_p=0.1, **kwargs)
    threshold = cpu_step.keep_threshold(0.1)
    assert seen == [threshold] and torch.allclose(got, expected * 65536 / threshold, atol=1e-6)


def _autograd_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                        is_causal: bool, p: float, scale: float | None) -> torch.Tensor:
    """The same forward as autograd's chain of operations (what cpu_step.attention computed before its own
    backward pass)."""
    root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    weights = (q * root) @ (k * root).transpose(-2, -1)
    if is_causal:
        weights = weights.masked_fill(~torch.ones(weights.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        weights = (weights.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                   else weights + attn_mask)
    return cpu_step.dropout(torch._safe_softmax(weights, -1), p) @ v


@pytest.mark.parametrize("kind", ["causal", "bool", "wide bool", "float", "scale", "layout"])
def test_attention_backward_is_autograds(kind: str) -> None:
    """The written-out backward pass gives autograd's gradients (same dropout mask: same seed), for queries, keys,
    values and a float mask that takes gradients; "layout": keys and values as transformers makes them (a
    [batch, heads, length, width] view of a [batch, length, heads x width] projection)."""
    torch.manual_seed(0)
    shape = (2, 4, 16, 8)
    q, k, v = (torch.randn(shape) for _ in range(3))
    if kind == "layout":
        k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    mask = {"bool": torch.rand(2, 1, 16, 16) > 0.3, "wide bool": torch.rand(3, 2, 1, 16, 16) > 0.3,
            "float": torch.randn(2, 1, 16, 16)}.get(kind)
    if mask is not None and kind != "float":
        mask[..., 3, :] = False  # a query that may attend to nothing
    causal, scale = kind in ("causal", "layout"), 0.3 if kind == "scale" else None
    grad = torch.randn(3, *shape) if kind == "wide bool" else torch.randn(shape)
    results = []
    for function in (cpu_step.attention, _autograd_attention):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        m = mask.clone().requires_grad_() if kind == "float" else mask
        torch.manual_seed(1)
        out = (function(*inputs, attn_mask=m, dropout_p=0.1, is_causal=causal, scale=scale)
               if function is cpu_step.attention else function(*inputs, m, causal, 0.1, scale))
        out.backward(grad)
        results.append([out, *(t.grad for t in inputs), *([m.grad] if kind == "float" else [])])
    for got, expected in zip(*results, strict=True):
        assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
        # the same products on the same layouts: the same bits (other layouts or a broadcast mask reduce in
        # another order: float rounding, within the tolerance above)
        assert kind in ("wide bool", "layout") or torch.equal(got, expected), (got - expected).abs().max()


@pytest.mark.parametrize("inputs", ["fp32 under autocast", "bf16"])
def test_attention_under_bf16_computes_as_torchs_math_path(inputs: str) -> None:
    """Under bf16 autocast torch's attention takes its inputs in bf16 and its math path (the one dropout runs)
    computes them in fp32: the same here, down to the last bit of the bf16 output (p = 2**-16: nearly every
    weight kept, by both masks)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    if inputs == "bf16":
        q, k, v = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        expected = F.scaled_dot_product_attention(q, k, v, dropout_p=2**-16, is_causal=True)
        got = cpu_step.attention(q, k, v, dropout_p=2**-16, is_causal=True)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert (got != expected).float().mean() < 0.01  # a dropped weight changes its row (p = 2**-16: rarely)
    got.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == q.dtype


def test_attention_dropout_drops_whole_weights() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    v = torch.eye(4).view(1, 1, 4, 4)  # the output rows are the (dropped, rescaled) attention weights
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1)
    out = cpu_step.attention(q, k, v, dropout_p=0.5)
    kept = out != 0
    assert 0 < kept.sum() < 16
    assert torch.allclose(out[kept], (weights * 65536 / cpu_step.keep_threshold(0.5))[kept], atol=1e-6)
    with torch.no_grad():  # evaluation-like calls and p = 0 are torch's
        assert torch.equal(cpu_step.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    with pytest.raises(RuntimeError):  # a mask and is_causal together: torch's error, not a silent mix
        cpu_step.attention(q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool), dropout_p=0.5, is_causal=True)


def test_fast_dropout_routes_modules_and_restores_torch() -> None:
    layer = torch.nn.Dropout(0.25)
    x = torch.randn(1000)
    with cpu_step.fast_dropout():
        assert F.dropout is cpu_step.dropout and F.scaled_dot_product_attention is cpu_step.attention
        torch.manual_seed(5)
        through_module = layer(x)
    torch.manual_seed(5)
    assert torch.equal(through_module, cpu_step.dropout(x, 0.25))
    with pytest.raises(ValueError), cpu_step.fast_dropout():
        raise ValueError
    assert F.dropout is cpu_step._TORCH_DROPOUT
    assert F.scaled_dot_product_attention is cpu_step._TORCH_ATTENTION


def test_fuse_tanh_gelu_keeps_the_function_and_the_saved_model() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.activations import GELUTanh

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_layer=2, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 50, (2, 16))
    before, keys = model(input_ids=ids).logits, set(model.state_dict())
    assert cpu_step.fuse_tanh_gelu(model) == 2
    assert all(isinstance(block.mlp.act, GELUTanh) for block in model.transformer.h)
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-5)
    assert set(model.state_dict()) == keys and model.config.activation_function == "gelu_new"
    assert cpu_step.fuse_tanh_gelu(model) == 0
