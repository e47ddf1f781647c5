"""Extractive question answering: sliding windows, span labels, n-best post-processing, SQuAD EM/F1.

Unanswerable questions (SQuAD v2.0: empty answers) train with ``(0, 0)`` labels ([CLS]) and are scored with
SQuAD v2.0's no-answer rule and metric whenever the eval split has one or the model was trained with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import datasets
import numpy as np

from nlpjobs.config import ConfigError, EvaluateConfig, JobConfig, PreprocessConfig
from nlpjobs.data import squad_json
from nlpjobs.tasks import qa_features
from nlpjobs.tasks.base import (
    EvalContext,
    Prepared,
    Task,
    TaskDataError,
    column_values,
    fresh_fingerprint,
    mapping_problem,
)

EXAMPLE_COLUMNS = ["id", "context", "question", "answers"]
UNANSWERABLE_ATTR = "nlpjobs_unanswerable_questions"
"""Model config attribute: how many unanswerable training questions the model saw (set only when some)."""


def offsets_array(column: Any) -> np.ndarray:
    """[features, tokens, 2] offsets from an Arrow list<list<int>> column (windows padded to one length)."""
    import pyarrow.compute as pc

    n = len(column)
    if n == 0:
        return np.zeros((0, 0, 2), dtype=np.int64)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(pc.list_flatten(column)).to_numpy(zero_copy_only=False)
    if (lengths == lengths[0]).all() and flat.size == n * int(lengths[0]) * 2:
        return flat.reshape(n, int(lengths[0]), 2)
    rows = column.to_pylist()  # ragged windows: pad with (-1, -1), never a valid context offset
    out = np.full((n, int(lengths.max()), 2), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


SEQUENCE_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
"""Per-token model columns of a feature (start/end positions are one index each)."""


def collate_trimmed(features: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack fixed-width features and cut the batch after its last real token (dynamic padding).

    Features are stored padded to ``max_length`` (as the course stores them); the columns after every
    row's last attended token are padding for the whole batch, and the encoder would spend most of a
    step on them (SQuAD-like windows are mostly shorter than 384). Right padding keeps positions and
    labels unchanged; the loss's softmax then ranges over the batch's window instead of 384 positions,
    as in Hugging Face's run_qa.py with dynamic padding.
    """
    from transformers import default_data_collator

    batch = default_data_collator(features)
    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.numel() == 0:
        return batch
    full = mask.shape[1]
    attended = mask.any(dim=0).nonzero()
    width = int(attended.max()) + 1 if attended.numel() else 1
    if width == full:
        return batch
    for name in ("start_positions", "end_positions"):
        if name in batch and int(batch[name].max()) >= width:
            raise ValueError(f"qa: a {name} label points at padding (index {int(batch[name].max())}, last "
                             f"attended token {width - 1}); the features are not right-padded as prepare() "
                             "writes them. Preprocess again.")
    for name in SEQUENCE_COLUMNS:
        if name in batch and batch[name].dim() == 2 and batch[name].shape[1] == full:
            batch[name] = batch[name][:, :width]
    return batch


def stack_padded(rows: list[np.ndarray], pad: float) -> np.ndarray:
    """[rows, longest] array of 1-D rows of different lengths (batches cut to different widths), padded."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), pad, dtype=rows[0].dtype if rows else np.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def predict_answers(start_logits: np.ndarray, end_logits: np.ndarray, features: datasets.Dataset,
                    examples: dict[str, list[Any]], n_best: int = 20, max_answer_length: int = 30,
                    with_null: bool = False) -> dict[str, str]:
    """Best answer per example id from the eval features' logits (what evaluation does after the forward);
    ``with_null``: ``""`` where the [CLS] null score beats the best span (SQuAD v2.0).

    Whole columns through Arrow: formatting every column of every feature row costs more than the search.
    Logits narrower than the stored windows (batches cut after their last real token) are scored on that
    prefix; the offsets cut off must all be non-context (-1), else the logits do not belong to the features.
    """
    columns = features.select_columns(["example_id", "offset_mapping"]).with_format("arrow")[:]
    offsets = offsets_array(columns.column("offset_mapping"))
    width = np.asarray(start_logits).shape[-1]
    if offsets.ndim == 3 and offsets.shape[1] > width:
        if (offsets[:, width:] >= 0).any():
            raise ValueError(f"qa: logits cover {width} tokens per feature but context tokens lie beyond them "
                             f"(windows of {offsets.shape[1]}); the logits do not match the eval features")
        offsets = offsets[:, :width]
    postprocess = qa_features.postprocess_with_null if with_null else qa_features.postprocess_predictions
    return postprocess(start_logits, end_logits, columns.column("example_id").to_pylist(), offsets,
                       {"id": examples["id"], "context": examples["context"]}, n_best, max_answer_length)


def squad_scores(predictions: dict[str, str], examples: dict[str, list[Any]]) -> dict[str, float]:
    """SQuAD v1.1 EM and F1 of one predicted answer per example id against the examples' gold answers."""
    from nlpjobs.metrics import load_metric

    result = load_metric("squad").compute(
        predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
        references=[{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"])])
    return {"exact_match": float(result["exact_match"]), "f1": float(result["f1"])}


def squad_v2_scores(predictions: dict[str, str], examples: dict[str, list[Any]]) -> dict[str, float]:
    """SQuAD v2.0 exact (as exact_match) and F1 with the HasAns_*/NoAns_* breakdown; ``""`` is "no answer"."""
    from nlpjobs.metrics import load_metric

    result = load_metric("squad_v2").compute(
        predictions=[{"id": k, "prediction_text": v, "no_answer_probability": 0.0} for k, v in predictions.items()],
        references=[{"id": i, "answers": a} for i, a in zip(examples["id"], examples["answers"])])
    out: dict[str, float] = {"exact_match": float(result["exact"]), "f1": float(result["f1"])}
    for group in ("HasAns", "NoAns"):
        if f"{group}_total" in result:
            out.update({f"{group}_exact": float(result[f"{group}_exact"]), f"{group}_f1": float(result[f"{group}_f1"]),
                        f"{group}_total": int(result[f"{group}_total"])})
    return out


def check_examples(ds: datasets.Dataset, split: str) -> datasets.Dataset:
    """The split with its answers in the columnar form and string ids, after checking every row: ids present and
    unique, question and context non-empty text, answers in one of SQuAD's shapes. ``split`` names it in errors.

    Whole columns through Arrow; rows are read one by one only to name the first bad one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = ds.select_columns(["id", "question", "context", "answers"]).with_format("arrow")[:]
    ids = table.column("id")
    numeric = pa.types.is_integer(ids.type) or pa.types.is_null(ids.type)  # null: no id in any row
    if not (numeric or pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise TaskDataError(f"qa: split {split!r}: the id column holds {ids.type} values; ids are strings (or "
                            "integers), one per question")
    missing = pc.is_null(ids) if numeric else _blank(ids)
    if pc.any(missing).as_py():
        row = pc.index(missing, True).as_py()
        raise TaskDataError(f"qa: split {split!r}, row {row} has no id; give every question a unique id")
    ids = ids.cast(pa.string())
    _check_unique(ids, split)
    for name in ("question", "context"):
        column = table.column(name)
        empty = _blank(column) if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) else None
        if empty is None or pc.any(empty).as_py():
            row = 0 if empty is None else pc.index(empty, True).as_py()
            raise TaskDataError(f"qa: split {split!r}, id {ids[row].as_py()!r} has an empty {name}; it must be "
                                "non-empty text: fill it in or drop the row")
    if ds.features["id"] != datasets.Value("string"):
        ds = ds.cast_column("id", datasets.Value("string"))
    valid, columnar = squad_json.columnar_answers(table.column("answers"))
    if valid and columnar is None:
        return ds
    if columnar is None:  # some row is not plainly valid: the first that fails names itself
        answers = []
        for qid, value in zip(ids.to_pylist(), table.column("answers").to_pylist(), strict=True):
            try:
                answers.append(squad_json.parse_answers(value, f"qa: split {split!r}, id {qid!r}"))
            except squad_json.SquadFormatError as exc:
                raise TaskDataError(str(exc)) from None
        columnar = pa.array(answers, squad_json.ANSWERS_TYPE)
    table = ds.with_format("arrow")[:]
    return datasets.Dataset(table.set_column(table.schema.get_field_index("answers"), "answers", columnar))


def _blank(column: Any) -> Any:
    """Per row of a string column: null, empty or only whitespace."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.or_(pc.equal(pc.utf8_length(column), 0), pc.utf8_is_space(column)), True)


def _check_unique(ids: Any, split: str) -> None:
    import pyarrow.compute as pc

    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        qid, n = repeated[0]["values"].as_py(), repeated[0]["counts"].as_py()
        raise TaskDataError(f"qa: split {split!r} has {len(repeated)} question id(s) used more than once (first: "
                            f"{qid!r}, {n} times); evaluation merges the predictions of one id, so every question "
                            "needs its own id: renumber the duplicates or drop them")


def unanswerable_count(answers: list[dict[str, list[Any]]]) -> int:
    """Questions without a gold answer (SQuAD v2.0's unanswerable ones)."""
    return sum(not a["text"] for a in answers)


@dataclass
class QaPreprocessConfig(PreprocessConfig):
    """Sliding-window features over question + context."""

    max_length: int = 384
    """Tokens per feature (question + context window), stored padded to this length; each training and evaluation batch is cut after its last real token."""
    stride: int = 128
    """Tokens of overlap between consecutive context windows."""
    on_bad_answer: Literal["fail", "skip"] = "fail"
    """Training examples whose answer_start does not point at the answer text: fail, or skip them (counted)."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.max_length < 16:
            raise ConfigError(f"{prefix}.max_length: got {self.max_length}, must be >= 16")
        if not 0 <= self.stride < self.max_length // 2:
            raise ConfigError(f"{prefix}.stride: got {self.stride}, must be >= 0 and below max_length / 2")


@dataclass
class QaEvaluateConfig(EvaluateConfig):
    """Post-processing of start/end logits into answer spans."""

    n_best: int = 20
    """Top start and end indices considered per feature."""
    max_answer_length: int = 30
    """Longest answer in tokens."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.n_best < 1 or self.max_answer_length < 1:
            raise ConfigError(f"{prefix}.n_best/max_answer_length: must be >= 1")


class QaTask(Task):
    name = "qa"
    description = "Extractive question answering with SQuAD v1.1 EM/F1"
    preprocess_config = QaPreprocessConfig
    evaluate_config = QaEvaluateConfig
    required_columns = tuple(EXAMPLE_COLUMNS)
    model_columns = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
    pipeline_task = "question-answering"
    preprocess_version = "2"
    headline_metric = "f1"

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: QaPreprocessConfig = job.preprocess  # type: ignore[assignment]
        self.check_columns(raw)
        if tokenizer.padding_side != "right":
            raise ConfigError("model.name: qa assumes right padding with [CLS] first (XLNet-style left padding "
                              "is not supported)")
        names = {"train": job.data.train_split, "eval": job.data.eval_split}
        raw = datasets.DatasetDict({key: check_examples(ds, names[key]) for key, ds in raw.items()})
        train = raw["train"]
        train_answers = column_values(train, "answers")
        bad = qa_features.find_answer_mismatches(column_values(train, "context"), train_answers, unanswerable_ok=True)
        if bad:
            example = train[bad[0]]
            detail = (f"{len(bad)} of {len(train)} training examples have an answer_start that does not point at "
                      f"the answer text (first: id {example['id']!r}, answer {example['answers']['text'][:1]} at "
                      f"{example['answers']['answer_start'][:1]}, in a context of {len(example['context'])} "
                      "characters)")
            if cfg.on_bad_answer == "fail":
                raise TaskDataError(f"qa: {detail}. Fix the data or set preprocess.on_bad_answer=skip.")
            keep = sorted(set(range(len(train))) - set(bad))
            if not keep:
                raise TaskDataError(f"qa: {detail}; nothing left to train on.")
            train = train.select(keep)
            train_answers = [train_answers[i] for i in keep]

        def train_features(batch: dict[str, list]) -> dict[str, list]:
            return qa_features.prepare_train_features(batch["question"], batch["context"], batch["answers"],
                                                      tokenizer, cfg.max_length, cfg.stride)

        def eval_features(batch: dict[str, list]) -> dict[str, list]:
            return qa_features.prepare_eval_features(batch["id"], batch["question"], batch["context"], tokenizer,
                                                     cfg.max_length, cfg.stride)

        num_proc = cfg.num_proc if cfg.num_proc > 1 else None
        splits = {
            "train": train.map(train_features, batched=True, batch_size=cfg.map_batch_size, num_proc=num_proc,
                               remove_columns=train.column_names, desc="train features",
                               new_fingerprint=fresh_fingerprint()),
            "eval": raw["eval"].map(eval_features, batched=True, batch_size=cfg.map_batch_size, num_proc=num_proc,
                                    remove_columns=raw["eval"].column_names, desc="eval features",
                                    new_fingerprint=fresh_fingerprint()),
            "eval_examples": raw["eval"].select_columns(EXAMPLE_COLUMNS),
        }
        with_answer = int(np.count_nonzero(np.asarray(column_values(splits["train"], "start_positions"))))
        return Prepared(splits=splits, info={"skipped_bad_answers": len(bad) if bad else 0,
                                             "train_features_with_answer": with_answer,
                                             "train_unanswerable": unanswerable_count(train_answers),
                                             "eval_unanswerable": unanswerable_count(
                                                 column_values(raw["eval"], "answers")),
                                             "max_length": cfg.max_length, "stride": cfg.stride})

    def build_model(self, job: JobConfig, manifest: Any, tokenizer: Any) -> Any:
        from transformers import AutoModelForQuestionAnswering

        from nlpjobs.models import resolve_model

        model = AutoModelForQuestionAnswering.from_pretrained(resolve_model(job.model.name),
                                                              revision=job.model.revision)
        unanswerable = int(manifest.info.get("train_unanswerable", 0))
        if unanswerable:  # saved with the model: predict's pipeline may then answer "no answer"
            setattr(model.config, UNANSWERABLE_ATTR, unanswerable)
        return model

    def collator(self, tokenizer: Any, model: Any) -> Any:
        return collate_trimmed

    def random_guess_loss(self, model: Any, batch: dict[str, Any]) -> float | None:
        import math

        return math.log(batch["input_ids"].shape[1])  # start/end positions over the batch's (cut) window

    def load_trained(self, model_dir: str) -> Any:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(model_dir)

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        from nlpjobs.data.shards import load_split
        from nlpjobs.tasks.evaluation import collect

        cfg: QaEvaluateConfig = ctx.job.evaluate  # type: ignore[assignment]

        def step(batch: dict[str, Any], outputs: Any) -> dict[str, tuple[Any, int]]:
            return {"start": (outputs.start_logits, -10_000), "end": (outputs.end_logits, -10_000)}

        rows = collect(ctx, model, loader, step)
        features = load_split(ctx.manifest, "eval")
        examples = load_split(ctx.manifest, "eval_examples")
        if len(rows["start"]) < len(features):  # a prefix of the features (doctor's evaluation check)
            features = features.select(range(len(rows["start"])))
            wanted = set(column_values(features, "example_id"))
            examples = examples.select([i for i, e in enumerate(column_values(examples, "id")) if e in wanted])
        example_cols = examples.select_columns(["id", "context", "answers"]).with_format("arrow")[:].to_pydict()
        v2 = bool(unanswerable_count(example_cols["answers"]) or ctx.manifest.info.get("train_unanswerable"))
        predictions = predict_answers(stack_padded(rows["start"], -10_000), stack_padded(rows["end"], -10_000),
                                      features, example_cols, cfg.n_best, cfg.max_answer_length, with_null=v2)
        scores = squad_v2_scores(predictions, example_cols) if v2 else squad_scores(predictions, example_cols)
        return {**scores, "version_2_with_negative": v2, "examples": len(predictions), "features": len(features)}

    def summary(self, metrics: dict[str, Any]) -> str:
        line = f"EM={metrics.get('exact_match', float('nan')):.2f}  F1={metrics.get('f1', float('nan')):.2f}"
        groups = [f"{g} F1={metrics[f'{g}_f1']:.2f} ({metrics[f'{g}_total']})" for g in ("HasAns", "NoAns")
                  if f"{g}_f1" in metrics]
        return f"{line}  [SQuAD v2: {', '.join(groups)}]" if groups else line

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        items = ({"question": item["question"], "context": item["context"]} for item in inputs)
        return list(self.batch_predictor(model_dir, -1, 1)(items))

    predict_columns = ("question", "context")

    def dataset_inputs(self, job: JobConfig, columns: dict[str, list[Any]], first_row: int) -> list[Any]:
        """{question, context} per row, each non-empty text (as the pipeline needs)."""
        out = []
        for i, (question, context) in enumerate(zip(columns["question"], columns["context"])):
            item = {"question": question, "context": context}
            problem = mapping_problem(item, self.predict_columns, self.name)
            if problem:
                raise TaskDataError(f"row {first_row + i}: {problem}")
            out.append(item)
        return out

    def batch_predictor(self, model_dir: str, device: int, batch_size: int) -> Any:
        from transformers import pipeline

        pipe = pipeline("question-answering", model=model_dir, tokenizer=model_dir, device=device)
        impossible = bool(getattr(pipe.model.config, UNANSWERABLE_ATTR, 0))  # trained to say "no answer"

        def run(inputs: Any) -> Any:
            import warnings

            with warnings.catch_warnings():  # a stream of {question, context} is "a list of SQuAD examples" to 4.x
                warnings.filterwarnings("ignore", message="Passing a list of SQuAD examples", category=FutureWarning)
                results = pipe((x for x in inputs), batch_size=batch_size, handle_impossible_answer=impossible)
            for res in results:
                yield {**res, "score": float(res["score"])}

        return run
