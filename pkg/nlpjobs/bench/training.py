"""Training throughput: the nlpjobs engine (``nlpjobs train``) against the course recipe (``Trainer`` with the
course's collator and hyperparameters) on the same model, the same preprocessed data and the same batch size,
plus model-FLOPs utilisation against the fp32 matmul peak measured in the same run.

Both engines are timed the same way, from outside: a global optimizer-step hook stamps every optimizer step
and a wrapper around the collator counts each batch's real (non-pad) tokens and samples. Throughput covers
steps 2..N (the first step, with its one-off allocations, and everything before and after the loop -- model
loading, checkpoints, export -- are excluded). The metric beside it comes from evaluating each trained model
on the same eval split afterwards (untimed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nlpjobs.bench.common import Sizes, load_preset, log
from nlpjobs.bench.records import Sample

COURSE_LR = 2e-5
COURSE_WEIGHT_DECAY = 0.01
"""SPEC §1.5: the course's Trainer hyperparameters (linear schedule, no warmup, AdamW)."""


@dataclass
class Meter:
    """Optimizer-step times and per-batch real tokens / samples, in the order the loop consumed them."""

    steps: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)

    def throughput(self, total_steps: int) -> tuple[float, float, float]:
        """(real tokens/s, samples/s, seconds) over steps 2..``total_steps`` (one batch per step)."""
        if len(self.steps) < total_steps or len(self.tokens) < total_steps or total_steps < 2:
            raise RuntimeError(f"measured {len(self.steps)} optimizer steps and {len(self.tokens)} batches; "
                               f"expected {total_steps} of each (and at least 2)")
        seconds = self.steps[total_steps - 1] - self.steps[0]
        return (sum(self.tokens[1:total_steps]) / seconds, sum(self.samples[1:total_steps]) / seconds, seconds)


class CountingCollator:
    """Wraps a collator; records each batch's non-pad tokens (attention_mask sum) and rows."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any], meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.inner(features)
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else int(np.prod(batch["input_ids"].shape))
        self.meter.tokens.append(real)
        self.meter.samples.append(int(batch["input_ids"].shape[0]))
        return batch


@contextlib.contextmanager
def step_clock(meter: Meter) -> Iterator[None]:
    """Stamp every optimizer step of any torch optimizer while active."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(lambda *_: meter.steps.append(time.perf_counter()))
    try:
        yield
    finally:
        handle.remove()


def matmul_params(model: Any) -> int:
    """Parameters that take part in matrix multiplies: all but embedding tables (a lookup is no matmul)."""
    import torch

    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def mfu(tokens_per_s: float, params: int, peak_gflops: float) -> float:
    """Model-FLOPs utilisation in %: 6 · params · tokens/s (forward + backward) over the measured peak."""
    return 100.0 * 6.0 * params * tokens_per_s / (peak_gflops * 1e9)


# ---- the course's Trainer recipe (NER, SPEC §1.4, §1.5, §1.7) -------------------------------------


def course_ner_compute_metrics(label_names: list[str]) -> Callable[[Any], dict[str, float]]:
    """SPEC §1.7 (L527-618): argmax, drop -100 positions, names, seqeval (predictions, references in order)."""
    from nlpjobs.metrics import load_metric

    metric = load_metric("seqeval")

    def compute_metrics(eval_preds: Any) -> dict[str, float]:
        logits, labels = eval_preds
        predictions = np.argmax(logits, axis=-1)
        # Remove ignored index (special tokens) and convert to labels
        true_labels = [[label_names[lab] for lab in label if lab != -100] for label in labels]
        true_predictions = [
            [label_names[p] for (p, lab) in zip(prediction, label) if lab != -100]
            for prediction, label in zip(predictions, labels)
        ]
        all_metrics = metric.compute(predictions=true_predictions, references=true_labels)
        return {
            "precision": all_metrics["overall_precision"],
            "recall": all_metrics["overall_recall"],
            "f1": all_metrics["overall_f1"],
            "accuracy": all_metrics["overall_accuracy"],
        }

    return compute_metrics


def run_course_trainer(job: Any, manifest: Any, steps: int, batch_size: int, out_dir: Path,
                       meter: Meter) -> tuple[float, float]:
    """The course's Trainer (SPEC §1.5) on nlpjobs' preprocessed splits for ``steps`` steps; its eval
    (overall F1, overall accuracy)."""
    from transformers import (
        AutoModelForTokenClassification,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.models import resolve_model

    names = manifest.info["label_names"]
    tokenizer = load_tokenizer(manifest)
    id2label = dict(enumerate(names))
    label2id = {v: k for k, v in id2label.items()}
    model = AutoModelForTokenClassification.from_pretrained(resolve_model(job.model.name), id2label=id2label,
                                                            label2id=label2id)
    assert model.config.num_labels == len(names)
    data_collator = CountingCollator(DataCollatorForTokenClassification(tokenizer=tokenizer), meter)
    args = TrainingArguments(
        str(out_dir),
        eval_strategy="no",  # the course evaluates and saves every epoch; here once, after the timed steps
        save_strategy="no",
        learning_rate=job.train.learning_rate,
        weight_decay=job.train.weight_decay,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=job.evaluate.batch_size,
        seed=job.train.seed,
        push_to_hub=False,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=load_split(manifest, "train"),
                      eval_dataset=load_split(manifest, "eval"), data_collator=data_collator,
                      compute_metrics=course_ner_compute_metrics(names), processing_class=tokenizer)
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its summaries; stdout is the table's
        with step_clock(meter):
            trainer.train()
        data_collator.meter = Meter()  # evaluation batches are not training batches
        metrics = trainer.evaluate()
    return float(metrics["eval_f1"]), float(metrics["eval_accuracy"])


# ---- nlpjobs ------------------------------------------------------------------------------------


def run_nlpjobs(job: Any, steps: int, meter: Meter) -> tuple[float, float]:
    """``nlpjobs train`` (the engine) for ``steps`` steps, then ``nlpjobs evaluate``; its eval
    (overall F1, overall accuracy)."""
    from unittest import mock

    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import evaluate_saved, train

    task_cls = type(get_task(job.task))
    original = task_cls.collator

    def counting(self: Any, tokenizer: Any, model: Any) -> Any:
        return CountingCollator(original(self, tokenizer, model), meter)

    with mock.patch.object(task_cls, "collator", counting), step_clock(meter):
        result = train(job, show_progress=False)
    if result.steps != steps:
        raise RuntimeError(f"nlpjobs trained {result.steps} steps, asked for {steps}")
    metrics = evaluate_saved(job, show_progress=False)
    return float(metrics["overall_f1"]), float(metrics["overall_accuracy"])


def _preprocessed(sizes: Sizes, store: Path) -> tuple[Any, Any]:
    """The NER preset on ``sizes`` examples, with the course's hyperparameters (learning rate from
    ``sizes.learning_rate`` when set), preprocessed once."""
    from nlpjobs import stages

    job = load_preset("ner", [f"storage=file://{store}", f"data.max_train_examples={sizes.train_examples}",
                              f"data.max_eval_examples={sizes.eval_examples}",
                              f"train.batch_size={sizes.train_batch_size}", f"train.max_steps={sizes.train_steps}",
                              f"train.learning_rate={sizes.learning_rate or COURSE_LR}",
                              f"train.weight_decay={COURSE_WEIGHT_DECAY}",
                              "train.warmup_steps=0", "train.scheduler=linear", "train.eval_every=never",
                              "train.save_every=never"])
    result = stages.preprocess(job)
    return job, result.manifest


def measure(sizes: Sizes, scratch: Path, peak_gflops: float | None) -> list[Sample]:
    """``sizes.repeats`` runs of each engine (alternating which goes first); tokens/s, samples/s, MFU."""
    import datasets

    from nlpjobs import storage

    datasets.disable_progress_bars()
    store = scratch / "train-store"
    job, manifest = _preprocessed(sizes, store)
    steps = sizes.train_steps
    log(f"ner training: MiniLM-L6, {manifest.rows('train'):,} train / {manifest.rows('eval'):,} eval sentences, "
        f"batch {sizes.train_batch_size}, {steps} steps per run (steps 2..{steps} timed), lr {job.train.learning_rate:g}, "
        f"{sizes.repeats} repeat(s) per engine")
    params: int | None = None
    samples: list[Sample] = []
    for r in range(sizes.repeats):
        results: dict[str, tuple[float, float, float, tuple[float, float]]] = {}
        for engine in (("nlpjobs", "course") if r % 2 == 0 else ("course", "nlpjobs")):
            meter = Meter()
            if engine == "nlpjobs":
                run_job = dataclasses.replace(job, name=f"bench-ner-{uuid.uuid4().hex[:8]}")
                try:
                    scores = run_nlpjobs(run_job, steps, meter)
                finally:
                    shutil.rmtree(store / "runs" / run_job.name, ignore_errors=True)
                    shutil.rmtree(storage.cache_dir() / "scratch" / run_job.name, ignore_errors=True)
            else:
                out = scratch / f"trainer-{uuid.uuid4().hex[:8]}"
                try:
                    scores = run_course_trainer(job, manifest, steps, sizes.train_batch_size, out, meter)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
            results[engine] = (*meter.throughput(steps), scores)
            tok, smp, sec, _ = results[engine]
            log(f"ner training repeat {r + 1}/{sizes.repeats}: {engine}: {tok:,.0f} real tokens/s, {smp:.1f} samples/s "
                f"({steps - 1} steps in {sec:.1f}s), eval F1 {scores[0]:.4f}, accuracy {scores[1]:.4f}")
        if params is None:
            from transformers import AutoConfig, AutoModelForTokenClassification

            from nlpjobs.models import resolve_model

            config = AutoConfig.from_pretrained(resolve_model(job.model.name),
                                                num_labels=len(manifest.info["label_names"]))
            params = matmul_params(AutoModelForTokenClassification.from_config(config))
        metric = {"name": "eval seqeval overall_f1", "nlpjobs": results["nlpjobs"][3][0],
                  "baseline": results["course"][3][0], "nlpjobs accuracy": results["nlpjobs"][3][1],
                  "baseline accuracy": results["course"][3][1]}
        note = (f"same data, model, batch {sizes.train_batch_size}, lr {job.train.learning_rate:g}, weight decay "
                f"{COURSE_WEIGHT_DECAY}, linear schedule; {steps} steps (metric after {steps} steps only)")
        samples += [
            Sample("ner", "train real tokens/s vs course Trainer", "tokens/s", results["nlpjobs"][0],
                   results["course"][0], True, metric=metric, note=note),
            Sample("ner", "train samples/s vs course Trainer", "samples/s", results["nlpjobs"][1],
                   results["course"][1], True, metric=metric),
        ]
        if peak_gflops:
            samples.append(Sample("ner", "train MFU vs course Trainer", "% of fp32 matmul peak",
                                  mfu(results["nlpjobs"][0], params, peak_gflops),
                                  mfu(results["course"][0], params, peak_gflops), True, metric=metric,
                                  note=f"6 x {params / 1e6:.1f}M matmul parameters (embeddings excluded) x real "
                                       f"tokens/s / measured peak {peak_gflops:,.1f} GFLOP/s"))
    shutil.rmtree(store, ignore_errors=True)
    return samples
