"""Preprocessing throughput: nlpjobs' task ``prepare()`` and ``preprocess`` stage against the course recipe
(``Dataset.map(batched=True)`` with the course's Python functions) and the tokenizer alone, on the same raw
data and tokenizer (the task's offline preset in jobs/local/).

The ``course_*`` functions are the course's code
as written there, with only the tokenizer and constants passed in instead of read from globals.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from bench.common import Sizes, load_preset, log, timed, timed_median
from bench.course import (
    course_clm_fn,
    course_mlm_fns,
    course_ner_map_fn,
    course_qa_eval_fn,
    course_qa_train_fn,
    course_summarization_fn,
    course_summarization_mix,
    course_translation_fn,
    course_translation_split,
)
from bench.records import Sample

# ---- the course's recipes -----------------------------------------------------------------------


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
    n_examples: int | None = None
    """Examples both implementations tokenize, where that is not every raw row (None: all raw rows)."""

    @property
    def examples(self) -> int:
        return self.n_examples if self.n_examples is not None else sum(len(ds) for ds in self.raw.values())


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


def _save_tokenizer(tokenizer: Any, folder: Path) -> str:
    """Save ``tokenizer`` to ``folder`` (a fresh one) and return its path, for model.name / preprocess.tokenizer."""
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def _same_splits(prepared: Any, theirs: dict[str, datasets.Dataset], columns: list[str]) -> str | None:
    for split in theirs:
        diff = _same_columns(prepared.splits[split], theirs[split], columns)
        if diff:
            return f"{split}: {diff}"
    return None


def _unmask(input_ids: list[int], labels: list[int]) -> list[int]:
    """The chunk before masking: every masked position (label != -100) gets its label back."""
    return [token if label == -100 else label for token, label in zip(input_ids, labels)]


def mlm_case(sizes: Sizes, scratch: Path) -> Case:
    """Masked LM on real IMDb reviews with MiniLM's tokenizer (jobs/local/mlm.yaml): ``sizes.mlm_reviews``
    training reviews and a quarter as many eval reviews, every chunk kept (no downsampling)."""
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task

    n_eval = max(1, sizes.mlm_reviews // 4)
    job = load_preset("mlm", [f"data.max_train_examples={sizes.mlm_reviews}", f"data.max_eval_examples={n_eval}",
                              "preprocess.train_size=null", "preprocess.test_size=null"])
    tokenizer = get_task("mlm").load_tokenizer(job)
    raw = sources.load_raw(job.data, job.train.seed)
    cfg = job.preprocess
    tokenize_function, group_texts = course_mlm_fns(tokenizer, cfg.chunk_size)

    def course(raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        tokenized = _map_splits(raw, {split: tokenize_function for split in raw})
        return {split: ds.map(group_texts, batched=True) for split, ds in tokenized.items()}

    def tokenizer_only(raw: datasets.DatasetDict) -> None:
        for ds in raw.values():
            for batch in _batches(ds["text"], cfg.map_batch_size):
                tokenizer(batch)

    def compare(prepared: Any, theirs: dict[str, datasets.Dataset]) -> str | None:
        diff = _same_columns(prepared.splits["train"], theirs["train"], ["input_ids", "attention_mask", "labels"])
        if diff:
            return f"train: {diff}"
        ours, course_eval = prepared.splits["eval"], theirs["eval"]
        diff = _same_columns(ours, course_eval, ["attention_mask"])
        if diff:
            return f"eval: {diff}"
        if [_unmask(i, lab) for i, lab in zip(ours["input_ids"], ours["labels"])] != course_eval["input_ids"]:
            return "eval: input_ids (masked tokens restored from the labels) differ from the course's"
        for split, ds in theirs.items():
            if "token_type_ids" in ds.column_names and any(any(row) for row in ds["token_type_ids"]):
                return f"{split}: the course's token_type_ids are not all 0 (nlpjobs stores none)"
        return None

    note = (f"{sizes.mlm_reviews} IMDb train / {n_eval} eval reviews, every {cfg.chunk_size}-token chunk kept "
            "(preprocess.train_size/test_size null: the course downsamples in §2.1, after §2.3). prepare() also "
            "masks the eval chunks once with a seeded generator (deliberate: deterministic perplexity; "
            "compared with the masked tokens restored from the labels) and stores no token_type_ids (the "
            "course's are all 0, the model's default) nor train word_ids (standard collator)")
    return Case("mlm", job, raw, tokenizer, course, tokenizer_only, compare, note)


def translation_case(sizes: Sizes, scratch: Path) -> Case:
    """Translation on ``sizes.translation_pairs`` real KDE en→fr pairs (jobs/local/translation.yaml) with the
    Marian SentencePiece tokenizer prepare() trains for scratch:marian-tiny, trained once here and loaded as
    model.name, so that neither timed run trains it."""
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task
    from nlpjobs.tasks.seq2seq import marian_tokenizer
    from nlpjobs.tasks.translation import SRC, TGT, extract_pairs

    size = [f"data.max_train_examples={sizes.translation_pairs}"]
    base = load_preset("translation", size)
    cfg = base.preprocess
    if cfg.max_source_length != cfg.max_target_length or cfg.source_prefix or cfg.split_train_size is None:
        raise ValueError("translation preset: the course's preprocess_function takes one max_length for both sides, "
                         "no source prefix, and the eval split carved out of train (split_train_size)")
    raw = sources.load_raw(base.data, base.train.seed)
    carved = course_translation_split(raw["train"], cfg.split_train_size, cfg.split_seed)
    pairs, _ = extract_pairs(carved["train"], cfg.source_lang, cfg.target_lang, "train")
    n = cfg.tokenizer_max_sentences
    trained = marian_tokenizer(pairs[SRC][:n], pairs[TGT][:n], cfg.vocab_size,
                               max(cfg.max_source_length, cfg.max_target_length))
    job = load_preset("translation", [*size, f"model.name={_save_tokenizer(trained, scratch / 'translation-tok')}"])
    tokenizer = get_task("translation").load_tokenizer(job)
    cap = job.data.max_eval_examples
    fn = course_translation_fn(tokenizer, cfg.max_source_length, cfg.source_lang, cfg.target_lang)

    def splits(raw: datasets.DatasetDict) -> datasets.DatasetDict:
        """The course's carve; its validation split capped at data.max_eval_examples, as prepare() does."""
        carved = course_translation_split(raw["train"], cfg.split_train_size, cfg.split_seed)
        validation = carved["validation"]
        if cap and cap < len(validation):
            validation = validation.select(range(cap))
        return datasets.DatasetDict({"train": carved["train"], "eval": validation})

    def course(raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        return _map_splits(splits(raw), {"train": fn, "eval": fn})

    def tokenizer_only(raw: datasets.DatasetDict) -> None:
        for ds in splits(raw).values():
            for batch in _batches(ds["translation"], cfg.map_batch_size):
                tokenizer([p[cfg.source_lang] for p in batch], text_target=[p[cfg.target_lang] for p in batch],
                          max_length=cfg.max_source_length, truncation=True)

    def compare(prepared: Any, theirs: dict[str, datasets.Dataset]) -> str | None:
        return _same_splits(prepared, theirs, ["input_ids", "attention_mask", "labels"])

    n_examples = sum(len(ds) for ds in splits(raw).values())
    note = (f"{sizes.translation_pairs} KDE en→fr pairs, the eval pairs carved out of them as the course does "
            f"(§3.1: {cfg.split_train_size:g}/rest, seed {cfg.split_seed}) and capped at data.max_eval_examples "
            f"({cap}) for both; the Marian tokenizer (no fast version) trained once and given to both; max_length "
            f"{cfg.max_source_length} on both sides (the preset's; the course's is 128)")
    return Case("translation", job, raw, tokenizer, course, tokenizer_only, compare, note, n_examples=n_examples)


def _kept_by_both(ds: datasets.Dataset, languages: list[str], min_target_words: int) -> datasets.Dataset:
    """Rows that nlpjobs' filters (language, non-empty body, title of >= min_target_words words) and the
    course's short-title filter (> 2 words) both keep."""
    words = max(3, min_target_words)

    def keep(batch: dict[str, list]) -> list[bool]:
        return [lang in languages and isinstance(b, str) and bool(b.strip()) and isinstance(t, str)
                and len(t.split()) >= words for lang, b, t in zip(batch["language"], batch["body"], batch["title"])]

    return ds.filter(keep, batched=True).flatten_indices()


def summarization_case(sizes: Sizes, scratch: Path) -> Case:
    """Summarization on ``sizes.summarization_examples`` real Debian package descriptions, en+es
    (jobs/local/summarization.yaml), with the mT5 SentencePiece tokenizer prepare() trains for
    scratch:mt5-tiny, trained once here and loaded as model.name, so that neither timed run trains it."""
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task
    from nlpjobs.tasks.seq2seq import t5_tokenizer

    size = [f"data.max_train_examples={sizes.summarization_examples}"]
    base = load_preset("summarization", size)
    cfg = base.preprocess
    loaded = sources.load_raw(base.data, base.train.seed)
    kept = {split: _kept_by_both(ds, cfg.languages, cfg.min_target_words) for split, ds in loaded.items()}
    # eval_sample (200) at the preset's 3,000 training rows, proportionally fewer below
    n_eval = min(cfg.eval_sample or len(kept["eval"]), len(kept["eval"]), max(1, sizes.summarization_examples // 15))
    eval_rows = kept["eval"].shuffle(seed=cfg.shuffle_seed).select(range(n_eval)).flatten_indices()
    raw = datasets.DatasetDict({"train": kept["train"], "eval": eval_rows})
    mixed = raw["train"].shuffle(seed=cfg.shuffle_seed)  # the order prepare() trains its tokenizer in
    n = cfg.tokenizer_max_sentences
    trained = t5_tokenizer(mixed["body"][:n] + mixed["title"][:n], cfg.vocab_size,
                           max(cfg.max_source_length, cfg.max_target_length))
    files = scratch / "summarization-raw"
    files.mkdir(parents=True, exist_ok=True)
    for split, ds in raw.items():
        ds.to_json(str(files / f"{split}.jsonl"), lines=True)
    # the whole stage reads the same rows back from JSON-lines files
    job = load_preset("summarization", [*size, f"model.name={_save_tokenizer(trained, scratch / 'summarization-tok')}",
                                        f"data.source=files:{files}", "data.train_split=train", "data.eval_split=eval"])
    tokenizer = get_task("summarization").load_tokenizer(job)
    fn = course_summarization_fn(tokenizer, cfg.max_source_length, cfg.max_target_length)

    def course(raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        mixed = datasets.DatasetDict({split: course_summarization_mix(ds, cfg.shuffle_seed) for split, ds in raw.items()})
        return _map_splits(mixed, {"train": fn, "eval": fn})

    def tokenizer_only(raw: datasets.DatasetDict) -> None:
        for ds in raw.values():
            for bodies, titles in zip(_batches(ds["body"], cfg.map_batch_size), _batches(ds["title"], cfg.map_batch_size)):
                tokenizer(bodies, max_length=cfg.max_source_length, truncation=True)
                tokenizer(titles, max_length=cfg.max_target_length, truncation=True)

    def compare(prepared: Any, theirs: dict[str, datasets.Dataset]) -> str | None:
        return _same_splits(prepared, theirs, ["input_ids", "attention_mask", "labels"])

    note = (f"{len(raw['train'])} train / {n_eval} eval Debian descriptions (en+es), pre-filtered to the rows "
            "both keep (title >= 3 words, non-empty body): the course shuffles before its title filter and nlpjobs "
            "after it, so on unfiltered rows the row order differs; eval: seeded rows, at most eval_sample, all of "
            "which prepare() keeps. The mT5 tokenizer trained once and given to both; max lengths "
            f"{cfg.max_source_length}/{cfg.max_target_length} (the preset's; the course's 512/30). The lead-3 ROUGE "
            "baseline is scored by evaluate, as the course scores it in §4.5, in neither timing")
    return Case("summarization", job, raw, tokenizer, course, tokenizer_only, compare, note)


def clm_case(sizes: Sizes, scratch: Path) -> Case:
    """Causal LM on ``sizes.clm_files`` real data-science Python files (jobs/local/clm.yaml) with the preset's
    BPE retrained on them once here (as prepare() does with train_tokenizer) and loaded as preprocess.tokenizer
    with train_tokenizer false, so that neither timed run retrains it."""
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task
    from nlpjobs.tasks.clm import retrain_tokenizer

    size = [f"data.max_train_examples={sizes.clm_files}"]
    base = load_preset("clm", size)
    cfg = base.preprocess
    if cfg.keyword_filter or cfg.eval_source:
        raise ValueError("clm preset: the benchmark expects pre-filtered files (no keyword_filter, no eval_source)")
    task = get_task("clm")
    raw = sources.load_raw(base.data, base.train.seed)
    tokenizer = task.load_tokenizer(base)
    job = base
    if cfg.train_tokenizer:
        trained = retrain_tokenizer(tokenizer, raw["train"], cfg.vocab_size, cfg.tokenizer_batch_size)
        job = load_preset("clm", [*size, f"preprocess.tokenizer={_save_tokenizer(trained, scratch / 'clm-tok')}",
                                  "preprocess.train_tokenizer=false"])
        tokenizer = task.load_tokenizer(job)
    fn = course_clm_fn(tokenizer, cfg.context_length)

    def course(raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        return _map_splits(raw, {split: fn for split in raw})

    def tokenizer_only(raw: datasets.DatasetDict) -> None:
        for ds in raw.values():
            for batch in _batches(ds["content"], cfg.map_batch_size):
                tokenizer(batch, truncation=True, max_length=cfg.context_length, return_overflowing_tokens=True,
                          return_length=True)

    def compare(prepared: Any, theirs: dict[str, datasets.Dataset]) -> str | None:
        return _same_splits(prepared, theirs, ["input_ids"])

    note = (f"{len(raw['train'])} train / {len(raw['eval'])} eval Python files, {cfg.context_length}-token "
            f"chunks, packing {cfg.packing}; the BPE retrained once (vocab {cfg.vocab_size}) and given to both "
            "(prepare() with train_tokenizer false)")
    return Case("clm", job, raw, tokenizer, course, tokenizer_only, compare, note)


CASES: dict[str, Callable[[Sizes, Path], Case]] = {
    "ner": ner_case, "qa": qa_case, "mlm": mlm_case, "translation": translation_case,
    "summarization": summarization_case, "clm": clm_case,
}
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
    runs rotates from repeat to repeat so none always runs first; each is timed as the median of its calls
    over at least ``sizes.preprocess_min_seconds``.
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
            _, seconds[name], _ = timed_median(lambda fn=runs[name]: fn(case.raw), sizes.preprocess_min_seconds,
                                              min_calls=1)
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
