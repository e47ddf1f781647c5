"""NER preprocessing on a cased WordPiece tokenizer, and label-space checks."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast, DataCollatorForTokenClassification

from nlpjobs.config import ConfigError
from nlpjobs.data.offline import to_iob2
from nlpjobs.jobfile import load_job
from nlpjobs.metrics import load_metric
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
             "British", "la", "##mb", ".", "eu", "Peter", "Black", "##burn", "Wolver", "##ham", "##pton", "in"]
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


def _rows(train: list[tuple[list[str], list]], evaluation: list[tuple[list[str], list]] | None = None
          ) -> datasets.DatasetDict:
    """Plain rows (no ClassLabel), as read from a jsonl/parquet file: tags as the user wrote them."""
    def split(rows: list[tuple[list[str], list]]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"tokens": [r[0] for r in rows], "ner_tags": [r[1] for r in rows]})
    return datasets.DatasetDict({"train": split(train), "eval": split(evaluation or train)})


def _prepare(raw: datasets.DatasetDict, tokenizer: BertTokenizerFast, *sets: str):  # noqa: ANN202
    return NerTask().prepare(load_job(ROOT / "jobs/local/ner.yaml", list(sets)), raw, tokenizer)


def test_string_tags_get_ids_in_a_derived_order(cased_tokenizer: BertTokenizerFast) -> None:
    raw = _rows([(["Peter", "Blackburn", "in", "EU"], ["B-PER", "I-PER", "O", "B-ORG"]),
                 (["EU", "to", "Wolverhampton"], ["B-ORG", "O", "B-CITY"])])
    prepared = _prepare(raw, cased_tokenizer)
    names = ["O", "B-CITY", "I-CITY", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # O, types sorted, B- before I-
    assert prepared.info["label_names"] == names and prepared.info["label_order"].startswith("from the data")
    assert prepared.splits["train"][0]["labels"] == [-100, 5, 6, 6, 0, 3, -100]
    # Wolver ##ham ##pton: the B-CITY word's continuations get the I-CITY the order added
    assert prepared.splits["train"][1]["labels"] == [-100, 3, 0, 1, 2, 2, -100]
    assert prepared.info["eval_only_labels"] == []


def test_string_tags_follow_label_names_and_a_missing_tag_is_named(cased_tokenizer: BertTokenizerFast) -> None:
    raw = _rows([(["Peter", "in", "EU"], ["B-PER", "O", "B-ORG"])])
    prepared = _prepare(raw, cased_tokenizer, f"preprocess.label_names={LABELS}")
    assert prepared.info["label_names"] == LABELS and prepared.info["label_order"] == "preprocess.label_names"
    assert prepared.splits["train"][0]["labels"] == [-100, 1, 0, 3, -100]
    raw = _rows([(["Peter", "in", "EU"], ["B-PER", "O", "B-ORG"])], [(["to", "EU"], ["O", "B-GPE"])])
    with pytest.raises(TaskDataError, match=r"split 'validation' has tag\(s\) \['B-GPE'\] not in preprocess.label_names"):
        _prepare(raw, cased_tokenizer, f"preprocess.label_names={LABELS}")


def test_string_and_integer_tags_are_not_mixed(cased_tokenizer: BertTokenizerFast, tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match="split 'train' has string tags but split 'validation' integer ids"):
        _prepare(_rows([(["EU"], ["B-ORG"])], [(["EU"], [3])]), cased_tokenizer, f"preprocess.label_names={LABELS}")
    (tmp_path / "mixed.jsonl").write_text('{"tokens": ["EU", "to"], "ner_tags": ["B-ORG", 0]}\n')
    mixed = datasets.load_dataset("json", data_files=str(tmp_path / "mixed.jsonl"), split="train")  # JSON values
    with pytest.raises(TaskDataError, match=r"mixes string and integer tags \(row 0: 'B-ORG', row 0: 0\)"):
        NerTask().prepare(load_job(ROOT / "jobs/local/ner.yaml"), datasets.DatasetDict({"train": mixed, "eval": mixed}),
                          cased_tokenizer)


def test_a_label_only_in_the_evaluation_split_is_reported(cased_tokenizer: BertTokenizerFast,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    raw = _rows([(["Peter", "in", "EU"], ["B-PER", "O", "B-ORG"])], [(["Peter", "Wolverhampton"], ["B-PER", "B-CITY"])])
    prepared = _prepare(raw, cased_tokenizer)
    assert prepared.info["label_names"] == ["O", "B-CITY", "I-CITY", "B-ORG", "I-ORG", "B-PER", "I-PER"]  # the union
    assert prepared.info["eval_only_labels"] == ["B-CITY"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "['B-CITY'] occur in split 'validation' but on no word of 'train'" in warning
    assert "['CITY'] are never predicted: their recall is 0" in warning
    assert NerTask().summary({"overall_f1": 0.5, "eval_only_labels": ["B-CITY"]}) == (
        "f1=0.5000  (labels never trained on: ['B-CITY'])")


def _entities(labels: list[int], names: list[str]) -> int:
    """Entities seqeval counts in one sentence of token labels (the references evaluate builds)."""
    tags = [names[t] for t in labels if t != -100]
    result = load_metric("seqeval").compute(predictions=[tags], references=[tags])
    return sum(int(v["number"]) for v in result.values() if isinstance(v, dict))


@pytest.mark.parametrize("given", ["ids with label_names", "strings"])
def test_a_b_tag_without_i_counts_one_entity_per_word(cased_tokenizer: BertTokenizerFast, given: str) -> None:
    words = ["to", "Wolverhampton"]  # to | Wolver ##ham ##pton
    if given == "strings":
        prepared = _prepare(_rows([(words, ["O", "B-CITY"])]), cased_tokenizer)
    else:
        prepared = _prepare(_rows([(words, [0, 1])]), cased_tokenizer, "preprocess.label_names=[O,B-CITY]")
    names = prepared.info["label_names"]
    labels = prepared.splits["train"][0]["labels"]
    assert _entities(labels, names) == 1, [names[t] for t in labels if t != -100]
    assert labels == ([-100, 0, 1, 2, 2, -100] if given == "strings" else [-100, 0, 1, -100, -100, -100])


def test_iob1_entity_starts_become_b_tags(cased_tokenizer: BertTokenizerFast) -> None:
    raw = _rows([(["Peter", "Blackburn", "EU", "to", "EU"], ["I-PER", "I-PER", "I-ORG", "O", "I-ORG"])])
    prepared = _prepare(raw, cased_tokenizer)
    names = prepared.info["label_names"]
    assert [names[t] for t in prepared.splits["train"][0]["labels"] if t != -100] == [
        "B-PER", "I-PER", "I-PER", "B-ORG", "O", "B-ORG"]
    assert prepared.info["iob1_starts_rewritten"] == {"train": 3, "eval": 3}


def test_iob1_to_iob2_on_ids_equals_the_per_tag_rule() -> None:
    from nlpjobs.tasks.ner import iob1_to_iob2

    rng = np.random.default_rng(3)
    names = ["O", "I-PER", "B-PER", "I-LOC", "B-LOC", "I-MISC"]  # no B-MISC: such an I- tag stays
    sentences = [rng.integers(0, len(names), int(rng.integers(0, 9))).tolist() for _ in range(400)]
    flat = np.array([t for s in sentences for t in s], np.int64)
    ids, rewritten = iob1_to_iob2(flat, np.array([len(s) for s in sentences]), names)
    tags = [[names[i] for i in s] for s in sentences]
    expected = [[new if new in names else old for old, new in zip(t, to_iob2(t))] for t in tags]
    got, at = [], 0
    for s in sentences:
        got.append([names[i] for i in ids[at:at + len(s)]])
        at += len(s)
    assert got == expected and rewritten == int((ids != flat).sum()) > 50


@pytest.mark.parametrize(("tag", "says"), [("PER", "'PER', not of the form"), ("S-PER", "IOBES/BILOU")])
def test_tags_of_another_scheme_are_refused(cased_tokenizer: BertTokenizerFast, tag: str, says: str) -> None:
    with pytest.raises(TaskDataError, match=says):
        _prepare(_rows([(["Peter", "in"], [tag, "O"])]), cased_tokenizer)


def test_label_names_must_be_iob_names(cased_tokenizer: BertTokenizerFast) -> None:
    with pytest.raises(ConfigError, match="preprocess.label_names: 'PER' is not a tag name"):
        _prepare(_rows([(["Peter"], [1])]), cased_tokenizer, "preprocess.label_names=[O,PER]")


def test_csv_cells_hold_json_lists(cased_tokenizer: BertTokenizerFast) -> None:
    ds = datasets.Dataset.from_dict({"tokens": ['["Peter", "in", "EU"]'], "ner_tags": ['["B-PER", "O", "B-ORG"]']})
    prepared = NerTask().prepare(load_job(ROOT / "jobs/local/ner.yaml"), datasets.DatasetDict({"train": ds, "eval": ds}),
                                 cased_tokenizer)
    assert prepared.info["label_names"] == ["O", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert prepared.splits["train"][0]["labels"] == [-100, 3, 0, 1, -100]
    words = datasets.Dataset.from_dict({"tokens": ["Peter in EU"], "ner_tags": [["B-PER", "O", "B-ORG"]]})
    with pytest.raises(TaskDataError, match="tokens in row 0 is the string 'Peter in EU', not a list"):
        NerTask().prepare(load_job(ROOT / "jobs/local/ner.yaml"), datasets.DatasetDict({"train": words, "eval": words}),
                          cased_tokenizer)


@pytest.mark.parametrize(("rows", "says"), [
    ([{"tokens": ["EU", "to"], "ner_tags": [1.0, 0.0]}], "ner_tags of row 0 has 1.0 at position 0, of type double"),
    ([{"tokens": ["EU"], "ner_tags": [True]}], "ner_tags of row 0 has True at position 0, of type bool"),
    ([{"tokens": ["EU"], "ner_tags": ["O"]}, {"tokens": ["EU", 3], "ner_tags": ["O", "O"]}],
     "tokens of row 1 has 3 at position 1, not a string"),
    ([{"tokens": ["EU", "to"], "ner_tags": ["O", 0]}, {"tokens": ["EU"], "ner_tags": [None]}],
     "mixes string and integer tags"),
    ([{"tokens": ["EU"], "ner_tags": [None]}], "ner_tags of row 0 has None at position 0, a null tag"),
    ([{"tokens": ["EU"], "ner_tags": ["O"]}, {"tokens": ["EU"], "ner_tags": "O"}],
     "ner_tags in row 1 is the string 'O', not a list"),
])
def test_tags_and_words_of_other_types_are_refused_by_row(cased_tokenizer: BertTokenizerFast, tmp_path: Path,
                                                          rows: list[dict], says: str) -> None:
    import json

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train")
    with pytest.raises(TaskDataError, match=re.escape(f"split 'train': {says}") if "mixes" not in says else says):
        NerTask().prepare(load_job(ROOT / "jobs/local/ner.yaml"), datasets.DatasetDict({"train": ds, "eval": ds}),
                          cased_tokenizer)
