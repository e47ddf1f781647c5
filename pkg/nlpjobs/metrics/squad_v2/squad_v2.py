"""SQuAD v2.0 exact / F1 metric with unanswerable questions, offline equivalent of the Hub "squad_v2" metric.

Loaded standalone by ``evaluate.load(<this directory>)``: evaluate copies this file into its modules cache
and imports it there, so the scoring code is an inline copy of ``nlpjobs.metrics.squad_core`` (no relative
imports; a unit test checks that both copies agree). Keep imports absolute, at top level, one statement per
line: evaluate parses these lines to check the libraries are installed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

import datasets
import evaluate

_CITATION = """\
@inproceedings{Rajpurkar2018SQuAD2,
  title={Know What You Don't Know: Unanswerable Questions for SQuAD},
  author={Pranav Rajpurkar and Robin Jia and Percy Liang},
  booktitle={ACL},
  year={2018}
}
"""

_DESCRIPTION = """\
Official SQuAD v2.0 scoring: exact match and token F1 after normalisation (lowercase, remove punctuation,
remove the articles a/an/the, collapse whitespace), max over the gold answers; an unanswerable question's
gold is the empty string, so only an empty prediction scores on it. Averaged over all references, 0-100,
with the breakdown over answerable (HasAns_*) and unanswerable (NoAns_*) questions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str, "no_answer_probability": float}; "" is "no answer".
    references: list of {"id": str, "answers": {"text": list[str], "answer_start": list[int]}}; empty lists for
        an unanswerable question.
    no_answer_threshold: a prediction whose no_answer_probability is above it counts as "no answer" (1.0).
Returns:
    {"exact", "f1", "total"} and, for each group with questions, "HasAns_exact", "HasAns_f1", "HasAns_total",
    "NoAns_exact", "NoAns_f1", "NoAns_total". A reference without a prediction scores 0.
Example:
    >>> predictions = [{"id": "q1", "prediction_text": "", "no_answer_probability": 0.0}]
    >>> references = [{"id": "q1", "answers": {"text": [], "answer_start": []}}]
    >>> metric.compute(predictions=predictions, references=references)
    {'exact': 100.0, 'f1': 100.0, 'total': 1, 'NoAns_exact': 100.0, 'NoAns_f1': 100.0, 'NoAns_total': 1}
"""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV2(evaluate.Metric):
    """SQuAD v2.0 exact and F1 with the HasAns/NoAns breakdown."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                        "no_answer_probability": datasets.Value("float32"),
                    },
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(
        self, predictions: list[dict[str, Any]], references: list[dict[str, Any]], no_answer_threshold: float = 1.0
    ) -> dict[str, float]:
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
