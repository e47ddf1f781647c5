"""Extractive-QA windows assembled in NumPy from questions and contexts tokenized on their own.

The course's call ``tokenizer(questions, contexts, truncation="only_second", max_length=L, stride=S,
return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")`` tokenizes each
(question, context) pair, cuts the context into overlapping stretches and builds one padded window per
stretch, every window a Rust ``Encoding`` turned into Python lists. The tokens of a pair are the
question's and the context's tokens, each sequence tokenized on its own, joined by the post-processor's
special tokens; the stretches are the Rust truncation's: each ``budget = L - len(question) - specials``
long, starting every ``budget - S`` tokens, the last one reaching the context's end. So each side is
tokenized once in one batch call (the question without offsets) and the windows are built as arrays.

Only what QA features read is built: the model inputs, the context mask and the context tokens'
offsets (offsets elsewhere are 0). Tokenizers whose pair template is not "specials, question, specials,
context, specials", left truncation, and inputs the tokenizer would reject (a question leaving no room
for the context, a stride not shorter than the room) return None: the caller uses the tokenizer's
own windows, and so its errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from nlpjobs.text.encode import flat_ids, rust_backend


@dataclass
class PairTemplate:
    """The post-processor's special tokens around a (question, context) pair and every part's type id."""

    ids: tuple[np.ndarray, np.ndarray, np.ndarray]
    """Special token ids before the question, between question and context, after the context."""
    types: tuple[np.ndarray, np.ndarray, np.ndarray]
    question_type: int
    context_type: int

    @property
    def size(self) -> int:
        return sum(len(x) for x in self.ids)


def pair_template(backend: Any, question: str = " a b", context: str = " c  d") -> PairTemplate | None:
    """Read the template off the backend (no truncation or padding set) by encoding a known pair; None when
    the post-processor is not one that only adds special tokens (BERT's, a template) or does anything else
    than put them around and between the two sequences. RoBERTa's and the byte-level processors trim the
    offsets of tokens that start with a space, differently in overflow windows: theirs come from the
    tokenizer."""
    if type(backend.post_processor).__name__ not in {"BertProcessing", "TemplateProcessing"}:
        return None
    full = backend.encode(question, context)
    seq = full.sequence_ids
    q_pos = [i for i, s in enumerate(seq) if s == 0]
    c_pos = [i for i, s in enumerate(seq) if s == 1]
    if not q_pos or not c_pos or q_pos != list(range(q_pos[0], q_pos[-1] + 1)) \
            or c_pos != list(range(c_pos[0], c_pos[-1] + 1)) or q_pos[-1] >= c_pos[0]:
        return None
    ids, types = full.ids, full.type_ids
    for positions, text in ((q_pos, question), (c_pos, context)):
        bare = backend.encode(text, add_special_tokens=False)
        span = slice(positions[0], positions[-1] + 1)
        if ids[span] != bare.ids or full.offsets[span] != bare.offsets:
            return None
    cuts = [(0, q_pos[0]), (q_pos[-1] + 1, c_pos[0]), (c_pos[-1] + 1, len(ids))]
    if sum(b - a for a, b in cuts) != backend.num_special_tokens_to_add(True):
        return None
    q_types, c_types = {types[i] for i in q_pos}, {types[i] for i in c_pos}
    if len(q_types) != 1 or len(c_types) != 1:
        return None
    return PairTemplate(tuple(np.asarray(ids[a:b], np.int64) for a, b in cuts),  # type: ignore[arg-type]
                        tuple(np.asarray(types[a:b], np.int64) for a, b in cuts),  # type: ignore[arg-type]
                        q_types.pop(), c_types.pop())


@dataclass
class PairWindows:
    """Every window of every example, in the call's order (an example's windows together, in context order)."""

    columns: dict[str, np.ndarray]
    """input_ids, attention_mask, token_type_ids [windows, max_length] (int64), as the call returns them."""
    context: np.ndarray
    """[windows, max_length] bool: the context's tokens (``sequence_ids == 1``)."""
    offsets: np.ndarray
    """[windows, max_length, 2] int64: character offsets of the context tokens in their context; 0 elsewhere."""
    sample_map: np.ndarray
    """The example each window comes from (``overflow_to_sample_mapping``)."""


def assemble_pair_windows(questions: Sequence[str], contexts: Sequence[str], tokenizer: Any, max_length: int,
                          stride: int, model_inputs: Sequence[str]) -> PairWindows | None:
    """The course call's windows (see the module docstring) for stripped ``questions``, or None where this
    module does not reproduce the call."""
    if tokenizer.truncation_side != "right" or not contexts:
        return None
    with rust_backend(tokenizer) as backend:
        template = pair_template(backend)
        if template is None:
            return None
        q_ids, q_len = flat_ids(backend.encode_batch_fast(list(questions), add_special_tokens=False))
        c_encodings = backend.encode_batch(list(contexts), add_special_tokens=False)
    c_ids, c_len = flat_ids(c_encodings)
    c_off = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in c_encodings)), np.int64,
                        2 * int(c_len.sum())).reshape(-1, 2)
    budget = max_length - q_len - template.size  # context tokens per window
    step = budget - stride
    longer = c_len > budget
    if (budget <= 0).any() or (longer & (step <= 0)).any():
        return None  # the tokenizer raises for these: let it
    count = np.where(longer, 1 + -(-(c_len - budget) // np.maximum(step, 1)), 1)
    ex = np.repeat(np.arange(len(contexts)), count)
    k = np.arange(len(ex)) - np.repeat(np.cumsum(count) - count, count)
    start = k * step[ex]
    taken = np.minimum(budget[ex], c_len[ex] - start)

    pre, mid, post = (len(x) for x in template.ids)
    b1 = pre
    b2 = b1 + q_len[ex]
    b3 = b2 + mid
    b4 = b3 + taken
    b5 = b4 + post
    shift = max_length - b5 if tokenizer.padding_side == "left" else np.zeros_like(b5)
    rel = np.arange(max_length)[None, :] - shift[:, None]  # position within the unpadded window
    q_start = (np.cumsum(q_len) - q_len)[ex]
    c_start = (np.cumsum(c_len) - c_len)[ex] + start

    real = (rel >= 0) & (rel < b5[:, None])
    context = (rel >= b3[:, None]) & (rel < b4[:, None])
    context_index = rel - b3[:, None] + c_start[:, None]  # into the flat context tokens
    ids = np.full(rel.shape, tokenizer.pad_token_id, np.int64)
    types = np.full(rel.shape, tokenizer.pad_token_type_id, np.int64)
    # (positions, token ids, type id(s), index into the token ids) of the five parts of a window
    parts = [(real & (rel < b1), template.ids[0], template.types[0], rel),
             ((rel >= b1) & (rel < b2[:, None]), q_ids, template.question_type, rel - b1 + q_start[:, None]),
             ((rel >= b2[:, None]) & (rel < b3[:, None]), template.ids[1], template.types[1], rel - b2[:, None]),
             (context, c_ids, template.context_type, context_index),
             ((rel >= b4[:, None]) & real, template.ids[2], template.types[2], rel - b4[:, None])]
    for mask, values, type_ids, index in parts:
        at = index[mask]
        ids[mask] = values[at]
        types[mask] = type_ids[at] if isinstance(type_ids, np.ndarray) else type_ids
    offsets = np.zeros((*rel.shape, 2), np.int64)
    offsets[context] = c_off[context_index[context]]
    available = {"input_ids": ids, "attention_mask": real.astype(np.int64), "token_type_ids": types}
    return PairWindows({k: available[k] for k in model_inputs}, context, offsets, ex)
