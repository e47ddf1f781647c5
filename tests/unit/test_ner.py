"""NER preprocessing on a cased WordPiece tokenizer, and label-space checks."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast, DataCollatorForTokenClassification

from nlpjobs.jobfile import load_job
from nlpjobs.tasks.base import TaskDataError
from nlpjobs.tasks.ner import NerTask, align_labels_batch, align_labels_with_tokens, b_to_i_map

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
WORDS = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
TAGS = [3, 0, 7, 0, 0, 0, 7, 0, 0]


@pytest.fixture(scope="module")
def cased_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    """A cased WordPiece tokenizer whose vocabulary splits 'lamb' into 'la', '##mb' as bert-base-cased does."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "EU", "rejects", "German", "call", "to", "boycott",
             "British", "la", "##mb", ".", "eu", "Peter", "Black", "##burn"]
    model = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")
    backend = Tokenizer(model)
    backend.normalizer = normalizers.BertNormalizer(lowercase=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    backend.decoder = decoders.WordPiece()
    folder = tmp_path_factory.mktemp("cased-wordpiece")
    BertTokenizerFast(tokenizer_object=backend, do_lower_case=False).save_pretrained(folder)
    tok = BertTokenizerFast.from_pretrained(folder)
    assert len(tok) == len(vocab) and tok.is_fast
    return tok


def test_course_alignment_example(cased_tokenizer: BertTokenizerFast) -> None:
    enc = cased_tokenizer(WORDS, is_split_into_words=True)
    assert enc.tokens() == ["[CLS]", "EU", "rejects", "German", "call", "to", "boycott", "British", "la", "##mb",
                            ".", "[SEP]"]
    assert enc.word_ids() == [None, 0, 1, 2, 3, 4, 5, 6, 7, 7, 8, None]
    labels = align_labels_with_tokens(TAGS, enc.word_ids(), b_to_i_map(LABELS))
    assert labels == [-100, 3, 0, 7, 0, 0, 0, 7, 0, 0, 0, -100]


def test_continuation_of_b_becomes_i_and_first_token_only_option(cased_tokenizer: BertTokenizerFast) -> None:
    enc = cased_tokenizer(["Peter", "Blackburn"], is_split_into_words=True)
    assert enc.word_ids() == [None, 0, 1, 1, None]
    b_to_i = b_to_i_map(LABELS)
    assert align_labels_with_tokens([1, 1], enc.word_ids(), b_to_i) == [-100, 1, 1, 2, -100]
    assert align_labels_with_tokens([1, 1], enc.word_ids(), b_to_i, label_all_tokens=False) == [-100, 1, 1, -100, -100]


def reference_alignment(tags: list[int], word_ids: list[int | None], b_to_i: list[int],
                        label_all_tokens: bool) -> list[int]:
    """The per-token loop (the course's, with a name-based B->I map): the batch version must equal it."""
    out, previous = [], None
    for word_id in word_ids:
        if word_id is None:
            out.append(-100)
        elif word_id != previous:
            out.append(tags[word_id])
        else:
            out.append(b_to_i[tags[word_id]] if label_all_tokens else -100)
        previous = word_id
    return out


@pytest.mark.parametrize("label_all_tokens", [True, False])
def test_batch_alignment_equals_the_per_token_loop(label_all_tokens: bool) -> None:
    rng = np.random.default_rng(5)
    b_to_i = b_to_i_map(LABELS)
    tags, word_ids = [], []
    for _ in range(300):
        n_words = int(rng.integers(0, 12))
        tags.append(rng.integers(0, len(LABELS), n_words).tolist())
        pieces = [w for w in range(n_words) for _ in range(int(rng.integers(1, 4)))]
        kept = pieces[: int(rng.integers(0, len(pieces) + 1))]  # truncation drops trailing words
        specials = rng.random() < 0.8  # some tokenizers add none: a sentence may have no token at all
        inner = [None] if rng.random() < 0.1 else []  # a special token between two pieces of one word
        if inner and len(kept) > 1:
            kept = kept[:1] + inner + kept[1:]
        word_ids.append([None, *kept, None] if specials else kept)
    flat = np.array([-1 if w is None else w for ids in word_ids for w in ids], dtype=np.int64)
    labels, truncated = align_labels_batch(tags, flat, np.array([len(w) for w in word_ids]), b_to_i, label_all_tokens)
    assert labels.to_pylist() == [reference_alignment(t, w, b_to_i.tolist(), label_all_tokens)
                                           for t, w in zip(tags, word_ids)]
    last = [max((w for w in ids if w is not None), default=-1) for ids in word_ids]
    assert truncated.tolist() == [lw + 1 < len(t) for lw, t in zip(last, tags)]
    assert 20 < int(truncated.sum()) < 280 and any(len(w) == 0 for w in word_ids)
    none = np.zeros(0, np.int64)
    assert align_labels_batch([], none, none, b_to_i)[0].to_pylist() == []


def test_b_to_i_uses_names_not_id_parity() -> None:
    names = ["O", "I-PER", "B-PER", "B-LOC", "I-LOC"]  # not the CoNLL ordering
    assert b_to_i_map(names).tolist() == [0, 1, 1, 4, 4]


def _raw(tags: list[list[int]], words: list[list[str]] | None = None) -> datasets.DatasetDict:
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=LABELS))})
    words = words or [WORDS] * len(tags)
    ds = datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags}, features=features)
    return datasets.DatasetDict({"train": ds, "eval": ds})


def test_prepare_and_collate(cased_tokenizer: BertTokenizerFast) -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml")
    raw = _raw([TAGS, [0, 0]], [WORDS, ["to", "EU"]])
    prepared = NerTask().prepare(job, raw, cased_tokenizer)
    assert prepared.info["label_names"] == LABELS
    train = prepared.splits["train"]
    assert train[0]["labels"] == [-100, 3, 0, 7, 0, 0, 0, 7, 0, 0, 0, -100]
    batch = DataCollatorForTokenClassification(cased_tokenizer)([train[0], train[1]])
    assert tuple(batch["input_ids"].shape) == (2, 12)
    assert batch["labels"][1].tolist() == [-100, 0, 0, -100] + [-100] * 8


def test_truncation_is_counted(cased_tokenizer: BertTokenizerFast) -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml", ["preprocess.max_length=6"])
    prepared = NerTask().prepare(job, _raw([TAGS]), cased_tokenizer)
    assert prepared.info["truncated_examples"] == {"train": 1, "eval": 1}
    assert len(prepared.splits["train"][0]["input_ids"]) == 6


def test_tag_outside_label_space_is_rejected(cased_tokenizer: BertTokenizerFast) -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml", ["preprocess.label_names=" + str(LABELS)])
    ds = datasets.Dataset.from_dict({"tokens": [WORDS], "ner_tags": [[0, 0, 0, 0, 0, 0, 0, 0, 12]]})
    with pytest.raises(TaskDataError, match=r"1 tag\(s\) outside the label space 0..8"):
        NerTask().prepare(job, datasets.DatasetDict({"train": ds, "eval": ds}), cased_tokenizer)


def test_missing_columns_listed(cased_tokenizer: BertTokenizerFast) -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml")
    ds = datasets.Dataset.from_dict({"words": [WORDS], "ner_tags": [TAGS]})
    with pytest.raises(TaskDataError) as exc:
        NerTask().prepare(job, datasets.DatasetDict({"train": ds, "eval": ds}), cased_tokenizer)
    assert "lacks required column(s) ['tokens']" in str(exc.value) and "'words'" in str(exc.value)


def test_integer_tags_without_names_need_label_names(cased_tokenizer: BertTokenizerFast) -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml")
    ds = datasets.Dataset.from_dict({"tokens": [WORDS], "ner_tags": [TAGS]})
    with pytest.raises(TaskDataError, match="preprocess.label_names"):
        NerTask().prepare(job, datasets.DatasetDict({"train": ds, "eval": ds}), cased_tokenizer)


def test_list_column_rebuilds_the_rows_and_refuses_a_length_mismatch() -> None:
    from nlpjobs.tasks.base import list_column

    column = list_column(np.array([5, 6, 7, 8], np.int64), np.array([2, 0, 2]))
    assert column.to_pylist() == [[5, 6], [], [7, 8]] and str(column.type) == "list<item: int64>"
    with pytest.raises(ValueError, match="3 values for rows of 4"):
        list_column(np.arange(3), np.array([2, 2]))


def test_a_byte_level_tokenizer_needs_add_prefix_space_for_words() -> None:
    from nlpjobs.tasks.clm import load_base_tokenizer

    job = load_job(ROOT / "jobs/local/ner.yaml")
    gpt2 = load_base_tokenizer("offline:gpt2")
    assert not gpt2.add_prefix_space
    with pytest.raises(AssertionError, match="add_prefix_space=True"):  # the tokenizer's own check, before any map
        NerTask().prepare(job, _raw([TAGS]), gpt2)
