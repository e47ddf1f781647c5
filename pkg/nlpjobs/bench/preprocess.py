"""Preprocessing throughput: nlpjobs' task ``prepare()`` and ``preprocess`` stage against the course recipe
(``Dataset.map(batched=True)`` with the course's Python functions) and the tokenizer alone, on the same raw
data and tokenizer (the task's offline preset in jobs/local/).

The ``course_*`` functions are the course's code (SPEC §1.3, §2.3, §3.1, §3.3, §4.1, §4.3, §5.2, §6.3, §6.4)
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

from nlpjobs.bench.common import Sizes, load_preset, log, timed, timed_median
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


def course_mlm_fns(tokenizer: Any, chunk_size: int = 128) -> tuple[Callable[[dict], Any], Callable[[dict], Any]]:
    """SPEC §2.3 (L1224-1229, L1342-1356): ``tokenize_function`` (no truncation, word_ids) and ``group_texts``
    (batch concatenated with list sums, remainder dropped, labels = input_ids copy)."""

    def tokenize_function(examples: dict[str, list]) -> Any:
        result = tokenizer(examples["text"])
        if tokenizer.is_fast:
            result["word_ids"] = [result.word_ids(i) for i in range(len(result["input_ids"]))]
        return result

    def group_texts(examples: dict[str, list]) -> Any:
        # Concatenate all texts
        concatenated_examples = {k: sum(examples[k], []) for k in examples.keys()}  # noqa: SIM118
        # Compute length of concatenated texts
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        # We drop the last chunk if it's smaller than chunk_size
        total_length = (total_length // chunk_size) * chunk_size
        # Split by chunks of max_len
        result = {
            k: [t[i: i + chunk_size] for i in range(0, total_length, chunk_size)]
            for k, t in concatenated_examples.items()
        }
        # Create a new labels column
        result["labels"] = result["input_ids"].copy()
        return result

    return tokenize_function, group_texts


def course_translation_split(train: datasets.Dataset, train_size: float = 0.9, seed: int = 20) -> datasets.DatasetDict:
    """SPEC §3.1 (L2067-2087): the validation split carved out of kde4's only split."""
    split_datasets = train.train_test_split(train_size=train_size, seed=seed)
    split_datasets["validation"] = split_datasets.pop("test")
    return split_datasets


def course_translation_fn(tokenizer: Any, max_length: int = 128, source: str = "en",
                          target: str = "fr") -> Callable[[dict], Any]:
    """SPEC §3.3 (L2202-2214): ``preprocess_function``, targets through ``text_target``."""

    def preprocess_function(examples: dict[str, list]) -> Any:
        inputs = [ex[source] for ex in examples["translation"]]
        targets = [ex[target] for ex in examples["translation"]]
        model_inputs = tokenizer(
            inputs, text_target=targets, max_length=max_length, truncation=True
        )
        return model_inputs

    return preprocess_function


def course_summarization_mix(ds: datasets.Dataset, seed: int = 42) -> datasets.Dataset:
    """SPEC §4.1 (L3111-3146): the bilingual shuffle, then the short-title filter (titles of > 2 words).
    The course concatenates its two single-language datasets first; ours carry both languages already."""
    books = ds.shuffle(seed=seed)
    return books.filter(lambda x: len(x["title"].split()) > 2)


def course_summarization_fn(tokenizer: Any, max_input_length: int = 512,
                            max_target_length: int = 30) -> Callable[[dict], Any]:
    """SPEC §4.3 (L3223-3237): ``preprocess_function`` as coded (targets by a plain second call, not
    ``text_target``: the same ids for mT5's single vocabulary). review_body/review_title are body/title here."""

    def preprocess_function(examples: dict[str, list]) -> Any:
        model_inputs = tokenizer(
            examples["body"],
            max_length=max_input_length,
            truncation=True,
        )
        labels = tokenizer(
            examples["title"], max_length=max_target_length, truncation=True
        )
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    return preprocess_function


def course_clm_fn(tokenizer: Any, context_length: int = 128) -> Callable[[dict], Any]:
    """SPEC §5.2 (L4201-4213): ``tokenize``, overflowing 128-token chunks, every shorter tail dropped."""

    def tokenize(element: dict[str, list]) -> Any:
        outputs = tokenizer(
            element["content"],
            truncation=True,
            max_length=context_length,
            return_overflowing_tokens=True,
            return_length=True,
        )
        input_batch = []
        for length, input_ids in zip(outputs["length"], outputs["input_ids"]):
            if length == context_length:
                input_batch.append(input_ids)
        return {"input_ids": input_batch}

    return tokenize


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
            "masks the eval chunks once with a seeded generator (deliberate, SPEC §2.6: deterministic perplexity; "
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
