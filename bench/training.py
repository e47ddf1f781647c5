"""Training throughput: the nlpjobs engine (``nlpjobs train``) against the course recipe (``Trainer`` /
``Seq2SeqTrainer`` with the course's collator and hyperparameters) on the same model, the same preprocessed
data and the same batch size, plus model-FLOPs utilisation against the matmul peak measured in the same
run. Both engines run on one device (:func:`bench.machine.device`: the GPU where there is one) and in
one precision: fp32, except on a GPU for the recipes the course trains with ``fp16=True``, where both train in
fp16 mixed precision (``Recipe.course_fp16``). On a CPU that multiplies bf16 natively (the machine's measured
peaks) each repeat also runs both engines in bf16 mixed precision (the course Trainer's ``bf16=True``,
nlpjobs' ``train.mixed_precision=bf16``), and a row compares nlpjobs in bf16 with the course in fp32: the
course's ``fp16=True`` has no fast CPU form (fp16 products are emulated there), so a CPU user of the course
trains in fp32. Tasks: NER, masked-LM adaptation, translation, summarization, causal-LM pretraining and
extractive QA, each with the course's recipe.

Both engines are timed the same way, from outside: a global optimizer-step hook stamps every optimizer step
and a wrapper around the collator counts each batch's real (non-pad) tokens and samples. Throughput covers
steps 1..N from the moment the first batch is requested (step 1 counts: nlpjobs' length grouping puts its
longest batch first); everything before and after the loop -- model loading, checkpoints, export -- is
excluded. The metric beside it comes from evaluating each trained model
on the same eval split afterwards (untimed).

Models built from a config (translation's scratch Marian, summarization's scratch mT5, clm's GPT-2) and models
given a new head (mlm's MiniLM, whose checkpoint has no masked-LM head) start from one init: built once
by the nlpjobs task (seeded as the engine seeds it) and saved; the course loads that folder, and the nlpjobs
engine's own build is checked against it (a fingerprint of every weight) before its first step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Sizes, load_preset, log
from bench.records import Sample, scores_metric

COURSE_LR = 2e-5
COURSE_WEIGHT_DECAY = 0.01
"""The course's Trainer hyperparameters (linear schedule, no warmup, AdamW)."""
COURSE_SUMMARIZATION_LR = 5.6e-5
"""the course's Seq2SeqTrainer for mT5 (weight decay 0.01, linear schedule)."""
COURSE_CLM_LR = 5e-4
COURSE_CLM_WEIGHT_DECAY = 0.1
"""the course's causal-LM Trainer (cosine schedule; its 1,000 warmup steps of ~65k are 1.5%: none
in a few dozen steps; no gradient accumulation here, so that one batch is one optimizer step)."""

MLM_MFU_NOTE = ("; model FLOPs count the masked-LM head on every token, as the course's model computes it: "
                "nlpjobs runs the head on the masked tokens only, so its figure is above the hardware's actual "
                "utilisation (the ratio is the throughput ratio)")

QA_LAYOUT_NOTE = (
    "; both store the course's features, every window padded to {max_length}: the course Trainer computes all "
    "{max_length} positions of every row, nlpjobs cuts each batch after its last real token (the loss's softmax "
    "over the batch's window, as in transformers' run_qa.py with dynamic padding); both sample rows at random "
    "(train.group_by_length=false for nlpjobs here: the training rows are 5 questions replicated, so grouping "
    "by length would fill each batch with copies of one question); the sample windows hold {mean_real:.0f} real "
    "tokens on average ({padding:.0f}% of a {max_length}-token window is padding); SQuAD v1.1's 87,599 training "
    "examples make 88,729 windows: nearly all of its contexts fit one window (its padding share is "
    "not measured here: no Hub)")

KERNELS_NOTE = ("; nlpjobs with its default train.cpu_kernels (dropout masks drawn four per random word, one-kernel "
                "tanh-GELU, the LM head's loss in row blocks; the course runs the models' own code)")

TOKENS_FIGURE = "train real tokens/s vs course Trainer"
SAMPLES_FIGURE = "train samples/s vs course Trainer"
MFU_FIGURE = "train MFU vs course Trainer"
BF16 = ", both in bf16"
"""Suffix of the figures where both engines train in bf16 mixed precision on the CPU."""
BF16_VS_FP32_FIGURE = "train real tokens/s, nlpjobs in bf16 vs course Trainer in fp32"


@dataclass(frozen=True)
class Recipe:
    """What differs between the tasks of the training figure."""

    model: str
    """The model, for the log."""
    course: str
    """The course's trainer class and collator, for the note."""
    count_labels: bool
    """Label tokens count as real tokens too (seq2seq: the decoder reads them, shifted)."""
    shared_init: bool
    """Both engines start from one saved init (a model built from a config, or a new head)."""
    metric: str
    """The Sample metric's name (its first score)."""
    scores: tuple[str, ...]
    """Keys of each engine's eval scores; the first is the metric's headline."""
    step_divisor: int = 1
    """The figure runs ``train_steps // step_divisor`` steps (masked-LM: 4, its 30,522-word output layer makes a
    step ~15x a NER step on CPU)."""
    mfu_note: str = ""
    """Appended to the MFU figure's note."""
    tied_head: bool = True
    """The output projection is tied to an embedding table (language-model heads); for the MFU note."""
    layout_note: str = ""
    """How each engine lays out its batches, for the throughput note (default: length grouping against the
    course Trainer's random order)."""
    course_fp16: bool = False
    """The course's arguments set ``fp16=True`` (masked LM, translation, causal LM, QA): on a GPU both
    engines train in fp16 mixed precision (on the CPU, where the Trainer has no fp16, both in fp32)."""

    @property
    def seq2seq(self) -> bool:
        """Encoder-decoder recipes: their label tokens are tokens of their own (and Seq2SeqTrainer generates)."""
        return self.count_labels


RECIPES: dict[str, Recipe] = {
    "ner": Recipe("MiniLM-L6", "Trainer + DataCollatorForTokenClassification", False, False,
                  "eval seqeval overall_f1", ("f1", "accuracy"), tied_head=False),
    "qa": Recipe("MiniLM-L6 with a new question-answering head", "Trainer + default_data_collator", False, True,
                 "eval SQuAD F1 (n_best 20, max answer 30) and start/end cross-entropy over each window's real "
                 "tokens (one evaluator for both models)", ("f1", "exact_match", "loss"), step_divisor=4,
                 tied_head=False, layout_note=QA_LAYOUT_NOTE, course_fp16=True),
    "translation": Recipe("scratch Marian (2+2 layers, d_model 256)",
                          "Seq2SeqTrainer + DataCollatorForSeq2Seq(tokenizer, model=model)", True, True,
                          "eval cross-entropy per label token (token-weighted, teacher-forced; one evaluator "
                          "for both models)", ("loss",), course_fp16=True),
    "mlm": Recipe("MiniLM-L6 with a new masked-LM head (chunks of 128)",
                  "Trainer + DataCollatorForLanguageModeling(mlm_probability=0.15)", False, True,
                  "eval cross-entropy per masked token (the fixed-mask eval split; one evaluator for both models)",
                  ("loss", "perplexity"), step_divisor=4, mfu_note=MLM_MFU_NOTE,
                  course_fp16=True),
    "summarization": Recipe("scratch mT5 (tiny)", "Seq2SeqTrainer + DataCollatorForSeq2Seq(tokenizer, model=model)",
                            True, True, "eval cross-entropy per label token (token-weighted, teacher-forced; one "
                            "evaluator for both models)", ("loss",)),
    "clm": Recipe("scratch GPT-2 (4 layers, 128 wide, context 128)",
                  "Trainer + DataCollatorForLanguageModeling(mlm=False)", False, True,
                  "eval cross-entropy per next token (token-weighted; one evaluator for both models)",
                  ("loss", "perplexity"), course_fp16=True),
}
TASKS = tuple(RECIPES)


def precision(recipe: Recipe, device: str) -> str:
    """Both engines' training precision, as ``train.mixed_precision`` names it: "fp16" on a GPU for the course's
    fp16=True recipes, else "no" (fp32)."""
    return "fp16" if device == "cuda" and recipe.course_fp16 else "no"


def course_device_args(mixed: str, device: str) -> dict[str, Any]:
    """The course Trainer's device and precision arguments for ``train.mixed_precision`` ``mixed``: the device
    and precision nlpjobs trains with."""
    return {"use_cpu": device != "cuda", "fp16": mixed == "fp16", "bf16": mixed == "bf16"}


@dataclass
class Meter:
    """Optimizer-step times and per-batch real tokens / samples, in the order the loop consumed them."""

    steps: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    label_tokens: list[int] = field(default_factory=list)
    """Per batch, the label tokens included in ``tokens`` (0 where labels are not counted)."""
    positions: list[int] = field(default_factory=list)
    """Per batch, the positions the model computes over: the real tokens of ``tokens`` plus their padding."""
    started: float | None = None
    """When the first training batch was requested (set by CountingCollator); None: not recorded."""
    sync_at: int = 0
    """On a GPU, the optimizer step (1-based) whose stamp waits for the device to finish its queued work (the
    last timed step: an engine that never synchronises would otherwise stamp it when it was only queued);
    0: never."""

    @property
    def first_timed(self) -> int:
        """Index of the first timed batch: 0 (step 1, from the first batch's collation) when ``started`` is
        known, else 1 (steps 2..N, from step 1's end)."""
        return 0 if self.started is not None else 1

    def timed(self, values: list[int], total_steps: int) -> int:
        """Sum of a per-batch list over the timed steps."""
        return sum(values[self.first_timed:total_steps])

    def throughput(self, total_steps: int) -> tuple[float, float, float]:
        """(real tokens/s, samples/s, seconds) over the timed steps up to ``total_steps``. Step 1 counts when
        it can: with length grouping nlpjobs' first batch is its longest, so leaving it out would favour nlpjobs."""
        if len(self.steps) < total_steps or len(self.tokens) < total_steps or total_steps < 2:
            raise RuntimeError(f"measured {len(self.steps)} optimizer steps and {len(self.tokens)} batches; "
                               f"expected {total_steps} of each (and at least 2)")
        start = self.started if self.started is not None else self.steps[0]
        seconds = self.steps[total_steps - 1] - start
        return (self.timed(self.tokens, total_steps) / seconds, self.timed(self.samples, total_steps) / seconds,
                seconds)

    def label_share(self, total_steps: int) -> float:
        """Fraction of the real tokens of the timed steps that are label tokens."""
        tokens = self.timed(self.tokens, total_steps)
        return self.timed(self.label_tokens, total_steps) / tokens if tokens else 0.0

    def padding_share(self, total_steps: int) -> float:
        """Fraction of the positions of the timed steps that are padding (random batches differ between
        engines, so over a few steps one engine may have drawn more of it)."""
        positions = self.timed(self.positions, total_steps)
        return 1 - self.timed(self.tokens, total_steps) / positions if positions else 0.0


def count_tokens(batch: Any, count_labels: bool = False) -> tuple[int, int]:
    """(real input tokens, real label tokens) of a collated batch: the attention-mask sum (every position
    without a mask), and with ``count_labels`` the labels that are not -100 (else 0)."""
    mask = batch.get("attention_mask")
    real = int(mask.sum()) if mask is not None else int(np.prod(batch["input_ids"].shape))
    labels = batch.get("labels") if count_labels else None
    return real, int((labels != -100).sum()) if labels is not None else 0


def padded_positions(batch: Any, count_labels: bool = False) -> int:
    """The input positions of a collated batch, padding included (and with ``count_labels`` its label ones):
    what :func:`count_tokens` counts before the padding is taken out."""
    labels = batch.get("labels") if count_labels else None
    return int(np.prod(batch["input_ids"].shape)) + (int(np.prod(labels.shape)) if labels is not None else 0)


class CountingCollator:
    """Wraps a collator; records each batch's real tokens (attention_mask sum, plus the non -100 labels with
    ``count_labels``) and rows."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], Any], meter: Meter, count_labels: bool = False) -> None:
        self.inner = inner
        self.meter = meter
        self.count_labels = count_labels

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        if self.meter.started is None:
            self.meter.started = time.perf_counter()
        batch = self.inner(features)
        inputs, labels = count_tokens(batch, self.count_labels)
        self.meter.tokens.append(inputs + labels)
        self.meter.label_tokens.append(labels)
        self.meter.samples.append(int(batch["input_ids"].shape[0]))
        self.meter.positions.append(padded_positions(batch, self.count_labels))
        return batch


@contextlib.contextmanager
def step_clock(meter: Meter) -> Iterator[None]:
    """Stamp every optimizer step of any torch optimizer while active (``meter.sync_at``: after the GPU
    finished that step)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def stamp(*_: Any) -> None:
        if len(meter.steps) + 1 == meter.sync_at and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        meter.steps.append(time.perf_counter())

    handle = register_optimizer_step_post_hook(stamp)
    try:
        yield
    finally:
        handle.remove()


def matmul_params(model: Any) -> int:
    """Parameters that take part in matrix multiplies: all but embedding tables (a lookup is no matmul)."""
    import torch

    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def flop_params(model: Any) -> tuple[int, int]:
    """Matmul parameters one real (input, label) token passes through: (all, 0) for encoder- or decoder-only
    models, (encoder, decoder + output projection) for encoder-decoder ones. An output projection tied to an
    embedding table is a matmul all the same and counts (GPT-2, Marian)."""
    import torch

    total = matmul_params(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    tied = head.weight.numel() if head is not None and id(head.weight) in embedding else 0
    if getattr(model.config, "is_encoder_decoder", False):
        encoder = matmul_params(model.get_encoder())
        return encoder, total - encoder + tied
    return total + tied, 0


def mfu(tokens_per_s: float, params: int, peak_gflops: float) -> float:
    """Model-FLOPs utilisation in %: 6 · params · tokens/s (forward + backward) over the measured peak."""
    return 100.0 * 6.0 * params * tokens_per_s / (peak_gflops * 1e9)


def fingerprint(model: Any) -> str:
    """SHA-256 of every tensor of the model's state dict (names, dtypes, shapes and values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@contextlib.contextmanager
def checked_init(task_cls: Any, init: str | None) -> Iterator[None]:
    """While open, the task's freshly built model must have the fingerprint ``init`` (the course's starting
    weights), or nlpjobs' training fails before its first step."""
    from unittest import mock

    build_model = task_cls.build_model

    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = build_model(self, *args, **kwargs)
        _check_init(model, init, "nlpjobs")
        return model

    with mock.patch.object(task_cls, "build_model", checked):
        yield


def _check_init(model: Any, expected: str | None, engine: str) -> None:
    if expected is not None and fingerprint(model) != expected:
        raise RuntimeError(f"{engine}: the initial weights differ from the shared init; the engines would not "
                           "start from the same model")


# ---- evaluation ---------------------------------------------------------------------------------


def course_ner_compute_metrics(label_names: list[str]) -> Callable[[Any], dict[str, float]]:
    """The course's: argmax, drop -100 positions, names, seqeval (predictions, references in order)."""
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


def eval_loss(model: Any, job: Any, manifest: Any) -> dict[str, float]:
    """Token-weighted cross-entropy of ``model`` on the preprocessed eval split (teacher-forced; causal LMs
    predict each next token, masked LMs the fixed-mask eval split's masked tokens), batched by nlpjobs'
    collator; the same function scores both engines' models. Language models add the perplexity."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import get_task
    from nlpjobs.tasks.evaluation import perplexity
    from nlpjobs.train.engine import model_inputs

    task = get_task(job.task)
    loader = DataLoader(model_inputs(task, load_split(manifest, "eval")), batch_size=job.evaluate.batch_size,
                        collate_fn=task.collator(load_tokenizer(manifest), model))
    causal = job.task == "clm"
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in loader:
            labels = batch.pop("labels").to(model.device)
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            if causal:
                logits, labels = logits[:, :-1], labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            count += int((labels != -100).sum())
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": perplexity(loss)} if "perplexity" in RECIPES[job.task].scores else {"loss": loss}


def qa_scores(model: Any, job: Any, manifest: Any) -> dict[str, float]:
    """SQuAD EM/F1 of ``model`` on the preprocessed eval windows (nlpjobs' post-processing) and the mean
    start/end cross-entropy over each window's real tokens, the answer positions labelled as for training
   . Full-width windows in dataset order: neither engine's batching is involved."""
    import torch
    import torch.nn.functional as F

    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import qa_features
    from nlpjobs.tasks.qa import EXAMPLE_COLUMNS, predict_answers, squad_scores

    cfg = job.preprocess
    features = load_split(manifest, "eval")
    examples = load_split(manifest, "eval_examples").select_columns(EXAMPLE_COLUMNS).with_format("arrow")[:].to_pydict()
    windows = qa_features.prepare_train_features(examples["question"], examples["context"], examples["answers"],
                                                 load_tokenizer(manifest), cfg.max_length, cfg.stride)
    stored = features.select_columns(["input_ids"]).with_format("numpy")[:]["input_ids"]
    if not np.array_equal(np.asarray(stored), windows["input_ids"]):
        raise RuntimeError("qa: the labelled eval windows differ from the preprocessed eval features")
    starts, ends, total = [], [], 0.0
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(stored), job.evaluate.batch_size):
            batch = {k: torch.as_tensor(windows[k][lo:lo + job.evaluate.batch_size])
                     for k in ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")}
            out = model(**{k: batch[k].to(model.device) for k in ("input_ids", "attention_mask", "token_type_ids")})
            padding = batch["attention_mask"].to(model.device) == 0
            for logits, key in ((out.start_logits, "start_positions"), (out.end_logits, "end_positions")):
                masked = logits.float().masked_fill(padding, float("-inf"))
                total += 0.5 * float(F.cross_entropy(masked, batch[key].to(model.device), reduction="sum"))
            starts.append(out.start_logits.cpu().numpy())
            ends.append(out.end_logits.cpu().numpy())
    predictions = predict_answers(np.concatenate(starts), np.concatenate(ends), features, examples,
                                  job.evaluate.n_best, job.evaluate.max_answer_length)
    return {**squad_scores(predictions, examples), "loss": total / len(stored)}


def model_scores(model: Any, job: Any, manifest: Any) -> dict[str, float]:
    """The task's eval scores of a trained model (``RECIPES[job.task].scores``), one function for both engines,
    in fp32 on the bench's device."""
    from bench.machine import device

    model = model.to(device()).float()
    return qa_scores(model, job, manifest) if job.task == "qa" else eval_loss(model, job, manifest)


# ---- the course's Trainer recipes (NER mlm §2.5, translation §3.4-3.6, summarization §4.6,
# clm §5.4-5.5) ---------------------------------------------------------------------------------------


def course_parts(job: Any, manifest: Any, tokenizer: Any, init_dir: Path | None) -> tuple[Any, Any, Any, Any]:
    """(model, collator, trainer class, arguments class) of the course's recipe for ``job.task``."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

    if job.task == "ner":
        from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification

        from nlpjobs.models import resolve_model

        names = manifest.info["label_names"]
        id2label = dict(enumerate(names))
        label2id = {v: k for k, v in id2label.items()}
        model = AutoModelForTokenClassification.from_pretrained(resolve_model(job.model.name), id2label=id2label,
                                                                label2id=label2id)
        assert model.config.num_labels == len(names)
        return model, DataCollatorForTokenClassification(tokenizer=tokenizer), Trainer, TrainingArguments
    if init_dir is None:
        raise ValueError(f"{job.task}: the course model loads the shared init folder")
    if job.task == "mlm":
        from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

        model = AutoModelForMaskedLM.from_pretrained(str(init_dir))
        return model, DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), Trainer, TrainingArguments
    if RECIPES[job.task].seq2seq:
        from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq

        model = AutoModelForSeq2SeqLM.from_pretrained(str(init_dir))
        return (model, DataCollatorForSeq2Seq(tokenizer, model=model), Seq2SeqTrainer, Seq2SeqTrainingArguments)
    if job.task == "qa":
        from transformers import AutoModelForQuestionAnswering, default_data_collator

        model = AutoModelForQuestionAnswering.from_pretrained(str(init_dir))
        return model, default_data_collator, Trainer, TrainingArguments  # features are pre-padded
    if job.task == "clm":
        from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling

        model = AutoModelForCausalLM.from_pretrained(str(init_dir))
        tokenizer.pad_token = tokenizer.eos_token
        return model, DataCollatorForLanguageModeling(tokenizer, mlm=False), Trainer, TrainingArguments
    raise ValueError(f"no course Trainer recipe for {job.task!r}; known: {', '.join(TASKS)}")


def run_course_trainer(job: Any, manifest: Any, steps: int, batch_size: int, out_dir: Path, meter: Meter,
                       init_dir: Path | None = None, init: str | None = None) -> dict[str, float]:
    """The course's Trainer on nlpjobs' preprocessed splits for ``steps`` steps, with
    the job's schedule (set to the course's); its eval scores (``RECIPES[job.task].scores``). ``init``: the
    fingerprint the loaded model must have."""
    from bench.machine import device
    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import model_inputs

    recipe = RECIPES[job.task]
    tokenizer = load_tokenizer(manifest)
    model, collator, trainer_cls, args_cls = course_parts(job, manifest, tokenizer, init_dir)
    _check_init(model, init, "course Trainer")
    data_collator = CountingCollator(collator, meter, recipe.count_labels)
    extra = {"predict_with_generate": True} if recipe.seq2seq else {}
    args = args_cls(
        str(out_dir),
        eval_strategy="no",  # the course evaluates (and saves) every epoch or never; here once, after the timed steps
        save_strategy="no",
        learning_rate=job.train.learning_rate,
        weight_decay=job.train.weight_decay,
        lr_scheduler_type=job.train.scheduler,
        warmup_steps=job.train.warmup_steps,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=job.evaluate.batch_size,
        seed=job.train.seed,
        push_to_hub=False,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
        **course_device_args(job.train.mixed_precision, device()),
        **extra,
    )
    compute_metrics = course_ner_compute_metrics(manifest.info["label_names"]) if job.task == "ner" else None
    task = get_task(job.task)
    trainer = trainer_cls(model=model, args=args, train_dataset=model_inputs(task, load_split(manifest, "train")),
                          eval_dataset=model_inputs(task, load_split(manifest, "eval")), data_collator=data_collator,
                          compute_metrics=compute_metrics, processing_class=tokenizer)
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its summaries; stdout is the table's
        with step_clock(meter):
            trainer.train()
        data_collator.meter = Meter()  # evaluation batches are not training batches
        if job.task != "ner":
            return model_scores(trainer.model, job, manifest)
        metrics = trainer.evaluate()
    return {"f1": float(metrics["eval_f1"]), "accuracy": float(metrics["eval_accuracy"])}


# ---- nlpjobs ------------------------------------------------------------------------------------


def run_nlpjobs(job: Any, steps: int, meter: Meter, manifest: Any = None, init: str | None = None) -> dict[str, float]:
    """``nlpjobs train`` (the engine) for ``steps`` steps, then its eval scores (``RECIPES[job.task].scores``):
    NER through ``nlpjobs evaluate``, the others through :func:`eval_loss` on the exported model (``manifest``).
    ``init``: the fingerprint the engine's freshly built model must have."""
    from unittest import mock

    from nlpjobs.stages import evaluate as evaluate_saved
    from nlpjobs.stages import fetch_model, train
    from nlpjobs.tasks import get_task

    recipe = RECIPES[job.task]
    task_cls = type(get_task(job.task))
    collator = task_cls.collator

    def counting(self: Any, tokenizer: Any, model: Any) -> Any:
        return CountingCollator(collator(self, tokenizer, model), meter, recipe.count_labels)

    with (mock.patch.object(task_cls, "collator", counting), checked_init(task_cls, init),
          contextlib.redirect_stdout(sys.stderr), step_clock(meter)):
        result = train(job, show_progress=False)
    if result.steps != steps:
        raise RuntimeError(f"nlpjobs trained {result.steps} steps, asked for {steps}")
    if job.task != "ner":
        return model_scores(task_cls().load_trained(str(fetch_model(job))), job, manifest)
    metrics = evaluate_saved(job, show_progress=False)
    return {"f1": float(metrics["overall_f1"]), "accuracy": float(metrics["overall_accuracy"])}


# ---- the figure ---------------------------------------------------------------------------------


def preset_overrides(task: str, sizes: Sizes, store: Path) -> list[str]:
    """The task preset's overrides: scratch store, data sizes, batch, steps and the course's optimizer
    settings (learning rate from ``sizes.learning_rate`` when set), no evaluation or checkpoints in the loop."""
    common = [f"storage=file://{store}", f"train.batch_size={sizes.train_batch_size}",
              f"train.max_steps={sizes.train_steps}", "train.warmup_steps=0", "train.eval_every=never",
              "train.save_every=never"]
    if task == "ner":
        return [*common, f"data.max_train_examples={sizes.train_examples}",
                f"data.max_eval_examples={sizes.eval_examples}",
                f"train.learning_rate={sizes.learning_rate or COURSE_LR}",
                f"train.weight_decay={COURSE_WEIGHT_DECAY}", "train.scheduler=linear"]
    common += ["train.eval_before_training=false", "train.grad_accum=1"]
    if task == "translation":  # the eval pairs are 10% carved out of the drawn pairs
        return [*common, f"data.max_train_examples={max(sizes.train_examples, 10 * sizes.eval_examples)}",
                f"data.max_eval_examples={sizes.eval_examples}",
                f"train.learning_rate={sizes.learning_rate or COURSE_LR}",
                f"train.weight_decay={COURSE_WEIGHT_DECAY}", "train.scheduler=linear"]
    if task == "summarization":  # the eval rows: at most eval_sample after the title filter and the mix
        return [*common, f"data.max_train_examples={sizes.train_examples}",
                f"preprocess.eval_sample={min(200, sizes.eval_examples)}",
                f"train.learning_rate={sizes.learning_rate or COURSE_SUMMARIZATION_LR}",
                f"train.weight_decay={COURSE_WEIGHT_DECAY}", "train.scheduler=linear"]
    if task == "mlm":  # chunks of 128 tokens: as many train chunks as the steps take, eval chunks from the test reviews
        return [*common, f"data.max_train_examples={sizes.mlm_reviews}",
                f"preprocess.train_size={min(800, sizes.train_steps * sizes.train_batch_size)}",
                f"preprocess.test_size={min(200, sizes.eval_examples)}",
                f"train.learning_rate={sizes.learning_rate or COURSE_LR}",
                f"train.weight_decay={COURSE_WEIGHT_DECAY}", "train.scheduler=linear"]
    if task == "qa":  # the 5 SQuAD sample questions replicated for training (qa_raw_files), the 5 as they are for eval
        return [*common, f"data.source=files:{store / 'qa-raw'}", "data.train_split=train", "data.eval_split=eval",
                "train.group_by_length=false",  # replicas of one question share a length: one question per batch
                f"train.learning_rate={sizes.learning_rate or COURSE_LR}",
                f"train.weight_decay={COURSE_WEIGHT_DECAY}", "train.scheduler=linear"]
    if task == "clm":  # whole files, tens of 128-token chunks each; 2-12 eval files
        return [*common, f"data.max_train_examples={sizes.clm_files}",
                f"data.max_eval_examples={max(2, min(12, sizes.eval_examples // 25))}",
                f"train.learning_rate={sizes.learning_rate or COURSE_CLM_LR}",
                f"train.weight_decay={COURSE_CLM_WEIGHT_DECAY}", "train.scheduler=cosine"]
    raise ValueError(f"the training figure has no recipe for {task!r}; known: {', '.join(TASKS)}")


def _preprocessed(sizes: Sizes, store: Path, task: str = "ner") -> tuple[Any, Any]:
    """The task's preset on ``sizes`` (:func:`preset_overrides`), preprocessed once."""
    from nlpjobs import stages

    if task == "qa":
        qa_raw_files(sizes.train_examples, store / "qa-raw")
    job = load_preset(task, preset_overrides(task, sizes, store))
    result = stages.preprocess(job)
    return job, result.manifest


def qa_raw_files(train_examples: int, folder: Path) -> None:
    """The QA preset's 5 SQuAD sample questions as JSON-lines files: ``train_examples`` training rows
    (replicated with distinct ids, as the preprocessing figure does) and the 5 eval questions once (replicas
    would be scored identically)."""
    from bench.preprocess import replicate_qa
    from nlpjobs.data import sources

    preset = load_preset("qa")
    raw = sources.load_raw(preset.data, preset.train.seed)
    folder.mkdir(parents=True, exist_ok=True)
    replicate_qa(raw["train"], train_examples).to_json(str(folder / "train.jsonl"), lines=True)
    raw["eval"].to_json(str(folder / "eval.jsonl"), lines=True)


def save_initial_model(job: Any, manifest: Any, out_dir: Path) -> tuple[str, Any]:
    """The model the nlpjobs engine starts from (its task's build_model after ``set_seed(train.seed)``, as the
    engine does), saved to ``out_dir``; (its fingerprint, the model)."""
    from accelerate.utils import set_seed

    from nlpjobs.data.shards import load_tokenizer
    from nlpjobs.tasks import get_task

    set_seed(job.train.seed)
    model = get_task(job.task).build_model(job, manifest, load_tokenizer(manifest))
    model.save_pretrained(str(out_dir))
    return fingerprint(model), model


def mfu_params(job: Any, manifest: Any, model: Any = None) -> tuple[int, int]:
    """:func:`flop_params` of the task's model (NER: the checkpoint with its head, from its config)."""
    if model is None:
        from transformers import AutoConfig, AutoModelForTokenClassification

        from nlpjobs.models import resolve_model

        config = AutoConfig.from_pretrained(resolve_model(job.model.name),
                                            num_labels=len(manifest.info["label_names"]))
        model = AutoModelForTokenClassification.from_config(config)
    return flop_params(model)


def run_engine(engine: str, job: Any, manifest: Any, sizes: Sizes, scratch: Path, store: Path,
               init_dir: Path | None, init: str | None) -> tuple[Meter, dict[str, float]]:
    """One run of ``engine`` ("nlpjobs" or "course") on a fresh run name / output folder, removed afterwards."""
    from nlpjobs import storage

    meter = Meter(sync_at=sizes.train_steps)
    if engine == "nlpjobs":
        run_job = dataclasses.replace(job, name=f"bench-{job.task}-{uuid.uuid4().hex[:8]}")
        try:
            return meter, run_nlpjobs(run_job, sizes.train_steps, meter, manifest, init)
        finally:
            shutil.rmtree(store / "runs" / run_job.name, ignore_errors=True)
            shutil.rmtree(storage.cache_dir() / "scratch" / run_job.name, ignore_errors=True)
    out = scratch / f"trainer-{uuid.uuid4().hex[:8]}"
    try:
        return meter, run_course_trainer(job, manifest, sizes.train_steps, sizes.train_batch_size, out, meter,
                                         init_dir, init)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def setting(mixed: str, device: str) -> str:
    """Where and in what precision (``train.mixed_precision``) both engines train, for the notes."""
    if device != "cuda":
        if mixed == "bf16":
            return ("bf16 mixed precision on the CPU (the course Trainer's bf16=True, nlpjobs "
                    "train.mixed_precision=bf16: autocast, fp32 weights and optimizer)")
        return "fp32 on the CPU"
    if mixed == "fp16":
        return "fp16 mixed precision on the GPU (the course's fp16=True; nlpjobs train.mixed_precision=fp16)"
    return "fp32 on the GPU (the course sets no fp16 here)"


def note(task: str, job: Any, sizes: Sizes, label_share: float, manifest: Any = None, device: str = "cpu",
         mixed: str | None = None) -> str:
    """The tokens/s figure's note: what is compared and counted (``mixed``: the precision both engines train
    in; None: the course's on ``device``)."""
    steps, lr = sizes.train_steps, job.train.learning_rate
    recipe = RECIPES[task]
    where = setting(precision(recipe, device) if mixed is None else mixed, device)
    kernels = KERNELS_NOTE if device != "cuda" else ""  # train.cpu_kernels: CPU only
    if task == "ner":
        return (f"same data, model, batch {sizes.train_batch_size}, lr {lr:g}, weight decay "
                f"{COURSE_WEIGHT_DECAY}, linear schedule, {where}; {steps} steps (metric after "
                f"{steps} steps only)" + kernels)
    text = (f"course: {recipe.course}; same data, batch {sizes.train_batch_size}, lr {lr:g}, weight decay "
            f"{job.train.weight_decay:g}, {job.train.scheduler} schedule without warmup, grad clip 1.0, no "
            f"gradient accumulation, {where}; {recipe.model} from one init (built by nlpjobs, saved, loaded by "
            f"the course; the engine's own build checked equal); {steps} steps, metric after them only, from one "
            "evaluator on both trained models")
    if task in ("clm", "mlm"):
        length = getattr(job.preprocess, "context_length", None) or job.preprocess.chunk_size
        text += (f"; every row a full {length}-token chunk (no padding: length grouping "
                 "changes nothing)")
    elif recipe.layout_note:
        from nlpjobs.data.shards import load_split
        from nlpjobs.train.sampling import real_lengths

        train = load_split(manifest, "train").select_columns(["attention_mask"]).with_format("arrow")[:]
        mean_real = float(real_lengths(train.column("attention_mask")).mean())
        width = job.preprocess.max_length
        text += recipe.layout_note.format(max_length=width, mean_real=mean_real, padding=100 * (1 - mean_real / width))
    else:
        text += "; nlpjobs batches rows of similar length together, the course Trainer samples at random"
    text += kernels
    if recipe.count_labels:
        text += (f"; real tokens = source tokens (attention mask) + label tokens (not -100), both engines "
                 f"({100 * label_share:.0f}% labels)")
    return text


def measure(sizes: Sizes, scratch: Path, peaks: dict[str, float] | None, task: str = "ner") -> list[Sample]:
    """``sizes.repeats`` runs of each engine on ``task`` (alternating which goes first); tokens/s, samples/s,
    MFU against ``peaks[precision]`` (GFLOP/s by ``train.mixed_precision``, :meth:`Machine.peaks`; none: no
    MFU)."""
    import datasets

    recipe = RECIPES.get(task)
    if recipe is None:
        raise ValueError(f"the training figure has no recipe for {task!r}; known: {', '.join(TASKS)}")
    datasets.disable_progress_bars()
    if recipe.step_divisor > 1:
        sizes = dataclasses.replace(sizes, train_steps=max(2, sizes.train_steps // recipe.step_divisor))
    store = scratch / ("train-store" if task == "ner" else f"train-store-{task}")
    init_dir = scratch / f"train-init-{task}" if recipe.shared_init else None
    try:
        return _measure(task, recipe, sizes, scratch, store, init_dir, peaks or {})
    finally:
        use_precision("no")  # the figures after this one start from Accelerate's default, whatever ran last
        shutil.rmtree(store, ignore_errors=True)
        if init_dir is not None:
            shutil.rmtree(init_dir, ignore_errors=True)


def _measure(task: str, recipe: Recipe, sizes: Sizes, scratch: Path, store: Path, init_dir: Path | None,
             peaks: dict[str, float]) -> list[Sample]:
    from bench.machine import check_one_gpu, device

    check_one_gpu(f"{task} training")
    where = device()
    mixed = precision(recipe, where)
    precisions = [mixed] + (["bf16"] if where != "cuda" and "bf16" in peaks else [])
    job, manifest = _preprocessed(sizes, store, task)
    init, model = save_initial_model(job, manifest, init_dir) if init_dir is not None else (None, None)
    source_params, target_params = mfu_params(job, manifest, model)
    del model
    steps = sizes.train_steps
    log(f"{task} training: {recipe.model}, {manifest.rows('train'):,} train / {manifest.rows('eval'):,} eval rows, "
        f"batch {sizes.train_batch_size}, {steps} steps per run (steps 1..{steps} timed), lr {job.train.learning_rate:g}, "
        f"{sizes.repeats} repeat(s) per engine, {' and '.join(setting(p, where) for p in precisions)}")
    samples: list[Sample] = []
    for r in range(sizes.repeats):
        results: dict[tuple[str, str], Run] = {}
        for p in precisions:
            run_job = dataclasses.replace(job, train=dataclasses.replace(job.train, mixed_precision=p))
            for engine in (("nlpjobs", "course") if r % 2 == 0 else ("course", "nlpjobs")):
                with run_precision(p):
                    meter, scores = run_engine(engine, run_job, manifest, sizes, scratch, store, init_dir, init)
                run = results[engine, p] = Run(*meter.throughput(steps), meter.label_share(steps), scores,
                                               meter.padding_share(steps))
                log(f"{task} training repeat {r + 1}/{sizes.repeats}{' (bf16)' if p == 'bf16' else ''}: {engine}: "
                    f"{run.tokens:,.0f} real tokens/s, {run.samples:.1f} samples/s ({steps} steps in "
                    f"{run.seconds:.1f}s, {100 * run.padding:.0f}% padding), eval " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        for p in precisions:
            suffix = BF16 if p == "bf16" else ""
            samples += _compare(task, recipe, results["nlpjobs", p], results["course", p], suffix,
                                note(task, job, sizes, results["nlpjobs", p].label_share, manifest, where, p),
                                peaks.get(p), p, source_params, target_params)
        if "bf16" in precisions:
            nl, co = results["nlpjobs", "bf16"], results["course", mixed]
            samples.append(Sample(task, BF16_VS_FP32_FIGURE, "tokens/s", nl.tokens, co.tokens, True,
                                  metric=scores_metric(recipe.metric, recipe.scores, nl.scores, co.scores),
                                  note="nlpjobs' runs of the bf16 row (train.mixed_precision=bf16) against the "
                                       "course Trainer's runs of the fp32 row, as a CPU user runs the course (its "
                                       "fp16=True has no fast CPU form: fp16 products are emulated); the metric "
                                       "compares those two runs"))
    return samples


@dataclass
class Run:
    """One engine's training run: throughput (:meth:`Meter.throughput`) and the trained model's scores."""

    tokens: float
    samples: float
    seconds: float
    label_share: float
    scores: dict[str, float]
    padding: float = 0.0
    """Fraction of the timed batches' positions that were padding (:meth:`Meter.padding_share`)."""


ACCELERATE_PRECISION = "ACCELERATE_MIXED_PRECISION"
"""The variable Accelerate reads the precision from when none is given; ``TrainingArguments`` sets it for the
whole process (bf16=True leaves it at bf16, and a later Trainer without fp16 or bf16 would train in bf16)."""


def use_precision(mixed: str) -> None:
    """Let the next engine run set ``train.mixed_precision`` ``mixed``: Accelerate keeps one precision per
    process (its shared state refuses a second), so the state is cleared when the precision changes."""
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and str(current) != mixed:
        AcceleratorState._reset_state()


@contextlib.contextmanager
def run_precision(mixed: str) -> Iterator[None]:
    """One engine run in ``train.mixed_precision`` ``mixed``: :func:`use_precision`, and Accelerate's precision
    variable set to it for the run (restored after)."""
    use_precision(mixed)
    saved = os.environ.get(ACCELERATE_PRECISION)
    os.environ[ACCELERATE_PRECISION] = mixed
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ACCELERATE_PRECISION, None)
        else:
            os.environ[ACCELERATE_PRECISION] = saved


def _compare(task: str, recipe: Recipe, nl: Run, co: Run, suffix: str, text: str, peak_gflops: float | None,
             mixed: str, source_params: int, target_params: int) -> list[Sample]:
    """The tokens/s, samples/s and (given a peak) MFU samples of one repeat in one precision."""
    metric = scores_metric(recipe.metric, recipe.scores, nl.scores, co.scores)
    text += f"; padding in the timed batches: nlpjobs {100 * nl.padding:.0f}%, course {100 * co.padding:.0f}%"
    samples = [Sample(task, TOKENS_FIGURE + suffix, "tokens/s", nl.tokens, co.tokens, True, metric=metric, note=text),
               Sample(task, SAMPLES_FIGURE + suffix, "samples/s", nl.samples, co.samples, True, metric=metric)]
    if not peak_gflops:
        return samples

    def utilisation(run: Run) -> float:
        labels = run.tokens * run.label_share if recipe.count_labels else 0.0
        return mfu(run.tokens - labels, source_params, peak_gflops) + mfu(labels, target_params, peak_gflops)

    if recipe.count_labels:
        flops = (f"6 x ({source_params / 1e6:.1f}M encoder matmul parameters x source tokens/s + "
                 f"{target_params / 1e6:.1f}M decoder ones, tied output projection included, x label tokens/s)")
    else:
        tied = ", the tied output projection included" if recipe.tied_head else ""
        flops = f"6 x {source_params / 1e6:.1f}M matmul parameters (embeddings excluded{tied}) x real tokens/s"
    peak_name = "fp32" if mixed == "no" else mixed
    samples.append(Sample(task, MFU_FIGURE + suffix, f"% of {peak_name} matmul peak", utilisation(nl), utilisation(co),
                          True, metric=metric,
                          note=f"{flops} / measured {peak_name} peak {peak_gflops:,.1f} GFLOP/s"
                          + ("" if task == "ner" else "; attention-score FLOPs not counted") + recipe.mfu_note))
    return samples
