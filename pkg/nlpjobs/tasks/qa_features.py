"""Extractive-QA feature building and answer post-processing.

Pure functions over lists and NumPy arrays; no model code. The feature builders return NumPy columns
(``datasets.map`` writes them to Arrow without inspecting Python lists element by element). The vectorised
functions reproduce the course's algorithms exactly (same labels, same predictions, same tie handling); the
benchmark's ``bench/course.py`` keeps the course's loops, and its tests check the two agree.

Offset convention for evaluation features: offsets of tokens outside the context (question,
special tokens, padding) are stored as ``(-1, -1)`` instead of the course's ``None`` so the column
is a plain integer list in Arrow; post-processing treats a negative start offset as "outside the
context".

Deviations from the course, all bug fixes:
- an example without an answer (empty ``text``/``answer_start``, e.g. SQuAD v2) gets ``(0, 0)``
  labels on every feature instead of an ``IndexError``;
- the context span is found from a ``sequence_ids == 1`` mask, not by scanning from index 0, so it
  also works with left padding;
- ``find_answer_mismatches`` reports gold answers whose ``answer_start`` does not point at the text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from nlpjobs.text.encode import rust_backend
from nlpjobs.text.pairs import PairWindows, assemble_pair_windows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

OUTSIDE = -1
"""Offset value marking a token outside the context in evaluation features."""


def find_answer_mismatches(contexts: Sequence[str], answers: Sequence[Mapping[str, Any]],
                           unanswerable_ok: bool = False) -> list[int]:
    """Indices of examples whose first answer text is not at ``answer_start[0]``, and of those with no answer
    unless ``unanswerable_ok`` (SQuAD v2's unanswerable questions, trained with ``(0, 0)`` labels)."""
    if len(contexts) != len(answers):
        raise ValueError(f"{len(contexts)} contexts but {len(answers)} answers")
    bad = []
    for i, (context, answer) in enumerate(zip(contexts, answers, strict=True)):
        texts, starts = answer.get("text") or [], answer.get("answer_start") or []
        if not texts or not starts:
            if not (unanswerable_ok and not texts and not starts):
                bad.append(i)
            continue
        start, text = int(starts[0]), texts[0]
        if start < 0 or context[start : start + len(text)] != text:
            bad.append(i)
    return bad


def _check_inputs(questions: Sequence[str], contexts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> None:
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("extractive QA preprocessing needs a fast tokenizer (offsets, sequence_ids)")


@dataclass
class _Windows:
    """The course's tokenizer call as the Rust backend returns it: every window (a question with
    one stretch of its context, padded to max_length), overflow windows after their first."""

    encodings: list[Any]
    sample_map: np.ndarray
    """The example each window comes from (the call's ``overflow_to_sample_mapping``)."""
    model_inputs: tuple[str, ...]
    """The columns the call returns for the model (input_ids, and token_type_ids/attention_mask where the
    tokenizer's model_input_names has them)."""

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.encodings), len(self.encodings[0]) if self.encodings else 0


def _encode_windows(questions: Sequence[str], contexts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                    max_length: int, stride: int) -> _Windows:
    """The course's tokenizer call's windows straight from the Rust backend, without the per-window dicts of Python
    lists the call builds (a fifth of QA preprocessing)."""
    model_inputs = _window_inputs(questions, contexts, tokenizer)
    with rust_backend(tokenizer, max_length, stride=stride, strategy="only_second", pad_to_max_length=True) as backend:
        first = backend.encode_batch(list(zip([q.strip() for q in questions], contexts)))
    encodings, sample_map = [], []
    for i, encoding in enumerate(first):
        windows = [encoding, *encoding.overflowing]
        encodings.extend(windows)
        sample_map.extend([i] * len(windows))
    return _Windows(encodings, np.asarray(sample_map, dtype=np.int64), model_inputs)


def _window_inputs(questions: Sequence[str], contexts: Sequence[str], tokenizer: PreTrainedTokenizerBase
                   ) -> tuple[str, ...]:
    """Check the inputs of a windows call; the columns it returns for the model (input_ids, and
    token_type_ids/attention_mask where the tokenizer's model_input_names has them)."""
    _check_inputs(questions, contexts, tokenizer)
    if tokenizer.pad_token is None:
        raise ValueError("extractive QA pads every window to max_length, but the tokenizer has no padding token; "
                         "set one (tokenizer.pad_token = ...) or pick a model whose tokenizer has one")
    names = ("input_ids", "attention_mask", "token_type_ids")
    return tuple(k for k in names if k == "input_ids" or k in tokenizer.model_input_names)


def _features(questions: Sequence[str], contexts: Sequence[str], tokenizer: PreTrainedTokenizerBase,
              max_length: int, stride: int) -> PairWindows:
    """The windows of the course's call as arrays: assembled from each side tokenized once
    (:mod:`nlpjobs.text.pairs`) where that reproduces the call, else read from the backend's own windows."""
    model_inputs = _window_inputs(questions, contexts, tokenizer)
    assembled = assemble_pair_windows([q.strip() for q in questions], contexts, tokenizer, max_length, stride,
                                      model_inputs)
    if assembled is not None:
        return assembled
    windows = _encode_windows(questions, contexts, tokenizer, max_length, stride)
    return PairWindows(_model_columns(windows), _context_mask(windows), _offsets(windows), windows.sample_map)


def _grid(rows: Iterable[Sequence[Any]], shape: tuple[int, ...]) -> np.ndarray:
    """An int64 array of ``shape`` from equally long rows (of ints, or of int pairs when 3-D), without
    NumPy's per-element type inference over nested lists."""
    flat: Any = chain.from_iterable(rows)
    if len(shape) == 3:
        flat = chain.from_iterable(flat)
    return np.fromiter(flat, dtype=np.int64, count=int(np.prod(shape))).reshape(shape)


def _context_mask(windows: _Windows) -> np.ndarray:
    """Boolean [F, L] mask of context tokens (``sequence_ids == 1``; None is not context).

    A window's context tokens are one run (question, separator, context, separator, padding): each run is
    found with list methods (C speed) instead of a test per token. Should some tokenizer scatter them, the
    mask is read token by token.
    """
    shape = windows.shape
    first, stop = np.zeros(shape[0], np.int64), np.zeros(shape[0], np.int64)
    for i, enc in enumerate(windows.encodings):
        ids = enc.sequence_ids
        count = ids.count(1)
        if count:
            start = ids.index(1)
            if ids[start:start + count].count(1) != count:  # not one run
                flags = (s == 1 for enc in windows.encodings for s in enc.sequence_ids)
                return np.fromiter(flags, dtype=bool, count=shape[0] * shape[1]).reshape(shape)
            first[i], stop[i] = start, start + count
    positions = np.arange(shape[1])
    return (positions >= first[:, None]) & (positions < stop[:, None])


_ENCODING_FIELD = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}


def _model_columns(windows: _Windows) -> dict[str, np.ndarray]:
    return {k: _grid((getattr(e, _ENCODING_FIELD[k]) for e in windows.encodings), windows.shape)
            for k in windows.model_inputs}


def _offsets(windows: _Windows) -> np.ndarray:
    """Character offsets [F, L, 2] of every window's tokens."""
    return _grid((e.offsets for e in windows.encodings), (*windows.shape, 2))


def _answer_chars(answers: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per example: start char, end char (exclusive) and whether it has an answer at all."""
    n = len(answers)
    start, end, has = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool)
    for i, answer in enumerate(answers):
        texts, starts = answer.get("text") or [], answer.get("answer_start") or []
        if texts and starts:
            start[i], end[i], has[i] = int(starts[0]), int(starts[0]) + len(texts[0]), True
    return start, end, has


def prepare_train_features(
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    stride: int = 128,
) -> dict[str, Any]:
    """Sliding-window training features with start/end token labels, vectorised.

    A feature whose window does not hold the whole answer is labelled ``(0, 0)``. Otherwise start is
    the last context token with start offset <= start_char and end the first context token with
    end offset >= end_char, exactly as the course's scans. ``example_index`` is the overflow
    sample mapping.
    """
    if len(answers) != len(contexts):
        raise ValueError(f"{len(contexts)} contexts but {len(answers)} answers")
    windows = _features(questions, contexts, tokenizer, max_length, stride)
    sample_map, offsets, ctx = windows.sample_map, windows.offsets, windows.context
    n_feat, seq_len = ctx.shape
    rows = np.arange(n_feat)

    ex_start, ex_end, ex_has = _answer_chars(answers)
    start_char, end_char = ex_start[sample_map], ex_end[sample_map]

    has_ctx = ctx.any(axis=1)
    ctx_start = ctx.argmax(axis=1)
    ctx_end = seq_len - 1 - ctx[:, ::-1].argmax(axis=1)
    inside = (
        ex_has[sample_map]
        & has_ctx
        & (offsets[rows, ctx_start, 0] <= start_char)
        & (offsets[rows, ctx_end, 1] >= end_char)
    )
    # start: the course scans right while offset[idx][0] <= start_char and takes idx - 1.
    stop = ctx & (offsets[:, :, 0] > start_char[:, None])
    start_pos = np.where(stop.any(axis=1), stop.argmax(axis=1), ctx_end + 1) - 1
    # end: the course scans left while offset[idx][1] >= end_char and takes idx + 1.
    stop = ctx & (offsets[:, :, 1] < end_char[:, None])
    last_stop = seq_len - 1 - stop[:, ::-1].argmax(axis=1)
    end_pos = np.where(stop.any(axis=1), last_stop, ctx_start - 1) + 1

    out = dict(windows.columns)
    out["start_positions"] = np.where(inside, start_pos, 0)
    out["end_positions"] = np.where(inside, end_pos, 0)
    out["example_index"] = sample_map
    return out


def prepare_eval_features(
    ids: Sequence[str],
    questions: Sequence[str],
    contexts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 384,
    stride: int = 128,
) -> dict[str, Any]:
    """Sliding-window evaluation features with ``example_id`` and ``offset_mapping``.

    Offsets of non-context tokens (question, special tokens, padding) are ``[-1, -1]`` rather than
    ``None``. Drop ``example_id`` and ``offset_mapping`` before the forward pass.
    """
    if len(ids) != len(contexts):
        raise ValueError(f"{len(ids)} ids but {len(contexts)} contexts")
    windows = _features(questions, contexts, tokenizer, max_length, stride)
    sample_map, offsets = windows.sample_map, windows.offsets
    offsets[~windows.context] = OUTSIDE

    out: dict[str, Any] = dict(windows.columns)
    out["offset_mapping"] = offsets
    out["example_id"] = [ids[i] for i in sample_map.tolist()]
    return out


def _check_logits(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, n_ids: int) -> None:
    if start.ndim != 2 or start.shape != end.shape:
        raise ValueError(f"start/end logits must both be [F, L]; got {start.shape} and {end.shape}")
    if offsets.shape != (*start.shape, 2):
        raise ValueError(f"offset_mapping must be {(*start.shape, 2)}; got {offsets.shape}")
    if n_ids != start.shape[0]:
        raise ValueError(f"{n_ids} feature example ids for {start.shape[0]} features")


def _gather_rows(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``np.take_along_axis(x, idx, axis=1)`` for a C-contiguous 2-D ``x``: one flat ``take`` (several times
    faster on [features, k] indices, where take_along_axis's index construction dominates)."""
    return x.reshape(-1).take(idx + (np.arange(x.shape[0]) * x.shape[1])[:, None])


def _top_k_desc(x: np.ndarray, k: int) -> np.ndarray:
    """Per row, ``np.argsort(row)[-1:-k-1:-1]`` exactly, without sorting whole rows where possible.

    The top ``k`` set and its order are unique when the top ``k + 1`` values are distinct and not
    NaN: those rows go through a value partition and a sort of ``k + 1`` values. Other rows (ties,
    NaN) fall back to the full argsort, so the tie order stays the course's.
    """
    n_rows, length = x.shape
    if k + 1 >= length:
        return np.argsort(x, axis=1)[:, -1 : -k - 1 : -1]
    x = np.ascontiguousarray(x)
    full, top = x, np.empty((n_rows, k), dtype=np.intp)
    threshold = np.partition(x, length - k - 1, axis=1)[:, length - k - 1]
    above = x >= threshold[:, None]
    clean = np.count_nonzero(above, axis=1) == k + 1  # no tie at the threshold, no NaN
    if not clean.all():
        x, above = x[clean], above[clean]
    flat = np.flatnonzero(above)
    vals = x.reshape(-1)[flat].reshape(-1, k + 1)
    cand = (flat % length).reshape(-1, k + 1)
    order = np.argsort(vals, axis=1)[:, ::-1]
    ranked = _gather_rows(vals, order)
    top[clean] = _gather_rows(cand, order)[:, :k]
    ambiguous = ~clean
    ambiguous[clean] = (ranked[:, :-1] == ranked[:, 1:]).any(axis=1)
    if ambiguous.any():
        top[ambiguous] = np.argsort(full[ambiguous], axis=1)[:, -1 : -k - 1 : -1]
    return top


def _best_pairs(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, s_idx: np.ndarray, e_idx: np.ndarray,
                max_answer_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per feature, the course's best (start rank, end rank) pair as ``s_rank * k + e_rank``, its score and
    whether the feature has a valid pair at all.

    Valid: both tokens in the context (offset >= 0) and ``0 <= e - s < max_answer_length``. The score matrix is
    built with -inf already in place of out-of-context candidates ([F, k] work) and the span mask applied once,
    so the [F, k, k] arrays are few (this step reads and writes memory more than it computes). Features whose
    best is -inf (no valid pair, or valid pairs all at -inf, where the course keeps the first valid one) are
    settled on the full validity mask; NaN logits take that mask for every feature.
    """
    n_feat, k = s_idx.shape
    rows = np.arange(n_feat)[:, None]
    index_type = np.int16 if start.shape[1] <= np.iinfo(np.int16).max else np.int32
    # 0 <= e - s < max_answer_length as one unsigned comparison (a negative span wraps to a huge value)
    span = e_idx.astype(index_type)[:, None, :] - s_idx.astype(index_type)[:, :, None]
    span_ok = span.view(np.dtype(index_type).str.replace("i", "u")) < max_answer_length
    # in-context flags gathered at the 2k candidates only: reading all of the [F, L, 2] offsets costs more
    s_ctx, e_ctx = offsets[rows, s_idx, 0] >= 0, offsets[rows, e_idx, 0] >= 0
    s_val, e_val = _gather_rows(start, s_idx), _gather_rows(end, e_idx)
    minus_inf = np.array(-np.inf, dtype=np.result_type(s_val, e_val))  # no float64 upcast

    def validity(which: np.ndarray | slice) -> np.ndarray:
        return (s_ctx[which][:, :, None] & e_ctx[which][:, None, :] & span_ok[which]).reshape(-1, k * k)

    if np.isnan(s_val).any() or np.isnan(e_val).any():  # -inf + NaN is NaN: mask the plain sums instead
        masked = np.where(validity(slice(None)), (s_val[:, :, None] + e_val[:, None, :]).reshape(n_feat, k * k),
                          minus_inf)
    else:
        pair = np.where(s_ctx, s_val, minus_inf)[:, :, None] + np.where(e_ctx, e_val, minus_inf)[:, None, :]
        masked = np.where(span_ok, pair, minus_inf).reshape(n_feat, k * k)
    best = masked.argmax(axis=1)
    best_score = masked[rows[:, 0], best]
    feat_ok = np.ones(n_feat, dtype=bool)
    unsure = np.flatnonzero(best_score == -np.inf)
    if unsure.size:
        valid = validity(unsure)
        feat_ok[unsure] = valid.any(axis=1)
        first_valid = valid.argmax(axis=1)
        best[unsure] = np.where(feat_ok[unsure], first_valid, best[unsure])
    return best, best_score, feat_ok


def postprocess_predictions(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    feature_example_ids: Sequence[str],
    offset_mapping: np.ndarray,
    examples: Mapping[str, Sequence[str]],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Best answer text per example id, ``""`` when no valid span; vectorised.

    Per feature: top-``n_best`` start and end indices (the course's argsort order), an
    n_best x n_best score matrix ``start_logit[s] + end_logit[e]`` masked for out-of-context tokens
    (offset < 0), ``e < s`` and ``e - s + 1 > max_answer_length``. The best candidate per example
    across its features wins; ties go to the earliest feature, then start rank, then end rank,
    exactly as the course's ``max`` over its candidate list.
    """
    return _best_spans(start_logits, end_logits, feature_example_ids, offset_mapping, examples, n_best,
                       max_answer_length)[0]


def postprocess_with_null(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    feature_example_ids: Sequence[str],
    offset_mapping: np.ndarray,
    examples: Mapping[str, Sequence[str]],
    n_best: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """As :func:`postprocess_predictions`, with SQuAD v2's "no answer" (Hugging Face's run_qa.py with
    ``version_2_with_negative``): an example's null score is the lowest ``start_logit[0] + end_logit[0]`` (the
    [CLS] token, which unanswerable features are trained to point at) over its features; the answer is ``""``
    when that null score exceeds the best span's score by more than ``null_score_diff_threshold``, or when the
    example has no valid span.
    """
    preds, scores = _best_spans(start_logits, end_logits, feature_example_ids, offset_mapping, examples, n_best,
                                max_answer_length)
    start, end = np.asarray(start_logits), np.asarray(end_logits)
    null = (start[:, 0] + end[:, 0]).tolist() if start.size else []
    lowest: dict[str, float] = {}
    for eid, score in zip(feature_example_ids, null, strict=True):
        if eid not in lowest or score < lowest[eid]:
            lowest[eid] = score
    for eid in preds:
        if eid not in scores or (eid in lowest and lowest[eid] - scores[eid] > null_score_diff_threshold):
            preds[eid] = ""
    return preds


def _best_spans(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    feature_example_ids: Sequence[str],
    offset_mapping: np.ndarray,
    examples: Mapping[str, Sequence[str]],
    n_best: int,
    max_answer_length: int,
) -> tuple[dict[str, str], dict[str, float]]:
    """Best span text per example id (``""`` when none) and the best span's score for those that have one."""
    start = np.asarray(start_logits)
    end = np.asarray(end_logits)
    offsets = np.asarray(offset_mapping)
    _check_logits(start, end, offsets, len(feature_example_ids))
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best and max_answer_length must be >= 1; got {n_best}, {max_answer_length}")
    ids, contexts = list(examples["id"]), examples["context"]
    preds = dict.fromkeys(ids, "")
    scores: dict[str, float] = {}
    n_feat = start.shape[0]
    if n_feat == 0 or not ids:
        return preds, scores

    k = min(n_best, start.shape[1])
    start, end = np.ascontiguousarray(start), np.ascontiguousarray(end)
    s_idx = _top_k_desc(start, k)
    e_idx = _top_k_desc(end, k)
    best, best_score, feat_ok = _best_pairs(start, end, offsets, s_idx, e_idx, max_answer_length)

    position = {eid: i for i, eid in enumerate(ids)}
    ex_pos = np.array([position.get(eid, -1) for eid in feature_example_ids], dtype=np.int64)
    feats = np.flatnonzero(ex_pos >= 0)
    # Per example: valid features first, then highest score, then lowest feature index.
    order = feats[np.lexsort((feats, -best_score[feats], ~feat_ok[feats], ex_pos[feats]))]
    grouped = ex_pos[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = grouped[1:] != grouped[:-1]
    win = order[first][feat_ok[order[first]]]
    char_start = offsets[win, s_idx[win, best[win] // k], 0].tolist()
    char_end = offsets[win, e_idx[win, best[win] % k], 1].tolist()
    for ex, a, b, score in zip(ex_pos[win].tolist(), char_start, char_end, best_score[win].tolist(), strict=True):
        preds[ids[ex]] = contexts[ex][a:b]
        scores[ids[ex]] = score
    return preds, scores


