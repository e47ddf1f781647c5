"""MarianIds gives MarianTokenizer's ids, on both sides, for every kind of text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import MarianTokenizer

from nlpjobs.data.offline import load
from nlpjobs.tasks.seq2seq import marian_tokenizer
from nlpjobs.text.marian import MarianIds

EDGE = ["", " ", "Open the file", "  two  spaces  ", "ünïcödé ♥ 🎬 字", "ends with </s>", "<unk> first",
        "in <pad> the middle", ">>fr<< Open the file", ">>not a code", "x" * 300, "Save\nthe\tdocument",
        "a </s></s> b", "<<>>"]


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    train = load("kde4-en-fr")["train"].select(range(600))
    rows = train["translation"]
    return [r["en"] for r in rows], [r["fr"] for r in rows]


@pytest.fixture(scope="module")
def marian(pairs: tuple[list[str], list[str]]) -> Any:
    return marian_tokenizer(pairs[0], pairs[1], vocab_size=400, max_length=64)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [512, 9, 2, 1])
def test_ids_equal_the_tokenizer(marian: Any, pairs: tuple[list[str], list[str]], side: str, max_length: int) -> None:
    marian.truncation_side = side
    try:
        ids = MarianIds(marian)
        en, fr = pairs[0] + EDGE, pairs[1] + EDGE
        assert ids(en, max_length) == marian(en, max_length=max_length, truncation=True)["input_ids"]
        assert ids(fr, max_length, target=True) == \
            marian(text_target=fr, max_length=max_length, truncation=True)["input_ids"]
    finally:
        marian.truncation_side = "right"


def test_separate_vocabularies(marian: Any, pairs: tuple[list[str], list[str]], tmp_path: Path) -> None:
    marian.save_pretrained(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    target = {piece: len(vocab) - 1 - i for piece, i in vocab.items()}  # the same pieces, other ids
    (tmp_path / "target_vocab.json").write_text(json.dumps(target))
    separate = MarianTokenizer(source_spm=str(tmp_path / "source.spm"), target_spm=str(tmp_path / "target.spm"),
                               vocab=str(tmp_path / "vocab.json"), target_vocab_file=str(tmp_path / "target_vocab.json"),
                               separate_vocabs=True)
    fr = pairs[1][:300] + EDGE
    expected = separate(text_target=fr, max_length=64, truncation=True)["input_ids"]
    assert MarianIds(separate)(fr, 64, target=True) == expected
    assert expected != marian(text_target=fr, max_length=64, truncation=True)["input_ids"]


def test_only_marian_tokenizers(marian: Any) -> None:
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    assert MarianIds.handles(marian)
    assert not MarianIds.handles(AutoTokenizer.from_pretrained(resolve_model("offline:minilm")))

