"""The training order: plain and length-grouped permutations (nlpjobs.train.sampling)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from nlpjobs.train.sampling import EpochSampler, row_lengths


def padded_tokens(order: list[int], lengths: np.ndarray, batch_size: int) -> int:
    """Tokens the model computes when every batch is padded to its longest row."""
    return sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


@pytest.fixture
def lengths() -> np.ndarray:
    return np.random.default_rng(0).integers(3, 120, size=1003)


def test_plain_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    a, b = EpochSampler(100, seed=7), EpochSampler(100, seed=7)
    assert list(a) == list(b) and sorted(a) == list(range(100))
    b.set_epoch(1)
    assert list(a) != list(b)


def test_grouped_order_is_a_deterministic_permutation(lengths: np.ndarray) -> None:
    sampler = EpochSampler(len(lengths), seed=3, lengths=lengths, batch_size=8)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    assert order == list(EpochSampler(len(lengths), seed=3, lengths=lengths, batch_size=8))
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_grouping_cuts_padding_and_puts_the_longest_batch_first(lengths: np.ndarray) -> None:
    plain = list(EpochSampler(len(lengths), seed=3))
    grouped = list(EpochSampler(len(lengths), seed=3, lengths=lengths, batch_size=8))
    real = int(lengths.sum())
    assert padded_tokens(grouped, lengths, 8) < 1.1 * real < padded_tokens(plain, lengths, 8)
    assert int(lengths[grouped[:8]].max()) == int(lengths.max())
    # The short last batch (1003 = 125 x 8 + 3) stays last, so every other batch is full.
    tail = set(grouped[-3:])
    assert len(tail) == 3 and all(i in tail for i in grouped[125 * 8:])


def test_batches_are_shuffled_not_sorted_across_the_epoch(lengths: np.ndarray) -> None:
    grouped = list(EpochSampler(len(lengths), seed=3, lengths=lengths, batch_size=8))
    batch_max = [int(lengths[grouped[i:i + 8]].max()) for i in range(8, 1000, 8)]
    assert batch_max != sorted(batch_max, reverse=True) and batch_max != sorted(batch_max)


def test_equal_lengths_keep_the_plain_order() -> None:
    same = np.full(50, 128)
    assert not EpochSampler(50, 1, same, 4).grouped
    assert list(EpochSampler(50, 1, same, 4)) == list(EpochSampler(50, 1))


def test_row_lengths_from_arrow_columns() -> None:
    ner = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [1, 2]], "labels": [[0, 1, 0], [1, 0]]})
    assert row_lengths(ner).tolist() == [3, 2]  # token labels add nothing
    seq2seq = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [1, 2]], "labels": [[5], [5, 6, 7, 8]]})
    assert row_lengths(seq2seq).tolist() == [4, 6]
    assert row_lengths(seq2seq.select([1])).tolist() == [6]  # an indices mapping is honoured
    assert row_lengths(datasets.Dataset.from_dict({"x": [1]})) is None


def test_rows_padded_to_one_width_are_grouped_by_their_attended_tokens() -> None:
    padded = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 0], [1, 0, 0, 0], [4, 5, 6, 7]],
                                         "attention_mask": [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]})
    assert row_lengths(padded).tolist() == [3, 1, 4]  # QA windows stored padded to max_length
    assert row_lengths(padded.select([2, 1])).tolist() == [4, 1]
    assert EpochSampler(3, 1, row_lengths(padded), 1).grouped
