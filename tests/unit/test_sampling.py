"""The training order: plain and length-grouped permutations (nlpjobs.train.sampling)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from nlpjobs.train.sampling import EpochSampler, TokenWeight, labelled_tokens, row_lengths


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


def test_labelled_tokens_count_the_positions_the_loss_sees() -> None:
    ner = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3, 4], [1, 2]], "labels": [[-100, 1, -100, 0], [-100, -100]]})
    assert labelled_tokens(ner).tolist() == [2, 0]
    assert labelled_tokens(ner.select([1, 0])).tolist() == [0, 2]  # an indices mapping is honoured
    qa = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "start_positions": [0], "end_positions": [1]})
    assert labelled_tokens(qa) is None
    assert TokenWeight.for_split(qa, 8) is None
    classification = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "labels": [1]})
    assert labelled_tokens(classification) is None  # one label per row: nothing to weigh
    assert TokenWeight.for_split(ner, 4).tokens_per_batch == 4.0  # 1 labelled position per row, 4 rows
    assert TokenWeight.for_split(ner.select([1]), 4) is None  # nothing labelled at all


def epoch_objectives(order: list[int], token_losses: list[torch.Tensor], batch_size: int,
                     weight: TokenWeight | None) -> list[float]:
    """Each micro-batch's loss as the engine backpropagates it: the mean over its tokens, then weighted."""
    values = []
    for start in range(0, len(order), batch_size):
        rows = [token_losses[i] for i in order[start:start + batch_size]]
        flat = torch.cat(rows)
        labels = torch.zeros(len(flat), dtype=torch.long)
        mean = flat.mean()
        values.append(float(weight(mean, {"labels": labels}) if weight else mean))
    return values


def test_token_weight_gives_grouped_batches_the_weights_of_random_ones(lengths: np.ndarray) -> None:
    # Short rows have their own (here: low) loss, as CoNLL's one-word lines do: grouping puts them together.
    token_losses = [torch.full((int(n),), 0.1 if n < 10 else 1.0) + torch.rand(int(n)) * 0.01 for n in lengths]
    ds = datasets.Dataset.from_dict({"input_ids": [[1] * int(n) for n in lengths],
                                     "labels": [[0] * int(n) for n in lengths]})
    weight = TokenWeight.for_split(ds, 8)
    assert weight is not None
    total = float(torch.cat(token_losses).sum())
    plain = list(EpochSampler(len(lengths), seed=3))
    grouped = list(EpochSampler(len(lengths), seed=3, lengths=lengths, batch_size=8))
    # Weighted, every token counts once with the same weight, whatever the order: the epoch's sum is fixed.
    for order in (plain, grouped):
        assert sum(epoch_objectives(order, token_losses, 8, weight)) == pytest.approx(total / weight.tokens_per_batch,
                                                                                       rel=1e-6)
    # Unweighted means let the grouped order favour the short rows' tokens.
    unweighted_plain = np.mean(epoch_objectives(plain, token_losses, 8, None))
    unweighted_grouped = np.mean(epoch_objectives(grouped, token_losses, 8, None))
    assert unweighted_grouped < unweighted_plain - 0.02


def test_the_train_log_names_the_batch_order_and_where_it_came_from() -> None:
    from nlpjobs.train.engine import batch_order

    assert batch_order(False, False, True).startswith("batches: random rows (the task's default)")
    assert batch_order(True, True, False).startswith("batches: grouped by length (train.group_by_length)")
    # packed blocks: grouping asked for, but every row has one length
    assert batch_order(True, False, True) == "batches: random rows (every row has the same length: nothing to group)"
