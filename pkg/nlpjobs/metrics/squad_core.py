"""SQuAD v1.1 exact match and F1, as in the official ``evaluate-v1.1.py`` script.

Pure functions, importable for unit tests. ``squad_v1/squad_v1.py`` carries an identical inline copy
because evaluate loads metric scripts standalone (a test checks that both copies agree).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (official v1.1 order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """True when the normalised strings are equal."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Bag-of-tokens F1 between normalised strings; 0 when nothing overlaps (also for empty strings)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(
    metric_fn: Callable[[str, str], float], prediction: str, ground_truths: Iterable[str]
) -> float:
    """Best score of ``prediction`` against any of the gold answers."""
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def compute_squad(
    predictions: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """Corpus EM and F1 in 0-100 for evaluate-style inputs.

    ``predictions``: ``[{"id", "prediction_text"}]``; ``references``:
    ``[{"id", "answers": {"text": [...], "answer_start": [...]}}]``. As in the official script, every
    reference counts in the denominator and a reference without a prediction scores 0.
    """
    pred_by_id = {p["id"]: p["prediction_text"] for p in predictions}
    if not references:
        raise ValueError("references must not be empty")
    exact_match = f1 = 0.0
    for ref in references:
        if ref["id"] not in pred_by_id:
            continue
        prediction = pred_by_id[ref["id"]]
        golds = list(ref["answers"]["text"])
        if not golds:
            raise ValueError(f"reference {ref['id']!r} has no gold answers")
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, golds)
        f1 += metric_max_over_ground_truths(f1_score, prediction, golds)
    total = len(references)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}
