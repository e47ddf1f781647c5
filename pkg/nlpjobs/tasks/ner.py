"""Token classification (NER): word-level inputs, B→I label alignment, seqeval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from nlpjobs.config import ConfigError, EvaluateConfig, JobConfig, PreprocessConfig
from nlpjobs.tasks.base import (
    EvalContext,
    Prepared,
    Task,
    TaskDataError,
    column_values,
    fresh_fingerprint,
    list_column,
)
from nlpjobs.text.encode import WordEncoder


@dataclass
class NerPreprocessConfig(PreprocessConfig):
    """Tokenization of pre-split words with label alignment."""

    label_all_tokens: bool = True
    """true: every sub-token gets its word's label (B-X continuation tokens become I-X);
    false: only the first sub-token of each word is labelled, the rest get -100."""
    max_length: int | None = None
    """Truncate inputs to this many tokens (null: the model's limit); truncated examples are counted
    in the manifest."""
    label_names: list[str] = field(default_factory=list)
    """Label names in id order, for data whose tags are plain integers without ClassLabel names."""


def b_to_i_map(label_names: list[str]) -> np.ndarray:
    """For each label id, the id a continuation sub-token gets: B-X → I-X, everything else unchanged."""
    index = {name: i for i, name in enumerate(label_names)}
    mapping = np.arange(len(label_names))
    for i, name in enumerate(label_names):
        if name.startswith("B-") and f"I-{name[2:]}" in index:
            mapping[i] = index[f"I-{name[2:]}"]
    return mapping


def align_labels_with_tokens(labels: list[int], word_ids: list[int | None], b_to_i: np.ndarray | list[int],
                             label_all_tokens: bool = True) -> list[int]:
    """Token labels for one sentence: -100 for special tokens; the word's label on its first
    token; on continuation tokens the I- label (or -100 with ``label_all_tokens=False``)."""
    words = np.array([-1 if w is None else w for w in word_ids], dtype=np.int64)
    aligned, _ = align_labels_batch([labels], words, np.array([len(words)]), np.asarray(b_to_i), label_all_tokens)
    return aligned.to_pylist()[0]


def align_labels_batch(tags: Sequence[Sequence[int]], word: np.ndarray, n_tokens: np.ndarray, b_to_i: np.ndarray,
                       label_all_tokens: bool = True) -> tuple[pa.ListArray, np.ndarray]:
    """:func:`align_labels_with_tokens` for a batch of sentences at once, on flat arrays (no Python step per
    token). ``word``: each token's word index in its sentence (-1 for special tokens), sentence after
    sentence, ``n_tokens[i]`` tokens each. Returns (token labels per sentence as an Arrow list column, whether
    each sentence lost words to truncation)."""
    n = len(n_tokens)
    n_tags = np.fromiter(map(len, tags), np.int64, n)
    special = word < 0
    row = np.repeat(np.arange(n), n_tokens)
    tag_starts = np.cumsum(n_tags) - n_tags
    flat_tags = np.fromiter(chain.from_iterable(tags), np.int64, int(n_tags.sum()))
    label = flat_tags[np.where(special, 0, tag_starts[row] + word)] if flat_tags.size else np.zeros_like(word)
    token_starts = np.cumsum(n_tokens) - n_tokens
    previous = np.empty_like(word)
    previous[1:] = word[:-1]
    previous[token_starts[n_tokens > 0]] = -1  # a sentence's first token follows nothing
    continuation = ~special & (word == previous)
    label = np.where(continuation, b_to_i[label] if label_all_tokens else -100, label)
    label[special] = -100
    last_word = np.full(n, -1, np.int64)
    if word.size:
        nonempty = n_tokens > 0
        last_word[nonempty] = np.maximum.reduceat(word, token_starts[nonempty])
    return list_column(label, n_tokens), last_word + 1 < n_tags


def check_tags(split: str, ds: datasets.Dataset, names: list[str]) -> None:
    """Every tag inside the label space, as many tags as words: whole columns through Arrow, no row loop."""
    import pyarrow.compute as pc

    table = ds.select_columns(["tokens", "ner_tags"]).with_format("arrow")[:]
    tags, tokens = table.column("ner_tags"), table.column("tokens")
    flat = pc.list_flatten(tags).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    bad = flat[(flat < 0) | (flat >= len(names))]
    if bad.size:
        raise TaskDataError(f"ner: split {split!r} has {bad.size} tag(s) outside the label space "
                            f"0..{len(names) - 1} ({names}), e.g. {sorted(set(bad.tolist()))[:5]}. "
                            "Fix the data or preprocess.label_names.")
    n_words = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    n_tags = pc.list_value_length(tags).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(n_words != n_tags)
    if rows.size:
        i = int(rows[0])
        raise TaskDataError(f"ner: split {split!r} has {rows.size} row(s) whose tokens and ner_tags "
                            f"differ in length (row {i}: {n_words[i]} words, {n_tags[i]} tags)")


def label_names_of(ds: datasets.Dataset, configured: list[str]) -> list[str]:
    feature = ds.features["ner_tags"]
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        names = list(inner.names)
        if configured and configured != names:
            raise ConfigError(f"preprocess.label_names: {configured} differs from the dataset's names {names}")
        return names
    if configured:
        return list(configured)
    raise TaskDataError("ner: the ner_tags column has no label names (not a ClassLabel sequence). "
                        "Give them in id order with preprocess.label_names, e.g. ['O','B-PER','I-PER',...]")


class NerTask(Task):
    name = "ner"
    description = "Token classification (NER) with seqeval"
    preprocess_config = NerPreprocessConfig
    evaluate_config = EvaluateConfig
    required_columns = ("tokens", "ner_tags")
    pipeline_task = "token-classification"
    preprocess_version = "2"
    headline_metric = "overall_f1"

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: NerPreprocessConfig = job.preprocess  # type: ignore[assignment]
        self.check_columns(raw)
        names = label_names_of(raw["train"], cfg.label_names)
        for split, ds in raw.items():
            check_tags(split, ds, names)
        b_to_i = b_to_i_map(names)
        max_length = cfg.max_length or min(tokenizer.model_max_length, 100_000)

        tokenizer([["word"]], is_split_into_words=True)  # the tokenizer's own checks of word input (e.g. RoBERTa's)
        encode = WordEncoder(tokenizer, max_length)  # each distinct word tokenized once, over both splits

        def tokenize_and_align(batch: dict[str, list]) -> pa.Table:
            # Input ids and labels only: the collator's padding makes the attention mask, and single-sentence
            # token type ids are all 0 (what the model assumes without them). A third less to build and store.
            # tokenizer(words, is_split_into_words=True, truncation=True, max_length=...) as flat arrays
            ids, words, lengths = encode(batch["tokens"])
            labels, truncated = align_labels_batch(batch["ner_tags"], words, lengths, b_to_i, cfg.label_all_tokens)
            # an Arrow table: the labels column is built whole (datasets would convert per-row arrays one by one)
            return pa.table({"input_ids": list_column(ids, lengths), "labels": labels, "_truncated": truncated})


        splits, truncated = {}, {}
        for split, ds in raw.items():
            mapped = ds.map(tokenize_and_align, batched=True, batch_size=cfg.map_batch_size,
                            num_proc=cfg.num_proc if cfg.num_proc > 1 else None,
                            remove_columns=ds.column_names, desc=f"tokenize {split}",
                            new_fingerprint=fresh_fingerprint())
            truncated[split] = int(sum(column_values(mapped, "_truncated")))
            splits[split] = mapped.remove_columns("_truncated")
        return Prepared(splits=splits, info={"label_names": names, "truncated_examples": truncated,
                                             "max_length": max_length})

    def build_model(self, job: JobConfig, manifest: Any, tokenizer: Any) -> Any:
        from transformers import AutoConfig, AutoModelForTokenClassification

        from nlpjobs.models import resolve_model

        names = manifest.info["label_names"]
        source = resolve_model(job.model.name)
        existing = AutoConfig.from_pretrained(source, revision=job.model.revision)
        trained_head = any(a.endswith("ForTokenClassification") for a in existing.architectures or [])
        if trained_head and existing.num_labels != len(names):
            raise TaskDataError(
                f"ner: {job.model.name} already has a token-classification head with {existing.num_labels} labels "
                f"({list(existing.id2label.values())}) but the dataset has {len(names)} ({names}). Start from the "
                "base encoder, or use data whose label set matches the head.")
        if trained_head and [existing.id2label[i] for i in range(len(names))] != names:
            raise TaskDataError(f"ner: the head of {job.model.name} orders its labels {list(existing.id2label.values())}"
                                f" but the dataset uses {names}; map the dataset's labels to the head's ids first.")
        model = AutoModelForTokenClassification.from_pretrained(
            source, revision=job.model.revision, num_labels=len(names),
            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        if model.config.num_labels != len(names):
            raise TaskDataError(f"ner: model head has {model.config.num_labels} outputs but the dataset has "
                                f"{len(names)} labels {names}")
        return model

    def random_guess_loss(self, model: Any, batch: dict[str, Any]) -> float | None:
        import math

        return math.log(model.config.num_labels)

    def load_trained(self, model_dir: str) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(model_dir)

    def collator(self, tokenizer: Any, model: Any) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer=tokenizer)

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        from nlpjobs.metrics import load_metric
        from nlpjobs.tasks.evaluation import collect

        names = ctx.manifest.info["label_names"]

        def step(batch: dict[str, Any], outputs: Any) -> dict[str, tuple[Any, int]]:
            return {"pred": (outputs.logits.argmax(dim=-1), -100), "label": (batch["labels"], -100)}

        rows = collect(ctx, model, loader, step)
        predictions, references = [], []
        for pred, label in zip(rows["pred"], rows["label"]):
            keep = label != -100
            predictions.append([names[p] for p in pred[keep]])
            references.append([names[t] for t in label[keep]])
        result = load_metric("seqeval").compute(predictions=predictions, references=references)
        metrics: dict[str, Any] = {k: float(v) for k, v in result.items() if k.startswith("overall_")}
        metrics["per_entity"] = {k: {m: float(x) for m, x in v.items()} for k, v in result.items()
                                 if isinstance(v, dict)}
        metrics["examples"] = len(predictions)
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        keys = ("overall_precision", "overall_recall", "overall_f1", "overall_accuracy")
        return "  ".join(f"{k.removeprefix('overall_')}={metrics[k]:.4f}" for k in keys if k in metrics)

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        from transformers import pipeline

        pipe = pipeline("token-classification", model=model_dir, tokenizer=model_dir,
                        aggregation_strategy="simple", device=-1)
        return [[{**e, "score": float(e["score"])} for e in pipe(str(x))] for x in inputs]
