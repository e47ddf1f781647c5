"""SQuAD v1.1 exact match / F1 metric, offline equivalent of the Hub "squad" metric.

Loaded standalone by ``evaluate.load(<this directory>)``: evaluate copies this file into its modules
cache and imports it there, so the scoring code is an inline copy of ``nlpjobs.metrics.squad_core``
(no relative imports; the unit tests check that both copies agree). Keep imports absolute, at
top level, one statement per line: evaluate parses these lines to check the libraries are installed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import datasets
import evaluate

_CITATION = """\
@inproceedings{Rajpurkar2016SQuAD10,
  title={SQuAD: 100, 000+ Questions for Machine Comprehension of Text},
  author={Pranav Rajpurkar and Jian Zhang and Konstantin Lopyrev and Percy Liang},
  booktitle={EMNLP},
  year={2016}
}
"""

_DESCRIPTION = """\
Official SQuAD v1.1 scoring: exact match and token F1 after normalisation (lowercase, remove
punctuation, remove the articles a/an/the, collapse whitespace), max over the gold answers,
averaged over all references and scaled to 0-100.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": list[str], "answer_start": list[int]}}.
Returns:
    {"exact_match": float, "f1": float}, both in 0-100. A reference without a prediction scores 0.
Example:
    >>> predictions = [{"id": "q1", "prediction_text": "the Eiffel Tower"}]
    >>> references = [{"id": "q1", "answers": {"text": ["Eiffel Tower"], "answer_start": [0]}}]
    >>> metric.compute(predictions=predictions, references=references)
    {'exact_match': 100.0, 'f1': 100.0}
"""

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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadV1(evaluate.Metric):
    """SQuAD v1.1 exact match and F1."""

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
        self, predictions: list[dict[str, Any]], references: list[dict[str, Any]]
    ) -> dict[str, float]:
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
