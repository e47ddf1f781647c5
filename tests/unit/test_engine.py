"""The shared loop: scheduler sized in optimizer steps under accumulation, weight-decay groups, run checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, BertModel

from nlpjobs.config import ConfigError
from nlpjobs.jobfile import load_job
from nlpjobs.models import resolve_model
from nlpjobs.stages import preprocess, train
from nlpjobs.train.engine import _window, grouped_parameters

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with MiniLM's (uncased WordPiece) tokenizer: fast enough for loop tests."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)  # a base encoder: the head starts fresh
    AutoTokenizer.from_pretrained(resolve_model("offline:minilm")).save_pretrained(folder)
    return folder


def small_job(tmp_path: Path, model: Path, *extra: str):  # noqa: ANN201
    return load_job(ROOT / "jobs/local/ner.yaml", [
        f"storage=file://{tmp_path}", f"model.name={model}", "data.max_train_examples=40",
        "data.max_eval_examples=8", "train.batch_size=4", "train.log_every=1", "train.save_every=never",
        "train.eval_every=never", "train.warmup_steps=0", *extra])


def test_scheduler_counts_optimizer_steps_with_accumulation(tmp_path: Path, tiny_model: Path) -> None:
    job = small_job(tmp_path, tiny_model, "train.grad_accum=3", "train.epochs=2", "name=ga")
    preprocess(job)
    result = train(job, show_progress=False)
    # 40 rows / batch 4 = 10 micro-batches per epoch -> ceil(10 / 3) = 4 optimizer steps per epoch.
    assert result.history["steps_per_epoch"] == 4 and result.total_steps == 8 and result.steps == 8
    lrs = [p["lr"] for p in result.history["train_loss"]]
    assert len(lrs) == 8
    assert lrs[0] == pytest.approx(job.train.learning_rate * 7 / 8)
    assert lrs[-1] == pytest.approx(0.0)  # linear decay reaches 0 exactly at the last optimizer step
    assert result.history["effective_batch"] == 12


def test_changed_recipe_is_not_resumed(tmp_path: Path, tiny_model: Path) -> None:
    job = small_job(tmp_path, tiny_model, "train.max_steps=2", "name=same")
    preprocess(job)
    train(job, show_progress=False)
    assert train(job, show_progress=False).already_done
    changed = small_job(tmp_path, tiny_model, "train.max_steps=2", "train.learning_rate=1e-3", "name=same")
    with pytest.raises(ConfigError, match="different train settings"):
        train(changed, show_progress=False)


def test_weight_decay_groups_exclude_biases_and_norms(tiny_model: Path) -> None:
    model = BertForTokenClassification.from_pretrained(tiny_model)
    decay, no_decay = grouped_parameters(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "bert.embeddings.LayerNorm.weight" in skipped and "classifier.bias" in skipped
    assert all(n.endswith(("bias", "LayerNorm.weight")) for n in skipped)
    assert "classifier.weight" in {names[id(p)] for p in decay["params"]}


def test_last_accumulation_window_may_be_short() -> None:
    assert [_window(done, 10, 4) for done in (0, 4, 8)] == [4, 4, 2]


def test_the_allocator_and_precision_are_reported_on_the_cpu_only(tmp_path: Path, tiny_model: Path) -> None:
    from types import SimpleNamespace

    from nlpjobs.tasks import get_task
    from nlpjobs.train import speed
    from nlpjobs.train.speed.allocator import report
    from nlpjobs.train.speed.precision import cpu_advice

    job = small_job(tmp_path, tiny_model, "train.cpu_kernels=false")
    task = get_task("ner")
    bert = BertForTokenClassification.from_pretrained(tiny_model)
    printed: list[str] = []
    cpu = SimpleNamespace(device=torch.device("cpu"), mixed_precision="fp16", print=printed.append)
    speed.prepare(job, cpu, bert, task.loss, task.head_batch)
    assert printed == [f"allocator: {report()}", cpu_advice("fp16")]
    gpu = SimpleNamespace(device=torch.device("cuda", 0), mixed_precision="fp16", print=printed.append)
    step = speed.prepare(job, gpu, bert, task.loss, task.head_batch)
    assert len(printed) == 2 and not step.kernels and step.head_loss is None


def test_cpu_kernels_follow_the_setting(tmp_path: Path, tiny_model: Path) -> None:
    import dataclasses
    from types import SimpleNamespace

    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from nlpjobs.tasks import get_task
    from nlpjobs.train import speed
    from nlpjobs.train.speed import kernels as cpu_step

    def prepared(job: Any, acc: Any, task: str, model: Any) -> speed.StepLoss:
        return speed.prepare(job, acc, model, get_task(task).loss, get_task(task).head_batch)

    def plain(step: speed.StepLoss) -> bool:
        return not step.kernels and step.head_loss is None

    job = small_job(tmp_path, tiny_model, "train.max_steps=2", "name=kernels")
    printed: list[str] = []
    acc = SimpleNamespace(device=torch.device("cpu"), mixed_precision="no", print=printed.append)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=8, n_layer=1, n_head=2, n_embd=8))
    step = prepared(job, acc, "clm", gpt2)
    assert step.kernels and step.head_loss is not None and "1 one-kernel tanh-GELU" in printed[0]
    bert = BertForTokenClassification.from_pretrained(tiny_model)
    step = prepared(job, acc, "ner", bert)
    assert step.kernels and step.head_loss is None  # a classification head: nothing to fuse
    off = dataclasses.replace(job, train=dataclasses.replace(job.train, cpu_kernels=False))
    deepspeed = dataclasses.replace(job, deepspeed=dataclasses.replace(job.deepspeed, enabled=True))
    for other_job, other_acc in ((off, acc), (job, SimpleNamespace(**{**vars(acc), "mixed_precision": "fp16"}))):
        assert plain(prepared(other_job, other_acc, "clm", gpt2))
    assert prepared(job, acc, "clm", gpt2).head_loss.dtype is None  # fp32: the products in the tensors' precision
    step = prepared(job, SimpleNamespace(**{**vars(acc), "mixed_precision": "bf16"}), "clm", gpt2)
    assert step.kernels and step.head_loss is not None and step.head_loss.dtype == torch.bfloat16
    # DeepSpeed: the same dropout as DDP (its test compares the two), the head's weight left to ZeRO
    step = prepared(deepspeed, acc, "clm", gpt2)
    assert step.kernels and step.head_loss is None
    gpt2.gradient_checkpointing_enable()  # recomputed forwards would draw torch's masks, not these
    assert plain(prepared(job, acc, "clm", gpt2))
    preprocess(job)
    assert train(job, show_progress=False).steps == 2
    assert F.dropout is cpu_step._TORCH_DROPOUT and F.scaled_dot_product_attention is cpu_step._TORCH_ATTENTION


def test_optimizer_offload_without_a_compiler_is_refused_before_training(tmp_path: Path, tiny_model: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed compiles its CPU Adam op at first use; where no compiler exists (the images), offload is
    refused up front with the fix, not as a build error minutes into training."""
    from deepspeed import git_version_info

    from nlpjobs.train.engine import check_cpu_adam_buildable, deepspeed_plugin

    monkeypatch.setitem(git_version_info.installed_ops, "cpu_adam", False)
    monkeypatch.setenv("CXX", "no-such-compiler")
    job = small_job(tmp_path, tiny_model, "deepspeed.enabled=true", "deepspeed.zero_stage=2",
                    "deepspeed.offload_optimizer=true")
    with pytest.raises(ConfigError, match=r"deepspeed.offload_optimizer: .*'no-such-compiler' is not on PATH"):
        deepspeed_plugin(job)
    monkeypatch.setitem(git_version_info.installed_ops, "cpu_adam", True)  # prebuilt: nothing to compile
    check_cpu_adam_buildable()
