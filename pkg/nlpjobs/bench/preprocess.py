"""Preprocessing throughput: nlpjobs' task ``prepare()`` and ``preprocess`` stage against the course recipe
(``Dataset.map(batched=True)`` with the course's Python functions) and the tokenizer alone, on the same raw
data and tokenizer (the task's offline preset in jobs/local/).

The ``course_*`` functions are the course's code (SPEC §1.3, §6.3, §6.4) as written there, with only the
tokenizer and constants passed in instead of read from globals.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from nlpjobs.bench.common import Sizes, load_preset, log, timed
from nlpjobs.bench.records import Sample
from nlpjobs.tasks.qa_features import course_label_loop

# ---- the course's recipes -----------------------------------------------------------------------


def course_align_labels_with_tokens(labels: list[int], word_ids: list[int | None]) -> list[int]:
    """SPEC §1.3 (L251-272): B-X (odd id) on a continuation token becomes I-X (id + 1)."""
    new_labels = []
    current_word = None
    for word_id in word_ids:
        if word_id != current_word:
            # Start of a new word!
            current_word = word_id
            label = -100 if word_id is None else labels[word_id]
            new_labels.append(label)
        elif word_id is None:
            # Special token
            new_labels.append(-100)
        else:
            # Same word as previous token
            label = labels[word_id]
            # If the label is B-XXX we change it to I-XXX
            if label % 2 == 1:
                label += 1
            new_labels.append(label)
    return new_labels


def course_ner_map_fn(tokenizer: Any) -> Callable[[dict[str, list]], Any]:
    """SPEC §1.3 (L296-308): ``tokenize_and_align_labels`` for ``Dataset.map(batched=True)``."""

    def tokenize_and_align_labels(examples: dict[str, list]) -> Any:
        tokenized_inputs = tokenizer(examples["tokens"], truncation=True, is_split_into_words=True)
        all_labels = examples["ner_tags"]
        new_labels = []
        for i, labels in enumerate(all_labels):
            word_ids = tokenized_inputs.word_ids(i)
            new_labels.append(course_align_labels_with_tokens(labels, word_ids))
        tokenized_inputs["labels"] = new_labels
        return tokenized_inputs

    return tokenize_and_align_labels


def course_qa_train_fn(tokenizer: Any, max_length: int = 384, stride: int = 128) -> Callable[[dict], Any]:
    """SPEC §6.3 (L5243-5296): ``preprocess_training_examples``."""

    def preprocess_training_examples(examples: dict[str, list]) -> Any:
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        offset_mapping = inputs.pop("offset_mapping")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        start_positions, end_positions = course_label_loop(inputs, offset_mapping, sample_map, examples["answers"])
        inputs["start_positions"] = start_positions
        inputs["end_positions"] = end_positions
        return inputs

    return preprocess_training_examples


def course_qa_eval_fn(tokenizer: Any, max_length: int = 384, stride: int = 128) -> Callable[[dict], Any]:
    """SPEC §6.4 (L5318-5370): ``preprocess_validation_examples`` (non-context offsets become None)."""

    def preprocess_validation_examples(examples: dict[str, list]) -> Any:
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        example_ids = []
        for i in range(len(inputs["input_ids"])):
            sample_idx = sample_map[i]
            example_ids.append(examples["id"][sample_idx])
            sequence_ids = inputs.sequence_ids(i)
            offset = inputs["offset_mapping"][i]
            inputs["offset_mapping"][i] = [o if sequence_ids[k] == 1 else None for k, o in enumerate(offset)]
        inputs["example_id"] = example_ids
        return inputs

    return preprocess_validation_examples


# ---- one task's case ----------------------------------------------------------------------------


@dataclass
class Case:
    """What the preprocessing figure of one task runs, all on the same raw data and tokenizer."""

    task: str
    job: Any
    raw: datasets.DatasetDict
    tokenizer: Any
    course: Callable[[datasets.DatasetDict], dict[str, datasets.Dataset]]
    tokenizer_only: Callable[[datasets.DatasetDict], None]
    compare: Callable[[Any, dict[str, datasets.Dataset]], str | None]
    """(nlpjobs' Prepared, course splits) -> None when they hold the same model inputs, else the difference."""
    note: str | None = None
    stage_job: Any = None
    """The job the whole-stage run preprocesses (same raw data); None: ``job``."""

    @property
    def examples(self) -> int:
        return sum(len(ds) for ds in self.raw.values())


def _map_splits(raw: datasets.DatasetDict, fns: dict[str, Callable[[dict], Any]]) -> dict[str, datasets.Dataset]:
    return {split: raw[split].map(fns[split], batched=True, remove_columns=raw[split].column_names)
            for split in raw}


def _batches(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def _same_columns(ours: datasets.Dataset, theirs: datasets.Dataset, columns: list[str]) -> str | None:
    if len(ours) != len(theirs):
        return f"{len(ours)} rows vs the course's {len(theirs)}"
    for column in columns:
        if ours[column] != theirs[column]:
            return f"column {column!r} differs from the course's"
    return None


def ner_case(sizes: Sizes, scratch: Path) -> Case:
    """NER on real CoNLL-2003 with MiniLM's tokenizer (jobs/local/ner.yaml, sizes from ``sizes``)."""
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task

    n_train = sizes.ner_train_examples
    n_eval = sizes.ner_eval_examples
    job = load_preset("ner", [f"data.max_train_examples={n_train if n_train else 'null'}",
                              f"data.max_eval_examples={n_eval if n_eval else 'null'}"])
    task = get_task("ner")
    tokenizer = task.load_tokenizer(job)
    raw = sources.load_raw(job.data, job.train.seed)
    batch_size = job.preprocess.map_batch_size

    def course(raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        fn = course_ner_map_fn(tokenizer)
        return _map_splits(raw, {split: fn for split in raw})

    def tokenizer_only(raw: datasets.DatasetDict) -> None:
        for ds in raw.values():
            for batch in _batches(ds["tokens"], batch_size):
                tokenizer(batch, truncation=True, is_split_into_words=True)

    def compare(prepared: Any, theirs: dict[str, datasets.Dataset]) -> str | None:
        for split in raw:
            diff = _same_columns(prepared.splits[split], theirs[split], ["input_ids", "labels"])
            if diff:
                return f"{split}: {diff}"
        return None

    return Case("ner", job, raw, tokenizer, course, tokenizer_only, compare)


def replicate_qa(ds: datasets.Dataset, n: int) -> datasets.Dataset:
    """``n`` rows cycling through ``ds``, each with a distinct id."""
    rows = ds.select([i % len(ds) for i in range(n)])
    return rows.map(lambda ex, i: {"id": f"{ex['id']}-{i}"}, with_indices=True)


def qa_case(sizes: Sizes, scratch: Path) -> Case:
    """QA on the 5 real SQuAD v1.1 questions of jobs/local/qa.yaml, replicated to ``sizes.qa_examples``."""
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task

    job = load_preset("qa")
    task = get_task("qa")
    tokenizer = task.load_tokenizer(job)
    base = sources.load_raw(job.data, job.train.seed)
    raw = datasets.DatasetDict({split: replicate_qa(ds, sizes.qa_examples) for split, ds in base.items()})
    cfg = job.preprocess
    batch_size = cfg.map_batch_size

    def course(raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        return _map_splits(raw, {"train": course_qa_train_fn(tokenizer, cfg.max_length, cfg.stride),
                                 "eval": course_qa_eval_fn(tokenizer, cfg.max_length, cfg.stride)})

    def tokenizer_only(raw: datasets.DatasetDict) -> None:
        for ds in raw.values():
            questions, contexts = ds["question"], ds["context"]
            for q, c in zip(_batches(questions, batch_size), _batches(contexts, batch_size)):
                tokenizer([x.strip() for x in q], c, max_length=cfg.max_length, truncation="only_second",
                          stride=cfg.stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                          padding="max_length")

    def compare(prepared: Any, theirs: dict[str, datasets.Dataset]) -> str | None:
        diff = _same_columns(prepared.splits["train"], theirs["train"],
                             ["input_ids", "start_positions", "end_positions"])
        if diff:
            return f"train: {diff}"
        ours_eval, course_eval = prepared.splits["eval"], theirs["eval"]
        diff = _same_columns(ours_eval, course_eval, ["input_ids", "example_id"])
        if diff:
            return f"eval: {diff}"
        ours_offsets = [[None if o[0] < 0 else list(o) for o in row] for row in ours_eval["offset_mapping"]]
        course_offsets = [[None if o is None else list(o) for o in row] for row in course_eval["offset_mapping"]]
        return None if ours_offsets == course_offsets else "eval: offset_mapping differs from the course's"

    note = (f"the 5 SQuAD sample questions replicated to {sizes.qa_examples} examples per split "
            "(contexts are short: 1 feature per example)")
    # The whole stage reads the same replicated examples back from JSON-lines files.
    files = scratch / "qa-raw"
    files.mkdir(parents=True, exist_ok=True)
    for split, ds in raw.items():
        ds.to_json(str(files / f"{split}.jsonl"), lines=True)
    stage_job = load_preset("qa", [f"data.source=files:{files}", "data.train_split=train", "data.eval_split=eval"])
    return Case("qa", job, raw, tokenizer, course, tokenizer_only, compare, note, stage_job)


CASES: dict[str, Callable[[Sizes, Path], Case]] = {"ner": ner_case, "qa": qa_case}
"""Tasks whose preprocessing figure is implemented."""


# ---- measuring ----------------------------------------------------------------------------------


def _stage_end_to_end(job: Any, scratch: Path) -> float:
    """Seconds of the whole ``nlpjobs preprocess`` stage (load raw data and tokenizer, prepare, write and
    commit shards) into a fresh file:// storage root, so the cache key never short-circuits it."""
    import dataclasses

    from nlpjobs import stages

    root = scratch / f"store-{uuid.uuid4().hex[:8]}"
    fresh = dataclasses.replace(job, storage=f"file://{root}")
    try:
        result, seconds = timed(lambda: stages.preprocess(fresh))
        if result.reused:
            raise RuntimeError("preprocess reused a committed dataset; the timing would be meaningless")
        return seconds
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _head(raw: datasets.DatasetDict, n: int = 64) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: ds.select(range(min(n, len(ds)))) for split, ds in raw.items()})


def measure(task_name: str, sizes: Sizes, scratch: Path) -> list[Sample]:
    """``sizes.repeats`` repeats of: nlpjobs prepare(), the course's map, the tokenizer alone, the whole stage.

    Each implementation first runs once on 64 examples (untimed warm-up); the order of the three timed
    runs rotates from repeat to repeat so none always runs first.
    """
    from nlpjobs.tasks import get_task

    datasets.disable_caching()  # no map result may be reused across repeats (each run recomputes)
    datasets.disable_progress_bars()
    case = CASES[task_name](sizes, scratch)
    task = get_task(task_name)
    n = case.examples
    log(f"{task_name} preprocess: {n:,} raw examples ({', '.join(f'{k} {len(v):,}' for k, v in case.raw.items())}),"
        f" tokenizer {type(case.tokenizer).__name__}, {sizes.repeats} repeat(s)")
    runs: dict[str, Callable[[datasets.DatasetDict], Any]] = {
        "prepare()": lambda raw: task.prepare(case.job, raw, case.tokenizer),
        "course map": case.course,
        "tokenizer alone": case.tokenizer_only,
    }
    head = _head(case.raw)
    for fn in runs.values():
        fn(head)
    prepared = task.prepare(case.job, case.raw, case.tokenizer)
    difference = case.compare(prepared, case.course(case.raw))
    del prepared
    log(f"{task_name} preprocess: nlpjobs and course outputs "
        f"{'identical' if difference is None else 'DIFFER: ' + difference}")
    same = "same model inputs as the course (checked)" if difference is None else f"OUTPUTS DIFFER: {difference}"
    samples: list[Sample] = []
    names = list(runs)
    for r in range(sizes.repeats):
        seconds: dict[str, float] = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            _, seconds[name] = timed(lambda fn=runs[name]: fn(case.raw))
        t_stage = _stage_end_to_end(case.stage_job or case.job, scratch)
        log(f"{task_name} preprocess repeat {r + 1}/{sizes.repeats}: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()) + f", whole stage {t_stage:.2f}s")
        ours = n / seconds["prepare()"]
        samples += [
            Sample(task_name, "preprocess prepare() vs course map", "examples/s", ours, n / seconds["course map"],
                   True, note="; ".join(x for x in (case.note, same) if x)),
            Sample(task_name, "preprocess prepare() vs tokenizer alone", "examples/s", ours,
                   n / seconds["tokenizer alone"], True,
                   note="tokenizer alone: the fast tokenizer on the same texts in batches of map_batch_size, "
                        "no labels, no datasets.map"),
            Sample(task_name, "preprocess stage (load, tokenize, write shards) vs course map", "examples/s",
                   n / t_stage, n / seconds["course map"], True,
                   note="the stage includes loading the raw corpus and tokenizer and committing file:// shards"),
        ]
    return samples
