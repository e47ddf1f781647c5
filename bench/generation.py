"""Seq2seq evaluation throughput: ``nlpjobs evaluate`` (generation, eval loss, decoding, metric) against the
course recipe (``Seq2SeqTrainer(..., predict_with_generate=True).evaluate(max_length=..., num_beams=...)``
with the course's ``compute_metrics``) on the same model, the same preprocessed eval
split, the same batch size and the same generation settings.

The model: the task's offline preset preprocessed into a scratch file:// store and trained for
``sizes.train_steps`` steps with nlpjobs (inside the preset's warmup: near its random init, so generation
mostly runs to max_length); both engines load the exported model folder. Timed, for both:
the evaluation call alone (generation, the loss forward pass both engines do, gathering, decoding and
the metric). Not timed: model and data loading, the Trainer / Accelerator setup, nlpjobs' metrics report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Sizes, load_preset, log
from bench.records import Sample, scores_metric

TASKS = ("translation", "summarization")
FIGURE = "eval generation examples/s vs course Seq2SeqTrainer"
TOKENS_FIGURE = "eval generated tokens/s vs course Seq2SeqTrainer"


@dataclass
class EvalRun:
    """One timed evaluation: seconds, examples, decoding steps, scores, decoded predictions."""

    seconds: float
    examples: int
    tokens: int
    scores: dict[str, float]
    predictions: list[str]


# ---- the course's compute_metrics, as the course wrote them ----------------------


def course_translation_compute_metrics(tokenizer: Any) -> Callable[[Any], dict[str, float]]:
    """``evaluate.load("sacrebleu")`` is the project's offline copy of that module."""
    from nlpjobs.metrics import load_metric

    metric = load_metric("sacrebleu")

    def compute_metrics(eval_preds: Any) -> dict[str, float]:
        preds, labels = eval_preds
        # In case the model returns more than the prediction logits
        if isinstance(preds, tuple):
            preds = preds[0]

        decoded_preds = tokenizer.batch_decode(preds, skip_special_tokens=True)

        # Replace -100s in the labels as we can't decode them
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)

        # Some simple post-processing
        decoded_preds = [pred.strip() for pred in decoded_preds]
        decoded_labels = [[label.strip()] for label in decoded_labels]

        result = metric.compute(predictions=decoded_preds, references=decoded_labels)
        return {"bleu": result["score"]}

    return compute_metrics


def sent_tokenize(text: str) -> list[str]:
    """Stand-in for ``nltk.sent_tokenize`` (English punkt, a download): the project's offline English splitter."""
    from nlpjobs.text.sentences import split_sentences

    return split_sentences(text, "en")


def course_summarization_compute_metrics(tokenizer: Any) -> Callable[[Any], dict[str, float]]:
    """Two forced substitutions: ``sent_tokenize`` (above), and the rouge module
    returns the mid F-measure as a float (the course's ``value.mid.fmeasure`` is the old API's)."""
    from nlpjobs.metrics import load_metric

    rouge_score = load_metric("rouge")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred
        # Decode generated summaries into text
        decoded_preds = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        # Replace -100 in the labels as we can't decode them
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        # Decode reference summaries into text
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        # ROUGE expects a newline after each sentence
        decoded_preds = ["\n".join(sent_tokenize(pred.strip())) for pred in decoded_preds]
        decoded_labels = ["\n".join(sent_tokenize(label.strip())) for label in decoded_labels]
        # Compute ROUGE scores
        result = rouge_score.compute(predictions=decoded_preds, references=decoded_labels, use_stemmer=True)
        # Extract the median scores
        result = {key: value * 100 for key, value in result.items()}
        return {k: round(v, 4) for k, v in result.items()}

    return compute_metrics


COURSE_METRICS: dict[str, Callable[[Any], Callable[[Any], dict[str, float]]]] = {
    "translation": course_translation_compute_metrics,
    "summarization": course_summarization_compute_metrics,
}
SCORE_KEYS = {"translation": ("bleu",), "summarization": ("rouge1", "rougeLsum")}


def generated_tokens(rows: Any, eos: int) -> int:
    """Decoding steps: per generated row (decoder start first), the tokens up to and including the first EOS,
    or all of them without one; the padding after EOS, in either engine's layout, is not counted."""
    total = 0
    for row in rows:
        ids = np.asarray(row)[1:]
        hits = np.flatnonzero(ids == eos)
        total += int(hits[0]) + 1 if hits.size else len(ids)
    return total


# ---- the two engines ----------------------------------------------------------------------------


def run_course(job: Any, manifest: Any, model_dir: Path, out_dir: Path) -> EvalRun:
    """``Seq2SeqTrainer.evaluate(max_length=..., num_beams=...)`` with the course's compute_metrics, timed."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    from bench.machine import device
    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import model_inputs

    tokenizer = load_tokenizer(manifest)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    eval_ds = model_inputs(get_task(job.task), load_split(manifest, "eval"))
    seen: dict[str, Any] = {}
    course = COURSE_METRICS[job.task](tokenizer)

    def compute_metrics(eval_preds: Any) -> dict[str, float]:
        seen["preds"] = eval_preds[0]  # kept for the token count and the comparison, after the clock
        return course(eval_preds)

    args = Seq2SeqTrainingArguments(str(out_dir), per_device_eval_batch_size=job.evaluate.batch_size,
                                    predict_with_generate=True, report_to=[], disable_tqdm=True,
                                    logging_strategy="no", save_strategy="no", use_cpu=device() != "cuda")
    trainer = Seq2SeqTrainer(model=model, args=args, eval_dataset=eval_ds,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                             processing_class=tokenizer, compute_metrics=compute_metrics)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the table's
        start = time.perf_counter()
        metrics = trainer.evaluate(max_length=job.evaluate.generation_max_length, num_beams=job.evaluate.num_beams)
        seconds = time.perf_counter() - start
    preds = seen["preds"]
    decoded = [p.strip() for p in tokenizer.batch_decode(preds, skip_special_tokens=True)]
    scores = {k: float(metrics[f"eval_{k}"]) for k in SCORE_KEYS[job.task]}
    return EvalRun(seconds, len(eval_ds), generated_tokens(preds, tokenizer.eos_token_id), scores, decoded)


def run_nlpjobs(job: Any) -> EvalRun:
    """``nlpjobs evaluate`` (``nlpjobs.stages.evaluate``) with its ``task.evaluate`` call timed from outside, less the
    lead-N baseline summarization scores beside the model (the course scores it in a separate step, §4.5)."""
    from unittest import mock

    from nlpjobs.stages import evaluate as evaluate_saved
    from nlpjobs.tasks import evaluation as evalloop
    from nlpjobs.tasks import get_task, summarization

    task_cls = type(get_task(job.task))
    evaluate, generate, collect = task_cls.evaluate, task_cls.generate_and_score, evalloop.collect
    lead_baseline = summarization.lead_baseline
    seen: dict[str, Any] = {"lead_seconds": 0.0}

    def timed_lead(*args: Any, **kwargs: Any) -> dict[str, float]:
        start = time.perf_counter()
        out = lead_baseline(*args, **kwargs)
        seen["lead_seconds"] += time.perf_counter() - start
        return out

    def timed_evaluate(self: Any, ctx: Any, model: Any, loader: Any) -> dict[str, Any]:
        start = time.perf_counter()
        out = evaluate(self, ctx, model, loader)
        seen["seconds"] = time.perf_counter() - start
        return out

    def keep_outputs(self: Any, ctx: Any, model: Any, loader: Any) -> dict[str, Any]:
        seen["out"] = out = generate(self, ctx, model, loader)
        seen["eos"] = ctx.tokenizer.eos_token_id
        return out

    def keep_rows(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen["rows"] = rows = collect(*args, **kwargs)
        return rows

    with (mock.patch.object(task_cls, "evaluate", timed_evaluate),
          mock.patch.object(task_cls, "generate_and_score", keep_outputs),
          mock.patch.object(evalloop, "collect", keep_rows),
          mock.patch.object(summarization, "lead_baseline", timed_lead)):
        metrics = evaluate_saved(job, show_progress=False)
    out = seen["out"]
    return EvalRun(seen["seconds"] - seen["lead_seconds"], int(out["examples"]), generated_tokens(seen["rows"]["pred"], seen["eos"]),
                   {k: float(metrics[k]) for k in SCORE_KEYS[job.task]}, list(out["predictions"]))


# ---- the figure ----------------------------------------------------------------------------------


def overrides(task: str, sizes: Sizes, store: Path) -> list[str]:
    """Preset overrides: scratch store, eval size, a short training without evaluation or checkpoints.

    The preset's schedule is kept: a few steps inside its warmup leave the model near its random init, so
    it rarely emits EOS and generation runs to max_length (a few steps at the full rate would teach it to
    emit EOS first, and the figure would time one decoding step)."""
    n = sizes.generation_examples
    common = [f"storage=file://{store}", f"train.max_steps={sizes.train_steps}", "train.eval_every=never",
              "train.save_every=never", "train.eval_before_training=false"]
    if task == "translation":  # the eval split is 10% carved out of train, then its first n pairs
        return [*common, f"data.max_train_examples={max(sizes.train_examples, 12 * n)}",
                f"data.max_eval_examples={n}"]
    return [*common, f"data.max_train_examples={sizes.train_examples}", f"preprocess.eval_sample={n}"]


def trained_model(job: Any) -> tuple[Any, Path]:
    """(manifest, exported model folder): the job preprocessed and trained with nlpjobs."""
    from nlpjobs import stages
    from nlpjobs.stages import fetch_model, train

    manifest = stages.preprocess(job).manifest
    with contextlib.redirect_stdout(sys.stderr):
        train(job, show_progress=False)
    return manifest, fetch_model(job)


def compare(task: str, nl: EvalRun, course: EvalRun) -> dict[str, Any]:
    """The Sample metric: both engines' scores and how many predictions differ."""
    differ = sum(a != b for a, b in zip(nl.predictions, course.predictions))
    differ += abs(len(nl.predictions) - len(course.predictions))
    name = "eval sacreBLEU" if task == "translation" else "eval ROUGE-1 F×100"
    metric = scores_metric(name, SCORE_KEYS[task], nl.scores, course.scores)
    metric["generated tokens/example"] = nl.tokens / nl.examples
    metric["differing predictions"] = differ
    return metric


def note(task: str, job: Any, examples: int) -> str:
    cfg = job.evaluate
    text = (f"model: the {job.model.name} preset after {job.train.max_steps} nlpjobs steps of its warmup (near "
            "random: scores ~0, generation mostly runs to max_length), loaded by both; "
            f"{examples} eval examples, batch {cfg.batch_size}, num_beams {cfg.num_beams}, max_length "
            f"{cfg.generation_max_length}; timed: the evaluate call (generate + loss forward + decode + metric), "
            "not model/data loading or Trainer/Accelerator setup; tokens = decoding steps up to the first EOS")
    if task == "summarization":
        text += ("; course compute_metrics with the offline English splitter for nltk.sent_tokenize "
                 "(nlpjobs splits per language) and the float rouge API for value.mid.fmeasure; nlpjobs' "
                 "evaluate also scores the lead-3 baseline on the same rows, left out of its time (the course "
                 "scores it in a separate step)")
    return text


def measure(task: str, sizes: Sizes, scratch: Path) -> list[Sample]:
    """``sizes.repeats`` evaluations per engine (alternating which goes first) of one trained model."""
    import datasets

    from bench.machine import check_one_gpu
    from nlpjobs import storage
    from nlpjobs.metrics import load_metric

    check_one_gpu(f"{task} generation")
    datasets.disable_progress_bars()
    store = scratch / f"gen-store-{task}"
    job = load_preset(task, overrides(task, sizes, store))
    job = dataclasses.replace(job, name=f"bench-gen-{task}-{uuid.uuid4().hex[:8]}")
    try:
        manifest, model_dir = trained_model(job)
        load_metric("sacrebleu" if task == "translation" else "rouge")  # loaded once per process, not timed
        if task == "summarization":
            from nlpjobs.tasks.summarization import ROUGE_BOOTSTRAP_SEED

            load_metric("rouge", seed=ROUGE_BOOTSTRAP_SEED)  # the seeded module nlpjobs' ROUGE uses
        log(f"{task} generation: {job.model.name} after {job.train.max_steps} steps, {manifest.rows('eval'):,} eval "
            f"examples, batch {job.evaluate.batch_size}, beams {job.evaluate.num_beams}, max_length "
            f"{job.evaluate.generation_max_length}, {sizes.repeats} repeat(s) per engine")
        samples = []
        for r in range(sizes.repeats):
            runs = {engine: run_engine(engine, job, manifest, model_dir, scratch)
                    for engine in (("nlpjobs", "course") if r % 2 == 0 else ("course", "nlpjobs"))}
            for engine, e in runs.items():
                log(f"{task} generation repeat {r + 1}/{sizes.repeats}: {engine}: {e.examples / e.seconds:.1f} "
                    f"examples/s, {e.tokens / e.seconds:,.0f} tokens/s ({e.seconds:.2f}s), {e.scores}, first "
                    f"prediction {e.predictions[0][:60]!r}")
            samples += samples_of(task, job, runs["nlpjobs"], runs["course"])
        return samples
    finally:
        shutil.rmtree(storage.cache_dir() / "scratch" / job.name, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)


def run_engine(engine: str, job: Any, manifest: Any, model_dir: Path, scratch: Path) -> EvalRun:
    if engine == "nlpjobs":
        return run_nlpjobs(job)
    out = scratch / f"seq2seq-trainer-{uuid.uuid4().hex[:8]}"
    try:
        return run_course(job, manifest, model_dir, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def samples_of(task: str, job: Any, nl: EvalRun, course: EvalRun) -> list[Sample]:
    """The examples/s and generated tokens/s samples of one repeat."""
    metric = compare(task, nl, course)
    return [Sample(task, FIGURE, "examples/s", nl.examples / nl.seconds, course.examples / course.seconds, True,
                   metric=metric, note=note(task, job, nl.examples)),
            Sample(task, TOKENS_FIGURE, "tokens/s", nl.tokens / nl.seconds, course.tokens / course.seconds, True,
                   metric=metric)]
