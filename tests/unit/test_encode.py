"""Encoding through the Rust backend gives what ``tokenizer(texts)`` gives, and leaves the tokenizer as it was."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from nlpjobs.models import resolve_model
from nlpjobs.tasks import clm
from nlpjobs.text.encode import (
    WordEncoder,
    block_starts,
    encode_ids,
    flat_ids,
    rust_backend,
    take_blocks,
)

TEXTS = ["The movie was great!", "", "  leading spaces and émojis 🎬 [MASK] here",
         "A much longer review that goes on " * 30, "[SEP] inside the text [CLS]"]


@pytest.fixture(scope="module", params=["bert", "gpt2"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    if request.param == "gpt2":
        return clm.load_base_tokenizer("offline:gpt2")
    return AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))


def _rows(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    return [row.tolist() for row in np.split(ids, np.cumsum(lengths)[:-1])] if len(lengths) else []


@pytest.mark.parametrize("max_length", [None, 7])
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_ids_equal_the_tokenizer_call(tokenizer: Any, max_length: int | None, add_special_tokens: bool) -> None:
    ids, lengths = encode_ids(tokenizer, TEXTS, max_length, add_special_tokens)
    expected = tokenizer(TEXTS, truncation=max_length is not None, max_length=max_length,
                         add_special_tokens=add_special_tokens)["input_ids"]
    assert ids.dtype == np.int32 and lengths.tolist() == [len(x) for x in expected]
    assert _rows(ids, lengths) == expected


def test_truncation_side_is_the_tokenizer_s(tokenizer: Any) -> None:
    tokenizer.truncation_side = "left"
    try:
        ids, lengths = encode_ids(tokenizer, TEXTS, 6)
        assert _rows(ids, lengths) == tokenizer(TEXTS, truncation=True, max_length=6)["input_ids"]
    finally:
        tokenizer.truncation_side = "right"


def test_backend_settings_are_restored(tokenizer: Any) -> None:
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(11, stride=2, strategy="only_first")
    backend.enable_padding(length=13, pad_id=0, pad_token="[PAD]")
    before = (backend.truncation, backend.padding)
    try:
        with rust_backend(tokenizer) as inside:
            assert inside.truncation is None and inside.padding is None
            assert len(inside.encode("word " * 40).ids) > 13
        with pytest.raises(RuntimeError), rust_backend(tokenizer, 5):
            raise RuntimeError("a failure inside the block")
        assert (backend.truncation, backend.padding) == before
    finally:
        backend.no_truncation()
        backend.no_padding()


def test_flat_ids_of_no_rows() -> None:
    ids, lengths = flat_ids([])
    assert ids.shape == (0,) and lengths.shape == (0,)


def test_blocks_are_each_row_s_full_windows() -> None:
    lengths = np.array([5, 0, 2, 7, 3])
    values = np.arange(lengths.sum())
    starts = block_starts(lengths, 3)
    rows = _rows(values, lengths)
    expected = [row[i:i + 3] for row in rows for i in range(0, len(row) // 3 * 3, 3)]
    assert take_blocks(values, starts, 3).tolist() == expected
    assert take_blocks(values, block_starts(np.array([2, 1]), 3), 3).shape == (0, 3)


SENTENCES = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."], [],
             ["Peter", "Blackburn"], ["", "a", " ", "b"], ["[SEP]", "inside", "émojis🎬", "EU"],
             ["boycott"] * 30, ["Unbelievably", "long", "hyphenated-words", "re-re-reappear", "EU"]]


@functools.cache
def _word_tokenizers() -> list[Any]:
    from tokenizers import SentencePieceUnigramTokenizer, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bert = AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))
    gpt2 = clm.load_base_tokenizer("offline:gpt2")
    roberta_like = AutoTokenizer.from_pretrained(gpt2.name_or_path, add_prefix_space=True)
    # a SentencePiece-style (Metaspace, Unigram) tokenizer with </s> after the sequence, trained here
    spm = SentencePieceUnigramTokenizer()
    spm.train_from_iterator([" ".join(s) for s in SENTENCES] * 5 + TEXTS * 5, vocab_size=150,
                            special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    spm.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    t5_like = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(spm.to_str()), eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    return [bert, roberta_like, t5_like]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [512, 6, 3])
def test_word_encoder_equals_the_tokenizer_call(side: str, max_length: int) -> None:
    for tok in _word_tokenizers():
        tok.truncation_side = side
        ids, words, lengths = WordEncoder(tok, max_length)(SENTENCES)
        expected = tok(SENTENCES, is_split_into_words=True, truncation=True, max_length=max_length)
        assert _rows(ids, lengths) == expected["input_ids"], (type(tok).__name__, side, max_length)
        word_ids = [[-1 if w is None else w for w in expected.word_ids(i)] for i in range(len(SENTENCES))]
        assert _rows(words, lengths) == word_ids, (type(tok).__name__, side, max_length)


def test_word_encoder_sentence_by_sentence_where_the_post_processor_is_not_a_wrapper(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import nlpjobs.text.encode as encode

    monkeypatch.setattr(encode, "_special_tokens_around", lambda backend: None)
    for tok in _word_tokenizers():
        tok.truncation_side = "right"
        ids, words, lengths = WordEncoder(tok, 6)(SENTENCES)
        expected = tok(SENTENCES, is_split_into_words=True, truncation=True, max_length=6)
        assert _rows(ids, lengths) == expected["input_ids"]
        assert _rows(words, lengths) == [[-1 if w is None else w for w in expected.word_ids(i)]
                                         for i in range(len(SENTENCES))]


@pytest.mark.parametrize("max_words", [1_000_000, 3])
def test_word_encoder_remembers_words_across_batches(max_words: int) -> None:
    for tok in _word_tokenizers():
        tok.truncation_side = "right"
        encode = WordEncoder(tok, 8, max_words=max_words)
        for batch in (SENTENCES[:3], SENTENCES[3:], SENTENCES[::-1], [[]]):
            ids, words, lengths = encode(batch)
            expected = tok(batch, is_split_into_words=True, truncation=True, max_length=8)
            assert _rows(ids, lengths) == expected["input_ids"]
            assert _rows(words, lengths) == [[-1 if w is None else w for w in expected.word_ids(i)]
                                             for i in range(len(batch))]
        assert len(encode._index) <= max_words + len({w for s in SENTENCES for w in s})


def test_word_encoder_learns_many_new_words_in_parts() -> None:
    words = [f"{w}{i}" for i, w in enumerate(("über", "lamb", "x", "Blackburn", "", "🎬"))]
    sentences = [[f"{w}{i}" for w in words] for i in range(150)]  # 900 distinct words: several parts
    for tok in _word_tokenizers():
        tok.truncation_side = "right"
        ids, words_out, lengths = WordEncoder(tok, 4096)(sentences)
        expected = tok(sentences, is_split_into_words=True, truncation=True, max_length=4096)
        assert _rows(ids, lengths) == expected["input_ids"]
        assert _rows(words_out, lengths)[-1] == [-1 if w is None else w for w in expected.word_ids(len(sentences) - 1)]
