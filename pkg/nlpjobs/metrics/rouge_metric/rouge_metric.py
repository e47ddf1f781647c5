"""ROUGE via Google's rouge_score, offline equivalent of the Hub "rouge" metric.

Loaded standalone by ``evaluate.load(<this directory>)``: evaluate copies this file into its modules
cache and imports it there, so it must not use relative imports. Keep imports absolute, at top
level, one statement per line: evaluate parses these lines to check the libraries are installed.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
import evaluate
from rouge_score import rouge_scorer, scoring

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    url = "https://www.aclweb.org/anthology/W04-1013",
}
"""

_DESCRIPTION = """\
ROUGE (Recall-Oriented Understudy for Gisting Evaluation) scores n-gram / LCS overlap between
generated and reference summaries. Case-insensitive. Wraps the rouge_score package.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of reference strings, or list of lists of references (best one is scored).
    rouge_types: subset of "rouge{n}", "rougeL", "rougeLsum" (sentences split on "\\n").
        Default ["rouge1", "rouge2", "rougeL", "rougeLsum"].
    use_stemmer: apply the Porter stemmer. Default False.
    use_aggregator: True (default) returns one float per type, the BootstrapAggregator mid F-measure;
        False returns a list of per-example F-measures per type.
    tokenizer: optional callable str -> list[str] replacing rouge_score's default tokenizer.
Returns:
    {"rouge1": float, "rouge2": float, "rougeL": float, "rougeLsum": float}
Example:
    >>> metric.compute(predictions=["hello there"], references=["hello there"])
    {'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0, 'rougeLsum': 1.0}
"""

DEFAULT_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class _Tokenizer:
    """Adapts a plain callable to the ``tokenize`` method rouge_score expects."""

    def __init__(self, tokenizer_func: Callable[[str], list[str]]) -> None:
        self.tokenizer_func = tokenizer_func

    def tokenize(self, text: str) -> list[str]:
        return self.tokenizer_func(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeMetric(evaluate.Metric):
    """ROUGE F-measures via rouge_score."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[str] | list[list[str]],
        rouge_types: list[str] | None = None,
        use_aggregator: bool = True,
        use_stemmer: bool = False,
        tokenizer: Callable[[str], list[str]] | None = None,
    ) -> dict[str, float] | dict[str, list[float]]:
        types = list(rouge_types) if rouge_types is not None else list(DEFAULT_ROUGE_TYPES)
        scorer = rouge_scorer.RougeScorer(
            rouge_types=types,
            use_stemmer=use_stemmer,
            tokenizer=_Tokenizer(tokenizer) if tokenizer is not None else None,
        )
        multi_ref = bool(references) and isinstance(references[0], list)
        per_example = [
            scorer.score_multi(ref, pred) if multi_ref else scorer.score(ref, pred)
            for ref, pred in zip(references, predictions, strict=True)
        ]
        if not use_aggregator:
            return {key: [float(s[key].fmeasure) for s in per_example] for key in types}
        aggregator = scoring.BootstrapAggregator()
        for score in per_example:
            aggregator.add_scores(score)
        aggregated = aggregator.aggregate()
        return {key: float(aggregated[key].mid.fmeasure) for key in aggregated}
