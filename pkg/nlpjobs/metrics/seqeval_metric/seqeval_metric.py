"""seqeval metric for sequence labelling (NER, chunking), offline copy of the Hub "seqeval" metric.

Loaded standalone by ``evaluate.load(<this directory>)``: evaluate copies this file into its modules
cache and imports it there, so it must not use relative imports. Keep imports absolute, at top
level, one statement per line: evaluate parses these lines to check the libraries are installed.
"""

from __future__ import annotations

import importlib
from typing import Any

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report

_CITATION = """\
@misc{seqeval,
  title={{seqeval}: A Python framework for sequence labeling evaluation},
  url={https://github.com/chakki-works/seqeval},
  author={Hiroki Nakayama},
  year={2018},
}
"""

_DESCRIPTION = """\
seqeval evaluates chunking tasks such as named-entity recognition at the entity level
(conlleval-compatible), for the IOB1, IOB2, IOE1, IOE2, IOBES and BILOU tagging schemes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of lists of predicted label strings (e.g. "B-PER").
    references: list of lists of gold label strings, same shapes as predictions.
    suffix: True if the IOB prefix comes after the type ("PER-B"). Default False.
    scheme: one of "IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU"; None (default) is the lenient
        conlleval-style chunking.
    mode: "strict" to count only exact entity matches under ``scheme``; None (default) otherwise.
    sample_weight: optional per-sequence weights.
    zero_division: value for 0/0 (0, 1 or "warn", which acts as 0 and warns). Default "warn".
Returns:
    {<entity type>: {"precision", "recall", "f1", "number"}, ..., "overall_precision",
     "overall_recall", "overall_f1", "overall_accuracy"}
Example:
    >>> references = [["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]]
    >>> predictions = [["B-ORG", "O", "O", "O", "O", "O", "B-MISC", "O", "O"]]
    >>> metric.compute(predictions=predictions, references=references)["MISC"]["recall"]
    0.5
"""

_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SeqevalMetric(evaluate.Metric):
    """Entity-level precision/recall/F1 plus token accuracy via seqeval."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/chakki-works/seqeval",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string", id="label"), id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="label"), id="sequence"),
                }
            ),
            codebase_urls=["https://github.com/chakki-works/seqeval"],
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(
        self,
        predictions: list[list[str]],
        references: list[list[str]],
        suffix: bool = False,
        scheme: str | None = None,
        mode: str | None = None,
        sample_weight: list[float] | None = None,
        zero_division: str | int = "warn",
    ) -> dict[str, Any]:
        scheme_cls = None
        if scheme is not None:
            if scheme not in _SCHEMES:
                raise ValueError(f"Scheme should be one of {list(_SCHEMES)}, got {scheme!r}")
            scheme_cls = getattr(importlib.import_module("seqeval.scheme"), scheme)
        report = classification_report(
            y_true=references,
            y_pred=predictions,
            suffix=suffix,
            output_dict=True,
            scheme=scheme_cls,
            mode=mode,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        report.pop("macro avg")
        report.pop("weighted avg")
        overall = report.pop("micro avg")

        scores: dict[str, Any] = {
            type_name: {
                "precision": score["precision"],
                "recall": score["recall"],
                "f1": score["f1-score"],
                "number": score["support"],
            }
            for type_name, score in report.items()
        }
        scores["overall_precision"] = overall["precision"]
        scores["overall_recall"] = overall["recall"]
        scores["overall_f1"] = overall["f1-score"]
        scores["overall_accuracy"] = accuracy_score(y_true=references, y_pred=predictions)
        return scores
