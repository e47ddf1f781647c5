"""ROUGE via Google's rouge_score, offline equivalent of the Hub "rouge" metric.

Loaded standalone by ``evaluate.load(<this directory>)``: evaluate copies this file into its modules
cache and imports it there, so it must not use relative imports. Keep imports absolute, at top
level, one statement per line: evaluate parses these lines to check the libraries are installed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import datasets
import evaluate
import numpy as np
from nltk.stem import porter
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

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


class _StemmingTokenizer:
    """rouge_score's default tokenizer with the Porter stemmer memoised per word: the same tokens, without
    stemming each recurring word again (stemming was most of ROUGE's time on summarization data)."""

    def __init__(self) -> None:
        self.stem = lru_cache(maxsize=None)(porter.PorterStemmer().stem)

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokenize.tokenize(text, self)


def bootstrap_mid(values: np.ndarray, n_samples: int = 1000, chunk: int = 100) -> float:
    """The ``mid`` of rouge_score's ``BootstrapAggregator`` for one measure: the median of ``n_samples`` means
    of resamples with replacement. The resample indices are drawn from NumPy's global generator in the same
    order as rouge_score draws them (one row of len(values) per sample), ``chunk`` samples per call instead
    of a Python loop over samples."""
    n = len(values)
    means = np.empty(n_samples)
    for start in range(0, n_samples, chunk):
        rows = min(chunk, n_samples - start)
        idx = np.random.choice(np.arange(n), size=(rows, n))
        means[start:start + rows] = values[idx].mean(axis=1)
    return float(np.percentile(means, 50))


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
        if tokenizer is not None:
            custom = _Tokenizer(tokenizer)
        else:
            custom = _StemmingTokenizer() if use_stemmer else None
        scorer = rouge_scorer.RougeScorer(rouge_types=types, use_stemmer=use_stemmer, tokenizer=custom)
        multi_ref = bool(references) and isinstance(references[0], list)
        per_example = [
            scorer.score_multi(ref, pred) if multi_ref else scorer.score(ref, pred)
            for ref, pred in zip(references, predictions, strict=True)
        ]
        if not use_aggregator:
            return {key: [float(s[key].fmeasure) for s in per_example] for key in types}
        if not per_example:
            return {}
        return {key: bootstrap_mid(np.array([s[key].fmeasure for s in per_example])) for key in types}
