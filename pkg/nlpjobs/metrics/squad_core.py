"""SQuAD v1.1 exact match and F1, as in the official ``evaluate-v1.1.py`` script, and v2.0 (unanswerable
questions), as in ``evaluate-v2.0.py``.

Pure functions, importable for unit tests. ``squad_v1/squad_v1.py`` and ``squad_v2/squad_v2.py`` carry identical
inline copies because evaluate loads metric scripts standalone (tests check that the copies agree).
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


# ---- SQuAD v2.0 (unanswerable questions), as in the official ``evaluate-v2.0.py`` script ----------------


def _tokens_v2(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_v2(gold: str, prediction: str) -> int:
    """1 when the normalised strings are equal (an empty gold, i.e. no answer, matches an empty prediction)."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def f1_v2(gold: str, prediction: str) -> float:
    """Bag-of-tokens F1; when either side has no token, 1 if both have none, else 0 (the v2 script's rule)."""
    gold_tokens, prediction_tokens = _tokens_v2(gold), _tokens_v2(prediction)
    if not gold_tokens or not prediction_tokens:
        return float(gold_tokens == prediction_tokens)
    num_same = sum((Counter(gold_tokens) & Counter(prediction_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def compute_squad_v2(
    predictions: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]],
    no_answer_threshold: float = 1.0,
) -> dict[str, float]:
    """Corpus exact/F1 in 0-100 with the HasAns_*/NoAns_* breakdown of the official v2.0 script.

    ``predictions``: ``[{"id", "prediction_text", "no_answer_probability"}]`` (``""`` predicts no answer);
    ``references``: ``[{"id", "answers": {"text": [...], "answer_start": [...]}}]``, empty lists for an
    unanswerable question. Gold answers that normalise to nothing are dropped; none left means the gold is
    ``""``. A prediction whose no_answer_probability exceeds ``no_answer_threshold`` counts as "no answer".
    Every reference counts in the denominators; one without a prediction scores 0 (the official script would
    stop). The breakdown of a group (HasAns, NoAns) appears only when the group has questions, as there.
    """
    if not references:
        raise ValueError("references must not be empty")
    pred_by_id = {p["id"]: p for p in predictions}
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for ref in references:
        qid, texts = ref["id"], list(ref["answers"]["text"])
        has_answer[qid] = bool(texts)
        golds = [t for t in texts if normalize_answer(t)] or [""]
        pred = pred_by_id.get(qid)
        if pred is None:
            exact[qid] = f1[qid] = 0.0
        elif float(pred.get("no_answer_probability", 0.0)) > no_answer_threshold:
            exact[qid] = f1[qid] = float(not has_answer[qid])
        else:
            exact[qid] = float(max(exact_v2(g, pred["prediction_text"]) for g in golds))
            f1[qid] = max(f1_v2(g, pred["prediction_text"]) for g in golds)

    def group(ids: list[str], prefix: str) -> dict[str, float]:
        if not ids:
            return {}
        return {f"{prefix}exact": 100.0 * sum(exact[i] for i in ids) / len(ids),
                f"{prefix}f1": 100.0 * sum(f1[i] for i in ids) / len(ids), f"{prefix}total": len(ids)}

    return {**group(list(exact), ""), **group([i for i in exact if has_answer[i]], "HasAns_"),
            **group([i for i in exact if not has_answer[i]], "NoAns_")}
