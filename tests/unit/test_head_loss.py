"""The blockwise language-model-head cross-entropy (train/speed/head_loss.py): the same loss and gradients as the
model's own, through each task's targets, and the plain path where a model does more after its head."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from nlpjobs.tasks import get_task
from nlpjobs.train.speed import head_loss
from nlpjobs.train.speed.head_loss import HeadLoss, linear_cross_entropy


def _head_inputs(bias: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, ...]:
    """(hidden [200, 12], weight [40, 12], bias or None, targets with every 7th ignored), in 64-row blocks."""
    monkeypatch.setattr(head_loss, "BLOCK_BYTES", 64 * 40 * 4)  # 64-row blocks: 3 full ones and a short one
    torch.manual_seed(0)
    hidden = torch.randn(200, 12, requires_grad=True)
    weight = torch.randn(40, 12, requires_grad=True)
    b = torch.randn(40, requires_grad=True) if bias else None
    targets = torch.randint(0, 40, (200,))
    targets[::7] = -100
    return hidden, weight, b, targets


@pytest.mark.parametrize("bias", [False, True])
def test_blocks_give_the_loss_and_gradients_of_cross_entropy(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, b, targets = _head_inputs(bias, monkeypatch)
    assert head_loss.block_rows(40, 12) == 64 and head_loss.block_rows(40, 100) == 200
    expected = F.cross_entropy(F.linear(hidden, weight, b), targets)
    want = torch.autograd.grad(expected * 3, [t for t in (hidden, weight, b) if t is not None])
    got = linear_cross_entropy(hidden, weight, b, targets)
    grads = torch.autograd.grad(got * 3, [t for t in (hidden, weight, b) if t is not None])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    for g, w in zip(grads, want, strict=True):
        assert torch.allclose(g, w, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_blocks_are_autocasts_linear_then_an_fp32_loss(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 mixed precision the model's head is autocast's linear (bf16 products, bf16 logits) and
    transformers' loss upcasts the logits: the blocks give that loss and those gradients, not fp32 ones."""
    hidden, weight, b, targets = _head_inputs(bias, monkeypatch)
    params = [t for t in (hidden, weight, b) if t is not None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight, b)
    assert logits.dtype == torch.bfloat16
    expected = F.cross_entropy(logits.float(), targets)
    want = torch.autograd.grad(expected, params)
    fp32 = torch.autograd.grad(F.cross_entropy(F.linear(hidden, weight, b), targets), params)
    got = linear_cross_entropy(hidden, weight, b, targets, torch.bfloat16)
    grads = torch.autograd.grad(got, params)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(grads[0], want[0]) and not torch.allclose(fp32[0], want[0], rtol=0, atol=1e-5)
    for g, w in zip(grads[1:], want[1:], strict=True):  # summed over blocks in fp32, autocast's once in bf16
        assert g.dtype == torch.float32 and float((g - w).abs().max()) < 2**-7 * float(w.abs().max())
    with torch.no_grad():  # the first batch's check takes this path
        assert linear_cross_entropy(hidden, weight, b, targets, torch.bfloat16).item() == pytest.approx(
            expected.item(), rel=1e-6)


def test_no_target_is_nan_as_the_models_loss() -> None:
    hidden, weight = torch.randn(4, 3, requires_grad=True), torch.randn(5, 3)
    targets = torch.full((4,), -100)
    assert F.cross_entropy(hidden @ weight.T, targets).isnan()
    assert linear_cross_entropy(hidden, weight, None, targets).isnan()  # the engine's sentinel stops on it


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_layer=2, n_head=2, n_embd=16, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).train()


def _same_loss_and_gradients(model: Any, task: Any, batch: dict[str, Any]) -> HeadLoss:
    loss = HeadLoss.create(model, task.head_batch, task.loss)
    assert loss is not None
    got = loss(model, batch)
    assert loss.checked is True and got is not None and model.training
    got.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    expected = task.loss(model, batch)
    expected.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    theirs = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys() and ours
    for name, grad in theirs.items():
        assert torch.allclose(ours[name], grad, atol=1e-5), name
    return loss


def test_clm_targets_are_the_models_shifted_labels() -> None:
    model, task = _gpt2(), get_task("clm")
    task.keytoken_ids = None
    ids = torch.randint(1, 64, (3, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # as ClmCollator pads: labels -100 where the attention mask is 0, ignored by both
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    _same_loss_and_gradients(model, task, batch)
    task.keytoken_ids = [5]  # the key-token-weighted loss is not the head's plain cross-entropy
    assert task.head_batch(batch) is None


def _seq2seq_batch(model: Any, vocab: int) -> dict[str, Any]:
    labels = torch.randint(2, vocab, (3, 7))
    labels[0, 5:] = -100
    return {"input_ids": torch.randint(2, vocab, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long),
            "labels": labels, "decoder_input_ids": model.prepare_decoder_input_ids_from_labels(labels=labels)}


def test_seq2seq_targets_are_the_labels() -> None:
    from transformers import MT5Config, MT5ForConditionalGeneration

    torch.manual_seed(0)
    model = MT5ForConditionalGeneration(MT5Config(
        vocab_size=48, d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1,
        dropout_rate=0.0, decoder_start_token_id=0)).train()
    _same_loss_and_gradients(model, get_task("summarization"), _seq2seq_batch(model, 48))


def test_marians_final_logits_bias_is_part_of_the_head() -> None:
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    model = MarianMTModel(MarianConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, pad_token_id=1, dropout=0.0,
        decoder_start_token_id=1, max_position_embeddings=16)).train()
    model.final_logits_bias.normal_()  # added after lm_head (zeros in a fresh model: made to count here)
    bias = model.final_logits_bias
    _same_loss_and_gradients(model, get_task("translation"), _seq2seq_batch(model, 40))
    assert model.final_logits_bias is bias and isinstance(model.lm_head, torch.nn.Linear)  # restored


def test_a_transformation_after_the_head_keeps_the_plain_path() -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(  # soft-caps its logits after lm_head
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, final_logit_softcapping=0.5)).train()
    task = get_task("clm")
    task.keytoken_ids = None
    ids = torch.randint(1, 64, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    reports: list[str] = []
    loss = HeadLoss.create(model, task.head_batch, task.loss, report=reports.append)
    assert loss is not None and loss(model, batch) is None
    assert loss.checked is False and "not used" in reports[0] and model.training
    assert loss(model, batch) is None and len(reports) == 1  # decided once


def test_models_without_a_linear_head_have_none() -> None:
    from transformers import BertConfig, BertForTokenClassification

    model = BertForTokenClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                  num_attention_heads=2, intermediate_size=16))
    assert HeadLoss.create(model, get_task("ner").head_batch, get_task("ner").loss) is None
