"""Batch encoding straight through a fast tokenizer's Rust backend, for preprocessing.

``tokenizer(texts)`` spends a good part of its time outside the Rust tokenizer: it turns every
``Encoding`` into a dict of Python lists (ids, attention mask, type ids, offsets...) and merges them
into one ``BatchEncoding``. Preprocessing needs only some of those, as flat arrays. The backend's
``encode_batch`` gives the same encodings (it is what ``tokenizer(texts)`` calls), and
``encode_batch_fast`` skips offset tracking, about half the work of byte-level BPE (GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

import numpy as np


@contextmanager
def rust_backend(tokenizer: Any, max_length: int | None = None, *, stride: int = 0,
                 strategy: str = "longest_first", pad_to_max_length: bool = False) -> Iterator[Any]:
    """The Rust tokenizer behind ``tokenizer`` (a ``PreTrainedTokenizerFast``), set up as ``tokenizer(...,
    truncation=strategy if max_length else False, max_length=max_length, stride=stride,
    padding="max_length" if pad_to_max_length else False)`` sets it, on the tokenizer's truncation and padding
    sides, special tokens in the text kept whole unless the tokenizer splits them. Its previous settings are
    restored on exit."""
    backend = tokenizer.backend_tokenizer
    truncation, padding, split_special = backend.truncation, backend.padding, backend.encode_special_tokens
    try:
        backend.no_padding()
        if max_length is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(max_length, stride=stride, strategy=strategy, direction=tokenizer.truncation_side)
            if pad_to_max_length:
                backend.enable_padding(length=max_length, direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                                       pad_type_id=tokenizer.pad_token_type_id, pad_token=tokenizer.pad_token)
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        yield backend
    finally:
        backend.encode_special_tokens = split_special
        if truncation is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(**truncation)
        if padding is None:
            backend.no_padding()
        else:
            backend.enable_padding(**padding)


def flat_ids(encodings: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``encodings`` row after row (int32) and each row's length (int64)."""
    lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, int(lengths.sum()))
    return ids, lengths


def encode_ids(tokenizer: Any, texts: Sequence[str], max_length: int | None = None,
               add_special_tokens: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """:func:`flat_ids` of ``tokenizer(texts, truncation=..., max_length=max_length)["input_ids"]``, the same
    ids, without offset tracking (``encode_batch_fast``)."""
    with rust_backend(tokenizer, max_length) as backend:
        return flat_ids(backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens))


def block_starts(lengths: np.ndarray, block: int) -> np.ndarray:
    """Start offsets, in the flat concatenation of rows of ``lengths``, of every full ``block`` inside a row
    (each row's tail shorter than ``block`` is left out)."""
    full = lengths // block
    row_starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(len(lengths)), full)
    within = np.arange(int(full.sum())) - np.repeat(np.cumsum(full) - full, full)
    return row_starts[row] + within * block


def take_blocks(values: np.ndarray, starts: np.ndarray, block: int) -> np.ndarray:
    """[len(starts), block] array of ``values[s:s + block]`` for every start ``s``."""
    return values[(starts[:, None] + np.arange(block)).ravel()].reshape(len(starts), block)


def _special_tokens_around(backend: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The ids the post-processor puts before and after a single word sequence, or None where it does something
    else than wrapping the sequence (then each sentence has to go through it)."""
    bare = backend.encode(["a"], is_pretokenized=True, add_special_tokens=False).ids
    full = backend.encode(["a"], is_pretokenized=True)
    words = [i for i, w in enumerate(full.word_ids) if w is not None]
    if not words or full.ids[words[0]:words[-1] + 1] != bare:
        return None
    prefix, suffix = full.ids[:words[0]], full.ids[words[-1] + 1:]
    if len(prefix) + len(suffix) != backend.num_special_tokens_to_add(False):
        return None
    return np.asarray(prefix, np.int32), np.asarray(suffix, np.int32)


class WordEncoder:
    """``tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)`` as flat
    arrays, for batch after batch of sentences.

    With pre-split words the Rust tokenizer normalizes, pre-tokenizes and splits every word on its own and
    concatenates the pieces, so a word's pieces do not depend on where it stands: each distinct word is
    tokenized once, the first time a batch holds it (CoNLL-2003: 26k distinct words of 250k), and
    sentences are assembled from the pieces. Words are remembered up to ``max_words``, then forgotten.
    """

    def __init__(self, tokenizer: Any, max_length: int, max_words: int = 1_000_000) -> None:
        self.tokenizer, self.max_length, self.max_words = tokenizer, max_length, max_words
        self._index: dict[str, int] = {}
        self._pieces = np.zeros(0, np.int32)  # every known word's pieces, word after word
        self._counts = np.zeros(0, np.int64)  # pieces per known word
        with rust_backend(tokenizer) as backend:
            self._around = _special_tokens_around(backend)
            self._n_special = backend.num_special_tokens_to_add(False)

    def __call__(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids row after row, int32; each token's word index in its sentence, -1 for special tokens;
        tokens per sentence)."""
        if self._around is None or self.max_length <= self._n_special:
            return self._sentence_by_sentence(sentences)
        if len(self._index) > self.max_words:
            self._index, self._pieces, self._counts = {}, self._pieces[:0], self._counts[:0]
        n_words = np.fromiter(map(len, sentences), np.int64, len(sentences))
        known = len(self._index)
        index = self._index
        word_of = np.fromiter((index.setdefault(w, len(index)) for w in chain.from_iterable(sentences)), np.int64,
                              int(n_words.sum()))
        if len(index) > known:
            self._learn(list(index)[known:])
        return self._assemble(word_of, n_words)

    def _learn(self, words: list[str]) -> None:
        """Pieces of new words, in a few long pre-split sequences (one call per word costs twice as much) that
        the Rust tokenizer spreads over the cores."""
        parts = max(1, min(8, len(words) // 256))
        bounds = np.linspace(0, len(words), parts + 1).astype(np.int64)
        with rust_backend(self.tokenizer) as backend:
            encodings = backend.encode_batch([words[a:b] for a, b in zip(bounds[:-1], bounds[1:])],
                                             is_pretokenized=True, add_special_tokens=False)
        pieces, _ = flat_ids(encodings)
        counts = [np.bincount(np.asarray(e.word_ids, np.int64), minlength=b - a)
                  for e, a, b in zip(encodings, bounds[:-1], bounds[1:])]
        self._pieces = np.concatenate([self._pieces, pieces])
        self._counts = np.concatenate([self._counts, *counts]).astype(np.int64)

    def _assemble(self, word_of: np.ndarray, n_words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prefix, suffix = self._around  # type: ignore[misc]
        pieces, piece_counts = self._pieces, self._counts
        n_special, room = self._n_special, self.max_length - self._n_special
        # every word of every sentence, as its pieces
        counts = piece_counts[word_of]
        piece_starts = np.cumsum(piece_counts) - piece_counts
        n_tokens = int(counts.sum())
        within_word = np.arange(n_tokens) - np.repeat(np.cumsum(counts) - counts, counts)
        body = pieces[np.repeat(piece_starts[word_of], counts) + within_word]
        sentence_starts = np.cumsum(n_words) - n_words
        word_index = np.repeat(np.arange(len(word_of)) - np.repeat(sentence_starts, n_words), counts)
        # each sentence's tokens truncated to what max_length leaves beside the special tokens, on the
        # tokenizer's truncation side
        sentence = np.repeat(np.arange(len(n_words)), n_words)
        body_lengths = np.bincount(sentence, weights=counts, minlength=len(n_words)).astype(np.int64)
        kept = np.minimum(body_lengths, room)
        position = np.arange(n_tokens) - np.repeat(np.cumsum(body_lengths) - body_lengths, body_lengths)
        if self.tokenizer.truncation_side == "left":
            keep = position >= np.repeat(body_lengths - kept, body_lengths)
        else:
            keep = position < np.repeat(kept, body_lengths)
        body, word_index = body[keep], word_index[keep]
        # the special tokens around every sentence
        lengths = kept + n_special
        starts = np.cumsum(lengths) - lengths
        ids = np.empty(int(lengths.sum()), np.int32)
        words = np.full(len(ids), -1, np.int64)
        body_at = np.repeat(starts + len(prefix), kept) + np.arange(len(body)) - np.repeat(np.cumsum(kept) - kept, kept)
        ids[body_at], words[body_at] = body, word_index
        for offset, token in enumerate(prefix):
            ids[starts + offset] = token
        for offset, token in enumerate(suffix):
            ids[starts + lengths - len(suffix) + offset] = token
        return ids, words, lengths

    def _sentence_by_sentence(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A post-processor of another shape than special tokens around the sentence: through it, per sentence."""
        with rust_backend(self.tokenizer, self.max_length) as backend:
            encodings = backend.encode_batch(list(sentences), is_pretokenized=True)
        ids, lengths = flat_ids(encodings)
        words = np.fromiter(chain.from_iterable(e.word_ids for e in encodings), np.float64, len(ids))  # None: NaN
        return ids, np.where(np.isnan(words), -1, words).astype(np.int64), lengths

