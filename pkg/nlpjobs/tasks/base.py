"""The contract every task implements. A task owns only what is task-specific: column checks,
tokenization, the collator, the model head, the metric, post-processing and the pipeline. The
engine, storage, config, CLI and checkpointing are shared.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import datasets
import numpy as np
import pyarrow as pa

from nlpjobs.config import ConfigError, EvaluateConfig, JobConfig, PreprocessConfig
from nlpjobs.data.sources import TaskDataError  # noqa: F401 (the tasks raise it; defined where raw data is read)
from nlpjobs.train.protocol import EvalContext

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from nlpjobs.data.shards import Manifest


def column_values(ds: datasets.Dataset, name: str) -> list[Any]:
    """Column ``name`` of ``ds`` as a Python list, read in one Arrow pass.

    ``ds[name]`` is a lazy ``Column`` in datasets 4: iterating it formats one row at a time (about 70x slower
    than this on a 6,000-row column of strings).
    """
    return ds.select_columns([name]).with_format("arrow")[:].column(name).to_pylist()


def fresh_fingerprint() -> str:
    """A new random fingerprint for ``Dataset.map``/``filter`` in ``prepare()``.

    Without one, datasets pickles the function, with the tokenizer it closes over (tens of ms a call), only to
    name a cache file. The preprocess stage reuses its own shards by cache key and never datasets' cache, so a
    random name loses nothing: every run recomputes, as it did.
    """
    return uuid.uuid4().hex


def list_column(values: np.ndarray, row_lengths: np.ndarray) -> pa.ListArray:
    """Rows of ``values`` (flat, row after row, ``row_lengths[i]`` each) as an Arrow list column, in one copy.

    ``Dataset.map`` takes it as is; a list of per-row NumPy arrays would be converted row by row (a third of
    NER preprocessing on CoNLL).
    """
    offsets = np.zeros(len(row_lengths) + 1, dtype=np.int64)
    np.cumsum(row_lengths, out=offsets[1:])
    if offsets[-1] != len(values):
        raise ValueError(f"{len(values)} values for rows of {int(offsets[-1])} in all")
    if offsets[-1] > np.iinfo(np.int32).max:  # Arrow list offsets are int32; one map batch is far below
        raise ValueError(f"{int(offsets[-1])} values in one list column; use a smaller map_batch_size")
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


class PredictInputError(ConfigError):
    """A predict input the task's pipeline cannot take (checked before the model loads)."""


PIPELINE_INPUT_FIELDS: dict[str, tuple[str, ...]] = {"question-answering": ("question", "context")}
"""The transformers pipelines that take a mapping instead of text, and the fields they need."""


def mapping_problem(item: Any, fields: Sequence[str], task: str) -> str | None:
    """What keeps ``item`` from being a mapping with a non-empty string under each of ``fields``, or None."""
    shape = "{" + ", ".join(f'"{f}": "..."' for f in fields) + "}"
    if not isinstance(item, dict):
        return f"{task} needs a JSON object {shape}, got {item!r}"
    missing = [f for f in fields if f not in item]
    if missing:
        return f"{task} needs a JSON object {shape}; this one lacks {missing} (it has {sorted(item)})"
    empty = [f for f in fields if not isinstance(item[f], str) or not item[f].strip()]
    if empty:
        return f"{task} needs non-empty text in {empty}, got {({f: item[f] for f in empty})!r}"
    return None


@dataclass
class Prepared:
    """Output of a task's preprocessing: tokenized splits plus facts for the manifest."""

    splits: dict[str, datasets.Dataset]
    """At least 'train' and 'eval' (model features); tasks may add e.g. 'eval_examples'."""
    info: dict[str, Any] = field(default_factory=dict)
    """Task facts the later stages need (label names, truncation counts, skipped examples...)."""
    tokenizer: Any = None
    """A tokenizer trained by prepare() on the raw data (e.g. SentencePiece); when set, it replaces the one
    from load_tokenizer() and is the one stored with the dataset."""


class Task:
    """Base class of the registered tasks."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    preprocess_config: ClassVar[type[PreprocessConfig]] = PreprocessConfig
    evaluate_config: ClassVar[type[EvaluateConfig]] = EvaluateConfig
    required_columns: ClassVar[tuple[str, ...]] = ()
    """Columns the raw data must have (after data.columns mapping)."""
    model_columns: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "labels")
    """Columns of the 'train'/'eval' splits fed to the model's forward()."""
    pipeline_task: ClassVar[str] = ""
    """The transformers pipeline used by `predict`."""
    preprocess_version: ClassVar[str] = "1"
    """Bump when the task's preprocessing output changes; it is part of the cache key."""
    headline_metric: ClassVar[str] = ""
    """The metric printed in summaries."""
    groups_by_length: ClassVar[bool] = True
    """train.group_by_length where the job leaves it unset."""

    # ---- configuration --------------------------------------------------------------------
    def validate_job(self, job: JobConfig) -> None:
        """Task-specific config checks (run before any compute), predict.inputs included."""
        if not job.data.source:
            raise ConfigError("data.source: missing; e.g. 'hub:tomaarsen/conll2003' or 'offline:conll2003'")
        self.check_predict_inputs(job.predict.inputs, [f"predict.inputs[{i}]" for i in range(len(job.predict.inputs))])

    # ---- preprocess -----------------------------------------------------------------------
    def check_columns(self, raw: datasets.DatasetDict) -> None:
        for split, ds in raw.items():
            missing = [c for c in self.required_columns if c not in ds.column_names]
            if missing:
                raise TaskDataError(
                    f"{self.name}: split {split!r} lacks required column(s) {missing}; it has {ds.column_names}. "
                    "Map your columns with data.columns, e.g. --set data.columns.tokens=words"
                )
            if len(ds) == 0:
                raise TaskDataError(f"{self.name}: split {split!r} is empty; check data.train_split/eval_split")

    def load_tokenizer(self, job: JobConfig) -> Any:
        from transformers import AutoTokenizer

        from nlpjobs.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(job.model.name), revision=job.model.revision)
        if not tok.is_fast:
            raise ConfigError(f"model.name: {job.model.name!r} has no fast (Rust) tokenizer; {self.name} needs "
                              "word_ids/offset mappings. Pick a model with a tokenizer.json.")
        return tok

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        raise NotImplementedError

    # ---- train / evaluate -----------------------------------------------------------------
    def build_model(self, job: JobConfig, manifest: Manifest, tokenizer: Any) -> Any:
        """A fresh model for training (pretrained body, task head)."""
        raise NotImplementedError

    def load_trained(self, model_dir: str) -> Any:
        """The trained model saved by `train`."""
        raise NotImplementedError

    def collator(self, tokenizer: Any, model: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from transformers import default_data_collator

        return default_data_collator

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        """Training loss of one micro-batch; tasks with a custom objective override this."""
        return model(**batch).loss

    def head_batch(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        """For language-model heads whose loss is the head's plain cross-entropy (train/speed/head_loss.py): the
        model inputs without labels and each logit position's target (-100: ignored); None elsewhere."""
        return None

    def random_guess_loss(self, model: Any, batch: dict[str, Any]) -> float | None:
        """Cross-entropy of a uniform guess over the classes the loss ranges over:
        ln(vocabulary) for language-model heads; tasks with other heads override this."""
        import math

        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        return math.log(vocab) if vocab else None

    def evaluate(self, ctx: EvalContext, model: Any, loader: DataLoader) -> dict[str, Any]:
        """Metrics of ``model`` on the prepared 'eval' split (every process calls this)."""
        raise NotImplementedError

    def summary(self, metrics: dict[str, Any]) -> str:
        """One line with the task's key numbers."""
        value = metrics.get(self.headline_metric)
        return f"{self.headline_metric}={value:.4f}" if isinstance(value, float) else str(metrics)

    # ---- predict --------------------------------------------------------------------------
    def input_problem(self, item: Any) -> str | None:
        """What is wrong with one predict input (what was expected, and what came), or None. Checked before the
        model loads. Text pipelines take non-empty text; question answering a mapping of non-empty strings
        (``PIPELINE_INPUT_FIELDS``). A task with more to check overrides this and calls it first."""
        fields = PIPELINE_INPUT_FIELDS.get(self.pipeline_task)
        if fields:
            return mapping_problem(item, fields, self.name)
        if not isinstance(item, str):
            return f"{self.name} needs a text string, got {item!r}"
        if not item.strip():
            return f"{self.name} needs non-empty text, got {item!r}"
        return None

    def check_predict_inputs(self, inputs: Sequence[Any], names: Sequence[str] | None = None) -> None:
        """Raise PredictInputError naming the first bad input (``names[i]``, default 'predict input <i>')."""
        for i, item in enumerate(inputs):
            problem = self.input_problem(item)
            if problem:
                raise PredictInputError(f"{names[i] if names else f'predict input {i}'}: {problem}")

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        """The pipeline's outputs for ``inputs`` (already checked with :meth:`check_predict_inputs`)."""
        from transformers import pipeline

        pipe = pipeline(self.pipeline_task, model=model_dir, tokenizer=model_dir, device=-1)
        return [pipe(x) for x in inputs]

    # ---- batch prediction over a dataset (`nlpjobs batch-predict`) ---------------------------
    predict_columns: ClassVar[tuple[str, ...]] = ()
    """Columns of a dataset's rows (after predict.dataset.columns) that make each row's pipeline input; empty: the
    task has no batch prediction over datasets, and ``batch_predict_unsupported`` says why."""
    batch_predict_unsupported: ClassVar[str] = "it has no batch prediction over datasets yet"

    def dataset_inputs(self, job: JobConfig, columns: dict[str, list[Any]], first_row: int) -> list[Any]:
        """Each row's pipeline input, in row order, from the rows' ``predict_columns`` (one Python list per column).
        A row the pipeline cannot take is a TaskDataError naming its index (``first_row`` + its position). Here: the
        text of the one column, as is (empty text included)."""
        name = self.predict_columns[0]
        for i, value in enumerate(columns[name]):
            if not isinstance(value, str):
                raise TaskDataError(f"{self.name}: row {first_row + i}: {name} is {value!r}, not text; map the column "
                                    f"holding the text with predict.dataset.columns.{name}")
        return list(columns[name])

    def batch_predictor(self, model_dir: str, device: int, batch_size: int) -> Callable[[Iterable[Any]], Iterator[Any]]:
        """The task's pipeline, loaded once on ``device`` (-1: the CPU, else a CUDA index): a function that runs an
        iterable of inputs through it ``batch_size`` at a time and yields one output per input, in order, as
        :meth:`predict` gives it for that input (up to float rounding in padded batches)."""
        raise ConfigError(f"task {self.name}: batch prediction over a dataset is not supported: "
                          f"{self.batch_predict_unsupported}")
