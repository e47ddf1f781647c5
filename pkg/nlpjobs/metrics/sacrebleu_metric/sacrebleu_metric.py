"""sacreBLEU corpus BLEU, offline equivalent of the Hub "sacrebleu" metric.

Loaded standalone by ``evaluate.load(<this directory>)``: evaluate copies this file into its modules
cache and imports it there, so it must not use relative imports. Keep imports absolute, at top
level, one statement per line: evaluate parses these lines to check the libraries are installed.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import sacrebleu

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    url = "https://www.aclweb.org/anthology/W18-6319",
}
"""

_DESCRIPTION = """\
SacreBLEU computes shareable, comparable BLEU scores on detokenized text by standardising the
tokenization (13a by default). Scores are in 0-100, higher is better.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of detokenized hypothesis strings.
    references: list of lists of reference strings (several references per prediction allowed, the
        same number for every prediction); a flat list of strings means one reference each.
    smooth_method: "exp" (default), "none", "floor" or "add-k".
    smooth_value: smoothing value for "floor" (default 0.1) or "add-k" (default 1).
    tokenize: sacrebleu tokenizer name ("13a", "intl", "zh", "char", "none", ...); default per sacrebleu.
    lowercase: case-insensitive BLEU. Default False.
    force: allow apparently tokenized input. Default False.
    use_effective_order: ignore n-gram orders with zero matches (for sentence BLEU). Default False.
Returns:
    {"score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"}
Example:
    >>> pred, ref = "hello there general kenobi", "hello there general kenobi"
    >>> metric.compute(predictions=[pred], references=[[ref]])["score"]
    100.00000000000004
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SacrebleuMetric(evaluate.Metric):
    """Corpus BLEU via sacrebleu.corpus_bleu."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacreBLEU",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(
                            datasets.Value("string", id="sequence"), id="references"
                        ),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
            reference_urls=["https://github.com/mjpost/sacreBLEU", "https://en.wikipedia.org/wiki/BLEU"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[list[str]] | list[str],
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        force: bool = False,
        lowercase: bool = False,
        tokenize: str | None = None,
        use_effective_order: bool = False,
    ) -> dict[str, Any]:
        refs: list[list[str]] = [[r] if isinstance(r, str) else list(r) for r in references]
        n_refs = len(refs[0]) if refs else 0
        if any(len(r) != n_refs for r in refs):
            raise ValueError("Sacrebleu requires the same number of references for each prediction")
        # sacrebleu wants one stream per reference index: [[ref0 of each pred], [ref1 of each pred], ...]
        ref_streams = [[r[i] for r in refs] for i in range(n_refs)]
        output = sacrebleu.corpus_bleu(
            predictions,
            ref_streams,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            lowercase=lowercase,
            use_effective_order=use_effective_order,
            **({"tokenize": tokenize} if tokenize else {}),
        )
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
        }
