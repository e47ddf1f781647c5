"""Token classification (NER): word-level inputs, B→I label alignment, seqeval."""

from __future__ import annotations

import contextlib
import logging
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

log = logging.getLogger(__name__)


@dataclass
class NerPreprocessConfig(PreprocessConfig):
    """Tokenization of pre-split words with label alignment."""

    label_all_tokens: bool = True
    """true: every sub-token gets its word's label (B-X continuation tokens become I-X, or -100 where the label
    list has no I-X); false: only the first sub-token of each word is labelled, the rest get -100."""
    max_length: int | None = None
    """Truncate inputs to this many tokens (null: the model's limit); truncated examples are counted
    in the manifest."""
    label_names: list[str] = field(default_factory=list)
    """Label names in id order (IOB: O, B-X, I-X). Needed for integer tags without ClassLabel names; with string
    tags it fixes the ids (every tag must be listed). Empty: the data's ClassLabel names, else, for string tags,
    O then each entity type sorted, B- before I-, both always present."""


def b_to_i_map(label_names: list[str]) -> np.ndarray:
    """For each label id, the label a continuation sub-token gets: B-X → I-X; B-X → -100 (ignored) where the
    label space has no I-X (else a word split into 3 pieces would count as 3 entities); the rest unchanged."""
    index = {name: i for i, name in enumerate(label_names)}
    mapping = np.arange(len(label_names))
    for i, name in enumerate(label_names):
        if name.startswith("B-"):
            mapping[i] = index.get(f"I-{name[2:]}", -100)
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


TAG_FORMS = ("'O', 'B-<type>' or 'I-<type>' (IOB2; IOB1 is read too). Tags without a prefix (IO): prefix "
             "them with I-; IOBES/BILOU: write S-X/U-X as B-X and E-X/L-X as I-X")
DERIVED_ORDER = "from the data: O, then each entity type in sorted order, B- before I-"


def tag_parts(name: str) -> tuple[str, str] | None:
    """('O', '') for O, (prefix, type) for B-<type>/I-<type>, None for any other form."""
    if name == "O":
        return "O", ""
    if name[:2] in ("B-", "I-") and name[2:].strip():
        return name[0], name[2:]
    return None


def check_label_names(names: list[str], where: str, error: type[Exception]) -> None:
    """Label names given in id order (preprocess.label_names or the data's ClassLabel): IOB names, no repeats."""
    bad = [n for n in names if not isinstance(n, str) or tag_parts(n) is None]
    if bad:
        raise error(f"{where}: {bad[0]!r} is not a tag name of the form {TAG_FORMS}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise error(f"{where}: {repeated} appear more than once in {names}")


def derive_label_names(tags: set[str]) -> list[str]:
    """The label space of string tags without preprocess.label_names: 'O', then for each entity type in sorted
    order B-<type> and I-<type>, both whether the data has them or not (I-X for continuation sub-tokens of a
    B-X word, B-X for IOB1 entity starts)."""
    types = sorted({parts[1] for t in tags if (parts := tag_parts(t)) and parts[0] != "O"})
    return ["O", *(f"{p}-{t}" for t in types for p in "BI")]


def _row_of(lengths: np.ndarray, flat_index: int) -> int:
    """The row holding element ``flat_index`` of a flattened list column."""
    return int(np.searchsorted(np.cumsum(lengths), flat_index, side="right"))


def _as_lists(split: str, column: str, cells: list[Any]) -> pa.Array:
    """Python cells of a column that is not an Arrow list column (a CSV column of JSON text, or JSON values of
    mixed shapes) as a list column; a cell that is neither a list nor a string holding one is refused."""
    import json

    example = '["B-PER", "I-PER", "O"]' if column == "ner_tags" else '["Peter", "Blackburn", "said"]'
    rows: list[Any] = []
    for i, cell in enumerate(cells):
        value = cell
        if isinstance(cell, str):
            with contextlib.suppress(ValueError):
                value = json.loads(cell)
        if cell is not None and not isinstance(value, list):
            shown = f"the string {cell[:60]!r}" if isinstance(cell, str) else repr(cell)
            raise TaskDataError(f"ner: split {split!r}: {column} in row {i} is {shown}, not a list; "
                                f"write a JSON list, e.g. {example} (a CSV cell holds that JSON text)")
        rows.append(value)
    try:
        return pa.array(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds: reported by the element check, as for JSON lines
        return pa.array([None if r is None else [json.dumps(v) for v in r] for r in rows],
                        pa.list_(pa.json_(pa.string())))


def list_cells(split: str, column: str, cells: pa.ChunkedArray) -> pa.Array:
    """``column`` of one split as an Arrow list array, each row present (no null row)."""
    import json

    arr = cells.combine_chunks()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = _as_lists(split, column, arr.to_pylist())
    elif isinstance(arr.type, pa.JsonType):  # JSON values of several shapes (lists and strings, ...)
        arr = _as_lists(split, column, [None if v is None else json.loads(v) for v in arr.storage.to_pylist()])
    if arr.null_count or pa.types.is_null(arr.type):
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise TaskDataError(f"ner: split {split!r}: row {i} has no {column} (null); every row needs a list, "
                            "e.g. [] for an empty sentence")
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise TaskDataError(f"ner: split {split!r}: {column} is a column of {arr.type}, not of lists "
                            f"(row 0: {arr[0].as_py()!r})")
    return arr


def _element_error(split: str, column: str, lengths: np.ndarray, j: int, value: Any, what: str) -> TaskDataError:
    i = _row_of(lengths, j)
    position = j - int(lengths[:i].sum())
    return TaskDataError(f"ner: split {split!r}: {column} of row {i} has {value!r} at position {position}, {what}")


NOT_A_TAG = f"which is not a tag (expected {TAG_FORMS}, or integer ids with preprocess.label_names)"


def _first_null(flat: pa.Array) -> int | None:
    """Index of the first null value, or None."""
    return int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0]) if flat.null_count else None


def _first_valid(flat: pa.Array) -> int:
    """Index of the first value that is not null (0 when there is none)."""
    found = np.flatnonzero(flat.is_valid().to_numpy(zero_copy_only=False))
    return int(found[0]) if found.size else 0


def _json_tags(split: str, flat: pa.Array, lengths: np.ndarray) -> tuple[str, pa.Array]:
    """Tags of mixed JSON kinds (datasets reads such a list column as JSON values): one kind, or refused."""
    import json

    values = [None if v is None else json.loads(v) for v in flat.storage.to_pylist()]
    first: dict[str, int] = {}
    for j, v in enumerate(values):
        if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
            first.setdefault(type(v).__name__, j)
        elif v is not None:  # a null is reported as such by tag_values
            raise _element_error(split, "ner_tags", lengths, j, v, NOT_A_TAG)
    if len(first) > 1:
        s, n = first["str"], first["int"]
        raise TaskDataError(f"ner: split {split!r} mixes string and integer tags (row {_row_of(lengths, s)}: "
                            f"{values[s]!r}, row {_row_of(lengths, n)}: {values[n]!r}); use one kind: tag names "
                            "like 'B-PER', or integer ids with preprocess.label_names")
    kind = next(iter(first), "none")
    return kind, pa.array(values, pa.string() if kind == "str" else pa.int64())


def tag_values(split: str, tags: pa.Array) -> tuple[str, pa.Array, np.ndarray]:
    """(kind, flat tags, tags per row) of one split: kind 'str' (tag names), 'int' (label ids) or 'none' (no tag
    at all); a null tag, a tag of another type or a mix of both kinds is refused."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(tags).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tags)
    t, kind = flat.type, "none"
    if isinstance(t, pa.JsonType):
        kind, flat = _json_tags(split, flat, lengths)
    elif pa.types.is_integer(t):
        kind = "int"
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        kind = "str"
    elif not pa.types.is_null(t):
        j = _first_valid(flat)
        raise _element_error(split, "ner_tags", lengths, j, flat[j].as_py(), f"of type {t}, {NOT_A_TAG}")
    if (j := _first_null(flat)) is not None:
        raise _element_error(split, "ner_tags", lengths, j, None, "a null tag; give every word a tag ('O' outside "
                             "entities)")
    return kind, flat, lengths


def word_values(split: str, tokens: pa.Array) -> np.ndarray:
    """Words per row of one split; every word a string."""
    import json

    import pyarrow.compute as pc

    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tokens)
    t = flat.type
    if isinstance(t, pa.JsonType):  # strings mixed with other JSON values
        values = [None if v is None else json.loads(v) for v in flat.storage.to_pylist()]
        j = next(j for j, v in enumerate(values) if v is not None and not isinstance(v, str))
        raise _element_error(split, "tokens", lengths, j, values[j], "not a string; tokens are the words of each "
                             "sentence, as strings")
    if len(flat) and not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
        j = _first_valid(flat)
        raise _element_error(split, "tokens", lengths, j, flat[j].as_py(), f"of type {t}; tokens are the words "
                             "of each sentence, as strings")
    if (j := _first_null(flat)) is not None:
        raise _element_error(split, "tokens", lengths, j, None, "a null word; every word must be a string")
    return lengths


@dataclass
class SplitTags:
    """One split's words and tags, checked, before the tags become label ids."""

    name: str
    """The split's name in the user's data (data.train_split/eval_split), for messages."""
    tokens: pa.Array
    kind: str
    tags: pa.Array
    lengths: np.ndarray


def read_split(name: str, ds: datasets.Dataset) -> SplitTags:
    """Words and tags of one split through Arrow, whole columns at once: lists of strings, tags of one kind,
    as many tags as words."""
    table = ds.select_columns(["tokens", "ner_tags"]).with_format("arrow")[:]
    tokens = list_cells(name, "tokens", table.column("tokens"))
    n_words = word_values(name, tokens)
    kind, flat, n_tags = tag_values(name, list_cells(name, "ner_tags", table.column("ner_tags")))
    rows = np.flatnonzero(n_words != n_tags)
    if rows.size:
        i = int(rows[0])
        raise TaskDataError(f"ner: split {name!r} has {rows.size} row(s) whose tokens and ner_tags "
                            f"differ in length (row {i}: {n_words[i]} words, {n_tags[i]} tags)")
    return SplitTags(name, tokens, kind, flat, n_tags)


def class_label_names(ds: datasets.Dataset) -> list[str] | None:
    """The names of a ClassLabel ner_tags sequence, or None."""
    inner = getattr(ds.features["ner_tags"], "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def label_space(splits: list[SplitTags], configured: list[str], class_names: list[str] | None) -> tuple[list[str], str]:
    """(label names in id order, where the order comes from): preprocess.label_names, else the data's ClassLabel,
    else (string tags) derived from the tags of every split."""
    kinds = {s.kind for s in splits} - {"none"}
    if len(kinds) > 1:
        by = {s.kind: s.name for s in splits}
        raise TaskDataError(f"ner: split {by['str']!r} has string tags but split {by['int']!r} integer ids; use one "
                            "kind in every split")
    if configured:
        check_label_names(configured, "preprocess.label_names", ConfigError)
    if class_names is not None:
        if configured and configured != class_names:
            raise ConfigError(f"preprocess.label_names: {configured} differs from the dataset's names {class_names}")
        check_label_names(class_names, "ner: the ner_tags ClassLabel names", TaskDataError)
        return class_names, "ClassLabel"
    if configured:
        return list(configured), "preprocess.label_names"
    if kinds == {"str"}:
        for s in splits:
            bad = [t for t in s.tags.unique().to_pylist() if tag_parts(t) is None]
            if bad:
                raise TaskDataError(f"ner: split {s.name!r} has the tag {sorted(bad)[0]!r}, not of the form "
                                    f"{TAG_FORMS}")
        return derive_label_names({t for s in splits for t in s.tags.unique().to_pylist()}), DERIVED_ORDER
    raise TaskDataError("ner: the ner_tags column has no label names (not a ClassLabel sequence). "
                        "Give them in id order with preprocess.label_names, e.g. ['O','B-PER','I-PER',...]")


def tag_ids(split: SplitTags, names: list[str]) -> np.ndarray:
    """One split's tags as label ids (flat): names looked up in ``names``, ids checked against its range."""
    import pyarrow.compute as pc

    if split.kind == "str":
        ids = pc.index_in(split.tags, value_set=pa.array(names, pa.string()))
        if ids.null_count:
            missing = sorted(set(pc.filter(split.tags, ids.is_null()).to_pylist()))
            raise TaskDataError(f"ner: split {split.name!r} has tag(s) {missing[:5]} not in preprocess.label_names "
                                f"{names}; add them there, or leave preprocess.label_names out to take the labels "
                                "from the data")
        return ids.to_numpy(zero_copy_only=False).astype(np.int64)
    flat = split.tags.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    bad = flat[(flat < 0) | (flat >= len(names))]
    if bad.size:
        raise TaskDataError(f"ner: split {split.name!r} has {bad.size} tag(s) outside the label space "
                            f"0..{len(names) - 1} ({names}), e.g. {sorted(set(bad.tolist()))[:5]}. "
                            "Fix the data or preprocess.label_names.")
    return flat


def iob1_to_iob2(ids: np.ndarray, lengths: np.ndarray, names: list[str]) -> tuple[np.ndarray, int]:
    """:func:`nlpjobs.data.offline.to_iob2` on label ids, all sentences at once: an I-X that starts an entity
    (first in its sentence, after O, or after another type) becomes B-X where the label space has B-X. IOB2 tags
    are unchanged; seqeval reads both schemes alike, and the model learns one. Returns (ids, tags rewritten)."""
    if not ids.size:
        return ids, 0
    parts = [tag_parts(n) or ("O", "") for n in names]
    index = {n: i for i, n in enumerate(names)}
    types = {t: i for i, t in enumerate(sorted({t for _, t in parts}))}
    prefix = np.array(["OBI".index(p) for p, _ in parts])
    etype = np.array([types[t] for _, t in parts])
    b_of = np.array([index.get(f"B-{t}", -1) if p == "I" else -1 for p, t in parts])
    previous = np.empty_like(ids)
    previous[0], previous[1:] = ids[0], ids[:-1]
    first = np.zeros(len(ids), bool)
    first[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
    starts = (prefix[ids] == 2) & (first | (prefix[previous] == 0) | (etype[previous] != etype[ids])) & (b_of[ids] >= 0)
    out = np.where(starts, b_of[ids], ids)
    return out, int(starts.sum())


def warn_eval_only(labels: list[str], trained: set[str], user: dict[str, str]) -> None:
    """One warning line: labels of the evaluation split that no training word has, and the entity types the
    model therefore never predicts (their recall is 0)."""
    trained_types = {p[1] for t in trained if (p := tag_parts(t))}
    never = sorted({p[1] for t in labels if (p := tag_parts(t)) and p[1] not in trained_types})
    consequence = (f"entity type(s) {never} are never predicted: their recall is 0" if never else
                   "the model sees them only on continuation sub-tokens, if at all")
    log.warning("ner: label(s) %s occur in split %r but on no word of %r: %s. They stay in the label space "
                "(manifest info eval_only_labels); add training examples of them or leave them out of the "
                "evaluation data.", labels, user["eval"], user["train"], consequence)


class NerTask(Task):
    name = "ner"
    description = "Token classification (NER) with seqeval"
    preprocess_config = NerPreprocessConfig
    evaluate_config = EvaluateConfig
    required_columns = ("tokens", "ner_tags")
    pipeline_task = "token-classification"
    preprocess_version = "3"
    headline_metric = "overall_f1"
    groups_by_length = False  # at full scale, length-grouped batches cost F1 that the speed does not repay

    def validate_job(self, job: JobConfig) -> None:
        super().validate_job(job)
        names = job.preprocess.label_names  # type: ignore[attr-defined]
        if names:
            check_label_names(names, "preprocess.label_names", ConfigError)

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: NerPreprocessConfig = job.preprocess  # type: ignore[assignment]
        self.check_columns(raw)
        raw, info = self.label_ids(job, raw)
        names = info["label_names"]
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
        return Prepared(splits=splits, info={**info, "truncated_examples": truncated, "max_length": max_length})

    def label_ids(self, job: JobConfig, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict[str, Any]]:
        """The raw splits with their tags as label ids (columns tokens, ner_tags), and the label facts for the
        manifest: label_names (id order), label_order (where it comes from), eval_only_labels, iob1_starts."""
        cfg: NerPreprocessConfig = job.preprocess  # type: ignore[assignment]
        user = {"train": job.data.train_split, "eval": job.data.eval_split}
        read = {key: read_split(user.get(key, key), ds) for key, ds in raw.items()}
        names, order = label_space(list(read.values()), cfg.label_names, class_label_names(raw["train"]))
        out, seen, rewritten = {}, {}, {}
        for key, split in read.items():
            ids, rewritten[key] = iob1_to_iob2(tag_ids(split, names), split.lengths, names)
            seen[key] = set(np.unique(ids).tolist())
            table = pa.table({"tokens": split.tokens, "ner_tags": list_column(ids, split.lengths)})
            out[key] = datasets.Dataset(table)
        eval_only = [names[i] for i in sorted(set().union(*(v for k, v in seen.items() if k != "train"))
                                              - seen.get("train", set()))]
        if eval_only:
            warn_eval_only(eval_only, {names[i] for i in seen.get("train", set())}, user)
        info = {"label_names": names, "label_order": order, "eval_only_labels": eval_only,
                "iob1_starts_rewritten": rewritten}
        return datasets.DatasetDict(out), info

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
        if ctx.manifest.info.get("eval_only_labels"):  # never on a training word: their recall is 0 by construction
            metrics["eval_only_labels"] = list(ctx.manifest.info["eval_only_labels"])
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        keys = ("overall_precision", "overall_recall", "overall_f1", "overall_accuracy")
        line = "  ".join(f"{k.removeprefix('overall_')}={metrics[k]:.4f}" for k in keys if k in metrics)
        if metrics.get("eval_only_labels"):
            line += f"  (labels never trained on: {metrics['eval_only_labels']})"
        return line

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        return list(self.batch_predictor(model_dir, -1, 1)(str(x) for x in inputs))

    predict_columns = ("tokens",)

    def dataset_inputs(self, job: JobConfig, columns: dict[str, list[Any]], first_row: int) -> list[Any]:
        """A row's words joined by single spaces: the text the pipeline takes (entity offsets point into it)."""
        out = []
        for i, words in enumerate(columns["tokens"]):
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise TaskDataError(f"ner: row {first_row + i}: tokens is {words!r}, not a list of words; map the "
                                    "column holding each sentence's words with predict.dataset.columns.tokens")
            out.append(" ".join(words))
        return out

    def batch_predictor(self, model_dir: str, device: int, batch_size: int) -> Any:
        from transformers import pipeline

        pipe = pipeline("token-classification", model=model_dir, tokenizer=model_dir,
                        aggregation_strategy="simple", device=device)

        def run(inputs: Any) -> Any:
            for entities in pipe((x for x in inputs), batch_size=batch_size):
                yield [{**e, "score": float(e["score"])} for e in entities]

        return run
