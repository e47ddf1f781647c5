"""Golden-fixture tests for the local evaluate metric modules (offline).

Run with ``PYTHONPATH=pkg`` until the package is installed. Course line numbers refer to
the course's text.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import evaluate
import numpy as np
import pytest
from rouge_score import rouge_scorer

from nlpjobs.metrics import METRIC_DIRS, load_metric, metric_path
from nlpjobs.metrics.squad_core import (
    compute_squad,
    exact_match_score,
    f1_score,
    metric_max_over_ground_truths,
    normalize_answer,
)

APPROX = {"abs": 0.005}

# --------------------------------------------------------------------------- loader


def test_load_metric_known_names_and_cache() -> None:
    assert set(METRIC_DIRS) == {"seqeval", "squad", "squad_v2", "sacrebleu", "rouge"}
    for name, dirname in METRIC_DIRS.items():
        module = load_metric(name)
        assert isinstance(module, evaluate.EvaluationModule)
        assert module.name == dirname
        assert (metric_path(name) / f"{dirname}.py").is_file()
        assert load_metric(name) is module  # lru_cache: one instance per process


def test_load_metric_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"Unknown metric 'bleu'.*rouge.*sacrebleu.*seqeval.*squad"):
        load_metric("bleu")


def test_evaluate_load_local_dir_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh (uncached) evaluate.load of a local directory must not open any socket."""

    def _no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    module = evaluate.load(str(metric_path("sacrebleu")), keep_in_memory=True)
    assert module.compute(predictions=["a b c d"], references=[["a b c d"]])["score"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- seqeval

# Course L562-587: gold labels of train[0]; the prediction changes index 2 (B-MISC) to O.
COURSE_LABELS = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
COURSE_PREDICTIONS = ["B-ORG", "O", "O", "O", "O", "O", "B-MISC", "O", "O"]


@pytest.fixture(scope="module")
def seqeval() -> evaluate.EvaluationModule:
    return load_metric("seqeval")


def test_seqeval_course_toy(seqeval: evaluate.EvaluationModule) -> None:
    out = seqeval.compute(predictions=[COURSE_PREDICTIONS], references=[COURSE_LABELS])
    assert list(out) == [
        "MISC",
        "ORG",
        "overall_precision",
        "overall_recall",
        "overall_f1",
        "overall_accuracy",
    ]
    assert out["MISC"]["precision"] == pytest.approx(1.0, **APPROX)
    assert out["MISC"]["recall"] == pytest.approx(0.5, **APPROX)
    assert out["MISC"]["f1"] == pytest.approx(0.67, **APPROX)
    assert out["MISC"]["number"] == 2
    assert out["ORG"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert out["overall_precision"] == pytest.approx(1.0, **APPROX)
    assert out["overall_recall"] == pytest.approx(0.67, **APPROX)
    assert out["overall_f1"] == pytest.approx(0.8, **APPROX)
    assert out["overall_accuracy"] == pytest.approx(0.89, **APPROX)


def test_seqeval_swapping_inputs_swaps_precision_and_recall(seqeval: evaluate.EvaluationModule) -> None:
    """Guards the course's swapped-order bug: P and R exchange, F1 and accuracy do not."""
    right = seqeval.compute(predictions=[COURSE_PREDICTIONS], references=[COURSE_LABELS])
    swapped = seqeval.compute(predictions=[COURSE_LABELS], references=[COURSE_PREDICTIONS])
    assert right["overall_precision"] != pytest.approx(right["overall_recall"])
    assert swapped["overall_precision"] == pytest.approx(right["overall_recall"])
    assert swapped["overall_recall"] == pytest.approx(right["overall_precision"])
    assert swapped["MISC"]["precision"] == pytest.approx(right["MISC"]["recall"])
    assert swapped["MISC"]["recall"] == pytest.approx(right["MISC"]["precision"])
    assert swapped["overall_f1"] == pytest.approx(right["overall_f1"])
    assert swapped["overall_accuracy"] == pytest.approx(right["overall_accuracy"])


def test_seqeval_hub_docstring_example(seqeval: evaluate.EvaluationModule) -> None:
    """Example from the Hub seqeval card: a too-long MISC span is a false positive and a false negative."""
    predictions = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    references = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    out = seqeval.compute(predictions=predictions, references=references, zero_division=0)
    assert out["overall_f1"] == pytest.approx(0.5)
    assert out["PER"]["f1"] == pytest.approx(1.0)
    assert out["MISC"]["f1"] == pytest.approx(0.0)
    assert out["overall_accuracy"] == pytest.approx(0.8)


def test_seqeval_scheme_strict_drops_invalid_chunks(seqeval: evaluate.EvaluationModule) -> None:
    """B-MISC -> O leaves an I-MISC run: lenient mode counts it as a (wrong) entity, IOB2 strict does not."""
    references = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    predictions = [["O", "O", "O", "O", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    lenient = seqeval.compute(predictions=predictions, references=references, zero_division=0)
    strict = seqeval.compute(
        predictions=predictions, references=references, scheme="IOB2", mode="strict", zero_division=0
    )
    assert lenient["overall_precision"] == pytest.approx(0.5)
    assert lenient["overall_recall"] == pytest.approx(0.5)
    assert strict["overall_precision"] == pytest.approx(1.0)
    assert strict["overall_recall"] == pytest.approx(0.5)
    assert lenient["overall_accuracy"] == strict["overall_accuracy"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="Scheme should be one of"):
        seqeval.compute(predictions=predictions, references=references, scheme="IOB3")


# --------------------------------------------------------------------------- SQuAD v1.1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),  # case + leading article
        ("an apple a day", "apple day"),  # all three articles
        ("theatre in an Anne's", "theatre in annes"),  # articles only as whole words
        ("U.S.A.", "usa"),  # punctuation removed, not replaced by spaces
        ("  Denver\tBroncos\n", "denver broncos"),  # whitespace collapsed
        ("A-ha!", "aha"),  # punctuation removed before articles, so "a" is no longer a word
        ("the", ""),
        ("", ""),
    ],
)
def test_squad_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_squad_exact_match() -> None:
    assert exact_match_score("the Cat.", "cat")
    assert exact_match_score("Denver  Broncos", "denver broncos!")
    assert not exact_match_score("Denver Broncos", "Broncos")
    assert not exact_match_score("", "cat")
    assert exact_match_score("the", "an")  # both normalise to ""


def test_squad_f1() -> None:
    # [big, red, dog] vs [red, dog, barks]: 2 common, P = R = 2/3
    assert f1_score("the big red dog", "red dog barks") == pytest.approx(2 / 3)
    # [carolina, panthers, team] vs [carolina, panthers]: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("the Carolina Panthers team", "Carolina Panthers") == pytest.approx(0.8)
    # counts clip: [dog, dog, dog] vs [dog]: P = 1/3, R = 1, F1 = 0.5
    assert f1_score("dog dog dog", "dog") == pytest.approx(0.5)
    assert f1_score("", "cat") == 0.0
    assert f1_score("the", "a") == 0.0  # v1.1: no overlapping tokens -> 0, even when both are empty
    golds = ["Panthers", "Carolina Panthers"]
    assert metric_max_over_ground_truths(f1_score, "Carolina Panthers team", golds) == pytest.approx(0.8)


SQUAD_PREDICTIONS = [
    {"id": "q1", "prediction_text": "Denver Broncos"},
    {"id": "q2", "prediction_text": "the Carolina Panthers team"},
    {"id": "q3", "prediction_text": ""},
]
SQUAD_REFERENCES = [
    {"id": "q1", "answers": {"text": ["Denver Broncos", "The Denver Broncos"], "answer_start": [177, 173]}},
    {"id": "q2", "answers": {"text": ["Panthers", "Carolina Panthers"], "answer_start": [10, 1]}},
    {"id": "q3", "answers": {"text": ["Santa Clara"], "answer_start": [403]}},
]


def test_squad_module_multiple_golds_and_empty_prediction() -> None:
    out = load_metric("squad").compute(predictions=SQUAD_PREDICTIONS, references=SQUAD_REFERENCES)
    # EM: 1 + 0 + 0; F1: 1 + max(0.5, 0.8) + 0
    assert out == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(60.0)}
    assert compute_squad(SQUAD_PREDICTIONS, SQUAD_REFERENCES) == out


def test_squad_missing_prediction_scores_zero() -> None:
    """As in the official script, a reference without a prediction counts in the denominator with 0."""
    references = [*SQUAD_REFERENCES, {"id": "q4", "answers": {"text": ["x"], "answer_start": [0]}}]
    expected = {"exact_match": pytest.approx(25.0), "f1": pytest.approx(45.0)}
    assert compute_squad(SQUAD_PREDICTIONS, references) == expected
    # evaluate requires as many predictions as references: the extra prediction answers no question
    predictions = [*SQUAD_PREDICTIONS, {"id": "unknown", "prediction_text": "x"}]
    assert load_metric("squad").compute(predictions=predictions, references=references) == expected


def test_squad_module_inline_copy_matches_squad_core() -> None:
    """The evaluate script carries its own copy of the scoring functions; it must not drift."""
    script = sys.modules[type(load_metric("squad")).__module__]
    cases = [("The Eiffel Tower!", "eiffel tower"), ("A-ha", "the a-ha"), ("dog dog", "the dog"), ("", "x")]
    for pred, gold in cases:
        assert script.normalize_answer(pred) == normalize_answer(pred)
        assert script.exact_match_score(pred, gold) == exact_match_score(pred, gold)
        assert script.f1_score(pred, gold) == f1_score(pred, gold)


# --------------------------------------------------------------------------- sacreBLEU

# Course L2392-2460.
BLEU_REFERENCE = "This plugin allows you to automatically translate web pages between several languages."


@pytest.mark.parametrize(
    ("prediction", "score", "bp"),
    [
        ("This plugin lets you translate web pages between several languages automatically.", 46.75, 0.920),
        ("This This This This", 1.68, 0.105),
        ("This plugin", 0.0, 0.004),
    ],
)
def test_sacrebleu_course_toys(prediction: str, score: float, bp: float) -> None:
    out = load_metric("sacrebleu").compute(predictions=[prediction], references=[[BLEU_REFERENCE]])
    assert list(out) == ["score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len"]
    assert round(out["score"], 2) == score
    assert round(out["bp"], 3) == bp
    assert out["ref_len"] == 13


def test_sacrebleu_course_toy_details() -> None:
    out = load_metric("sacrebleu").compute(predictions=["This This This This"], references=[[BLEU_REFERENCE]])
    assert out["counts"] == [1, 0, 0, 0]
    assert out["totals"] == [4, 3, 2, 1]
    assert out["sys_len"] == 4


def test_sacrebleu_multiple_references() -> None:
    sacrebleu = load_metric("sacrebleu")
    out = sacrebleu.compute(
        predictions=["hello there general kenobi", "foo bar foobar"],
        references=[["hello there general kenobi", "hello there !"], ["foo bar foobar", "foo bar foobar"]],
    )
    assert out["score"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="same number of references"):
        sacrebleu.compute(predictions=["a", "b"], references=[["a", "x"], ["b"]])


# --------------------------------------------------------------------------- ROUGE

# Course L3254-3327.
ROUGE_GENERATED = "I absolutely loved reading the Hunger Games"
ROUGE_REFERENCE = "I loved reading the Hunger Games"


def test_rouge_course_example_precision_recall() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    score = scorer.score(target=ROUGE_REFERENCE, prediction=ROUGE_GENERATED)["rouge1"]
    assert score.recall == pytest.approx(1.0)
    assert score.precision == pytest.approx(6 / 7)


def test_rouge_module_mid_fmeasure_plain_floats() -> None:
    out = load_metric("rouge").compute(predictions=[ROUGE_GENERATED], references=[ROUGE_REFERENCE])
    assert list(out) == ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    assert all(type(v) is float for v in out.values())
    assert out["rouge1"] == pytest.approx(12 / 13)  # F of P = 6/7, R = 1
    assert out["rouge2"] == pytest.approx(8 / 11)  # 4 shared bigrams: P = 4/6, R = 4/5
    assert out["rougeL"] == pytest.approx(12 / 13)  # LCS of 6 tokens
    assert out["rougeLsum"] == pytest.approx(12 / 13)


def test_rouge_memoised_stemmer_scores_like_rouge_score() -> None:
    """The metric's memoised stemmer must give rouge_score's own per-example scores, in every variant."""
    predictions = ["The runners were running quickly.\nThey ran again tomorrow", "generalizations generalize",
                   "Los corredores corrían", "connected connections connecting", "hello"]
    references = ["A runner runs quickly.\nRunning again", "generalization of generalized rules",
                  "los corredores corren", "connection connects", "hello there hello"]
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    ours = load_metric("rouge").compute(predictions=predictions, references=references, rouge_types=types,
                                        use_stemmer=True, use_aggregator=False)
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    theirs = [scorer.score(r, p) for r, p in zip(references, predictions)]
    assert ours == {t: [s[t].fmeasure for s in theirs] for t in types}
    assert theirs[0]["rouge1"].fmeasure != rouge_scorer.RougeScorer(["rouge1"]).score(
        references[0], predictions[0])["rouge1"].fmeasure  # the stemmer matters for these texts


def test_rouge_bootstrap_mid_is_rouge_scores_aggregator() -> None:
    """The vectorised bootstrap draws the same resamples as rouge_score's BootstrapAggregator (same seed,
    several measures in a row), and the metric reports it."""
    from rouge_score import scoring

    from nlpjobs.metrics.rouge_metric.rouge_metric import bootstrap_mid

    rng = np.random.default_rng(0)
    columns = {"rouge1": rng.random(37), "rouge2": rng.random(37) ** 3, "rougeL": rng.random(37)}
    aggregator = scoring.BootstrapAggregator()
    for i in range(37):
        aggregator.add_scores({k: scoring.Score(0.0, 0.0, float(v[i])) for k, v in columns.items()})
    np.random.seed(123)
    ours = {k: bootstrap_mid(v) for k, v in columns.items()}
    np.random.seed(123)
    theirs = {k: v.mid.fmeasure for k, v in aggregator.aggregate().items()}
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours["rouge1"] != pytest.approx(float(np.mean(columns["rouge1"])), abs=1e-9)  # a resample, not the mean
    predictions, references = ["a b c", "a d", "b b e"], ["a b", "a d e", "c"]
    per_example = load_metric("rouge").compute(predictions=predictions, references=references,
                                               rouge_types=["rouge1"], use_aggregator=False)["rouge1"]
    aggregated = load_metric("rouge").compute(predictions=predictions, references=references, rouge_types=["rouge1"])
    assert min(per_example) <= aggregated["rouge1"] <= max(per_example)


def test_summarization_rouge_is_the_same_in_every_process() -> None:
    """evaluate seeds ROUGE's bootstrap from NumPy's global state when the module is loaded, which differs
    from process to process; summarization's scores pass a fixed seed, and it is the seed's draws."""
    import subprocess

    from nlpjobs.tasks.summarization import ROUGE_BOOTSTRAP_SEED, rouge_scores

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(30)]
    predictions = [" ".join(rng.choice(words, rng.integers(3, 16))) for _ in range(40)]
    references = [" ".join(rng.choice(words, rng.integers(3, 16))) for _ in range(40)]
    script = ("import json, sys, numpy as np\n"
              "from nlpjobs.metrics import load_metric\n"
              "from nlpjobs.tasks.summarization import rouge_scores\n"
              "np.random.seed(int(sys.argv[1]))\n"
              "p, r = json.load(sys.stdin)\n"
              "unseeded = load_metric('rouge').compute(predictions=p, references=r, use_stemmer=True)['rouge1']\n"
              "print(json.dumps([rouge_scores(p, r, ['en'] * len(p)), unseeded]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script, str(seed)], input=json.dumps([predictions, references]),
                                      capture_output=True, text=True, check=True).stdout) for seed in (3, 4)]
    assert runs[0][0] == runs[1][0] == rouge_scores(predictions, references, ["en"] * 40)
    assert runs[0][1] != runs[1][1]  # without the seed the two processes' bootstraps differ
    from nlpjobs.metrics.rouge_metric.rouge_metric import bootstrap_mid

    per_example = load_metric("rouge").compute(predictions=predictions, references=references, use_stemmer=True,
                                               use_aggregator=False)["rouge1"]
    np.random.seed(ROUGE_BOOTSTRAP_SEED)  # rouge1 is the first type resampled after seeding
    assert runs[0][0]["rouge1"] == round(bootstrap_mid(np.array(per_example)) * 100, 4)


def test_rouge_module_options() -> None:
    rouge = load_metric("rouge")
    predictions = ["the cats are running", "hello there"]
    references = ["the cat runs", "hello there"]
    per_example = rouge.compute(
        predictions=predictions, references=references, rouge_types=["rouge1"], use_aggregator=False
    )
    assert per_example == {"rouge1": [pytest.approx(2 / 7), 1.0]}  # only "the" matches: P = 1/4, R = 1/3
    stemmed = rouge.compute(
        predictions=predictions,
        references=references,
        rouge_types=["rouge1"],
        use_stemmer=True,
        use_aggregator=False,
    )
    assert stemmed["rouge1"][0] == pytest.approx(6 / 7)  # cat/cats, run/runs/running stem: P = 3/4, R = 1
    aggregated = rouge.compute(predictions=predictions, references=references, rouge_types=["rouge1"])
    assert set(aggregated) == {"rouge1"}
    assert type(aggregated["rouge1"]) is float
    assert aggregated["rouge1"] == pytest.approx((2 / 7 + 1.0) / 2, abs=0.2)  # bootstrap median of the mean
