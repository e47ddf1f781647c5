"""Extractive QA input formats: SQuAD JSON files as published, answers as lists of dicts, unanswerable questions
(SQuAD v2.0 labels, no-answer post-processing and metric), duplicate ids."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest

from clitools import ROOT
from nlpjobs.config import DataConfig
from nlpjobs.data import sources
from nlpjobs.data.shards import Manifest
from nlpjobs.jobfile import load_job
from nlpjobs.metrics import load_metric, squad_core
from nlpjobs.tasks import qa as qa_task
from nlpjobs.tasks import qa_features
from nlpjobs.tasks.base import TaskDataError
from nlpjobs.tasks.qa import QaTask

CONTEXT = "The night ferry leaves the harbour at eleven and reaches the islands at dawn."


def qa(qid: str, question: str, answer: str | None) -> dict[str, Any]:
    if answer is None:
        return {"id": qid, "question": question, "answers": [], "is_impossible": True,
                "plausible_answers": [{"text": "dawn", "answer_start": CONTEXT.index("dawn")}]}
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": CONTEXT.index(answer)}]}


def squad_doc(*qas: dict[str, Any], version: str = "v2.0") -> dict[str, Any]:
    return {"version": version, "data": [{"title": "Ferry", "paragraphs": [{"context": CONTEXT, "qas": list(qas)}]}]}


GOOD = squad_doc(qa("f1", "When does the ferry leave?", "eleven"), qa("f2", "Who is the captain?", None),
                 qa("f3", "When does it arrive?", "dawn"))


def write(directory: Path, name: str, content: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def load_files(directory: Path) -> datasets.DatasetDict:
    return sources.load_raw(DataConfig(source=f"files:{directory}", train_split="train",
                                       eval_split="validation"), seed=0)


# ---------------------------------------------------------------- nested SQuAD JSON files


def test_nested_squad_files_are_flattened_into_rows(tmp_path: Path) -> None:
    write(tmp_path, "train.json", GOOD)
    write(tmp_path, "validation.json", json.dumps(squad_doc(qa("v1", "When does it leave?", "eleven"),
                                                            version="1.1")))  # one line, as published
    raw = load_files(tmp_path)
    assert raw["train"]["id"] == ["f1", "f2", "f3"] and raw["train"]["title"] == ["Ferry"] * 3
    assert raw["train"]["context"] == [CONTEXT] * 3 and raw["train"]["question"][1] == "Who is the captain?"
    assert raw["train"]["answers"] == [{"text": ["eleven"], "answer_start": [38]}, {"text": [], "answer_start": []},
                                       {"text": ["dawn"], "answer_start": [72]}]
    assert raw["eval"]["answers"] == [{"text": ["eleven"], "answer_start": [38]}]


def test_the_example_files_in_the_docs_read_as_squad_v2(tmp_path: Path) -> None:
    raw = load_files(ROOT / "docs/examples/squad")
    for ds in raw.values():
        assert len(set(ds["id"])) == len(ds) >= 8
        unanswerable = [a for a in ds["answers"] if not a["text"]]
        assert 2 <= len(unanswerable) <= 3
        for context, answer in zip(ds["context"], ds["answers"], strict=True):
            for text, start in zip(answer["text"], answer["answer_start"], strict=True):
                assert context[start:start + len(text)] == text


def test_a_json_file_of_json_lines_still_reads_as_rows(tmp_path: Path) -> None:
    """A .json file whose rows begin with a "data" key is JSON lines, not a SQuAD document."""
    row = {"data": "x", "id": "a", "question": "q?", "context": "c", "answers": {"text": [], "answer_start": []}}
    write(tmp_path, "train.json", json.dumps(row) + "\n" + json.dumps({**row, "id": "b"}) + "\n")
    write(tmp_path, "validation.json", json.dumps(row) + "\n")
    raw = load_files(tmp_path)
    assert raw["train"]["id"] == ["a", "b"] and raw["eval"]["data"] == ["x"]


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
QAS = ("data", 0, "paragraphs", 0, "qas")


@pytest.mark.parametrize(("doc", "says"), [
    ({"version": "v2.0", "articles": []}, 'train.json has no "data" list at the top level; a SQuAD file is {'),
    (_set(GOOD, ("data", 0, "paragraphs"), {}), 'data[0] has no "paragraphs" list'),
    (_set(GOOD, ("data", 0, "paragraphs", 0, "context"), _DELETE), 'data[0].paragraphs[0] has no "context" text'),
    (_set(GOOD, ("data", 0, "paragraphs", 0, "qas"), _DELETE), 'data[0].paragraphs[0] has no "qas" list'),
    (_set(GOOD, (*QAS, 1, "id"), _DELETE), 'data[0].paragraphs[0].qas[1] has no "id"; give every question a unique'),
    (_set(GOOD, (*QAS, 2, "question"), ""), "qas[2] (id 'f3') has no \"question\" text"),
    (_set(GOOD, (*QAS, 0, "answers", 0, "answer_start"), "38"),
     "qas[0] (id 'f1'): answer 0 ('eleven') has answer_start '38', not an integer >= 0"),
    (_set(GOOD, (*QAS, 0, "answers"), "eleven"), "qas[0] (id 'f1'): answers is a string 'eleven'; answers must be"),
    (_set(GOOD, (*QAS, 0, "answers"), [{"answer": "eleven"}]), "qas[0] (id 'f1'): answer 0 is an object"),
    (_set(GOOD, (*QAS, 0, "is_impossible"), True), "(id 'f1') has \"is_impossible\": true and 1 answer(s)"),
    (_set(GOOD, (*QAS, 0, "is_impossible"), "no"), "(id 'f1') has \"is_impossible\": 'no'; use true or false"),
    ('{"version": "v2.0", "data": [', "train.json is not valid JSON (Expecting value at line 1, column 30)"),
    (squad_doc(), "train.json holds no question"),
], ids=["no-data", "no-paragraphs", "no-context", "no-qas", "no-id", "empty-question", "answer-start-string",
        "answers-string", "answer-without-keys", "impossible-with-answers", "impossible-not-bool", "not-json",
        "no-question"])
def test_malformed_squad_files_name_the_file_and_the_position(tmp_path: Path, doc: Any, says: str) -> None:
    write(tmp_path, "train.json", doc)
    write(tmp_path, "validation.json", GOOD)
    with pytest.raises(TaskDataError) as exc:
        load_files(tmp_path)
    assert str(exc.value).startswith(f"split 'train': file://{tmp_path}/train.json")
    assert says in str(exc.value)


def test_nested_squad_files_on_s3(s3_env: str) -> None:
    from nlpjobs import storage

    storage.write_bytes(storage.join(s3_env, "squad/train.json"), json.dumps(GOOD).encode())
    storage.write_bytes(storage.join(s3_env, "squad/validation.json"), json.dumps(GOOD).encode())
    raw = sources.load_raw(DataConfig(source=f"files:{s3_env}/squad", train_split="train",
                                      eval_split="validation"), seed=0)
    assert raw["train"]["id"] == ["f1", "f2", "f3"] and raw["eval"]["answers"][1] == {"text": [], "answer_start": []}


# ---------------------------------------------------------------- rows: answers' shapes, ids, empty fields


def rows(answers: list[Any], ids: list[Any] | None = None, question: str = "When?") -> datasets.Dataset:
    ids = ids or [f"q{i}" for i in range(len(answers))]
    return datasets.Dataset.from_list([{"id": i, "question": question, "context": CONTEXT, "answers": a}
                                       for i, a in zip(ids, answers, strict=True)])


def test_answers_as_lists_of_dicts_become_columns(tmp_path: Path) -> None:
    """JSON lines with SQuAD's own answers (a list of {text, answer_start}) read like the columnar form."""
    lines = [{"id": "a", "question": "When?", "context": CONTEXT, "answers": [{"text": "eleven", "answer_start": 38}]},
             {"id": "b", "question": "Who?", "context": CONTEXT, "answers": []}]
    write(tmp_path, "train.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "train.jsonl"), split="train")
    checked = qa_task.check_examples(ds, "train")
    eleven, none = {"text": ["eleven"], "answer_start": [38]}, {"text": [], "answer_start": []}
    assert checked["answers"] == [eleven, none] and checked.features["answers"]["answer_start"].feature.dtype == "int32"
    assert qa_task.check_examples(ds.select([1, 0]), "train")["answers"] == [none, eleven]  # a selection's rows
    assert qa_task.check_examples(ds.select([1]), "train")["answers"] == [none]
    write(tmp_path, "empty.jsonl", json.dumps(lines[1]) + "\n")  # answers: [] in every row: a list of nulls
    empty = datasets.load_dataset("json", data_files=str(tmp_path / "empty.jsonl"), split="train")
    assert qa_task.check_examples(empty, "train")["answers"] == [none]
    extra = rows([[{"text": "eleven", "answer_start": 38, "note": "x"}]])  # more keys than SQuAD's: row by row
    assert qa_task.check_examples(extra, "train")["answers"] == [eleven]
    columnar = rows([{"text": ["eleven"], "answer_start": [38]}])
    assert qa_task.check_examples(columnar, "train") is columnar  # the columnar form is kept as it is


@pytest.mark.parametrize(("answers", "says"), [
    (["eleven"], "split 'validation', id 'q0': answers is a string 'eleven'"),
    ([{"text": "eleven", "answer_start": 38}], "split 'validation', id 'q0': answers is an object"),
    ([{"text": ["eleven", "dawn"], "answer_start": [38]}], "answers has 2 text(s) but 1 answer_start(s)"),
    ([[{"text": "", "answer_start": 0}]], "answer 0 has text ''; an answer is a non-empty string"),
    ([[{"text": "eleven", "answer_start": -1}]], "answer_start -1, not an integer >= 0"),
])
def test_other_answer_shapes_name_the_row(answers: list[Any], says: str) -> None:
    with pytest.raises(TaskDataError) as exc:
        qa_task.check_examples(rows(answers), "validation")
    assert says in str(exc.value)


def test_duplicate_ids_name_the_id_the_split_and_the_count() -> None:
    answers = [{"text": ["eleven"], "answer_start": [38]}] * 6
    with pytest.raises(TaskDataError) as exc:
        qa_task.check_examples(rows(answers, ["a", "b", "a", "c", "a", "b"]), "validation")
    assert "split 'validation' has 2 question id(s) used more than once (first: 'a', 3 times)" in str(exc.value)


def test_empty_questions_and_missing_ids_name_the_row() -> None:
    answers = [{"text": ["eleven"], "answer_start": [38]}]
    with pytest.raises(TaskDataError, match="split 'train', id 'q0' has an empty question"):
        qa_task.check_examples(rows(answers, question="  "), "train")
    with pytest.raises(TaskDataError, match="split 'train', row 0 has no id"):
        qa_task.check_examples(rows(answers, [None]), "train")
    assert qa_task.check_examples(rows(answers, [7]), "train")["id"] == ["7"]  # integer ids become strings


def test_find_answer_mismatches_may_accept_unanswerable_questions() -> None:
    answers = [{"text": [], "answer_start": []}, {"text": ["dawn"], "answer_start": [3]}]
    assert qa_features.find_answer_mismatches([CONTEXT] * 2, answers) == [0, 1]
    assert qa_features.find_answer_mismatches([CONTEXT] * 2, answers, unanswerable_ok=True) == [1]


# ---------------------------------------------------------------- training and evaluating unanswerable questions


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))


def qa_job(*sets: str) -> Any:
    return load_job(ROOT / "jobs/local/qa.yaml", ["preprocess.max_length=64", "preprocess.stride=16", *sets])


def test_unanswerable_questions_train_on_cls_labels(tokenizer: Any) -> None:
    """Old behaviour: every unanswerable training question was an answer_start mismatch (exit 3)."""
    answers = [{"text": ["eleven"], "answer_start": [38]}, {"text": [], "answer_start": []}]
    ds = rows(answers)
    prepared = QaTask().prepare(qa_job(), datasets.DatasetDict({"train": ds, "eval": ds}), tokenizer)
    train = prepared.splits["train"]
    assert train["start_positions"][1] == train["end_positions"][1] == 0
    assert train["start_positions"][0] > 0
    assert prepared.info["train_unanswerable"] == prepared.info["eval_unanswerable"] == 1


def test_duplicate_eval_ids_stop_preprocessing(tokenizer: Any) -> None:
    ds = rows([{"text": ["eleven"], "answer_start": [38]}] * 2, ["same", "same"])
    train = rows([{"text": ["eleven"], "answer_start": [38]}])
    with pytest.raises(TaskDataError, match="split 'validation' has 1 question id.*'same', 2 times"):
        QaTask().prepare(qa_job(), datasets.DatasetDict({"train": train, "eval": ds}), tokenizer)


def _logits(rows_: list[dict[int, float]], width: int = 6) -> np.ndarray:
    out = np.full((len(rows_), width), -5.0, dtype=np.float32)
    for i, values in enumerate(rows_):
        for j, v in values.items():
            out[i, j] = v
    return out


def test_postprocess_with_null_compares_the_lowest_cls_score_with_the_best_span() -> None:
    """Hand-computed: tokens 2..5 of each feature are context (characters 0-3, 4-7, ...)."""
    contexts = ["aaa bbb ccc ddd"] * 3
    offsets = np.array([[[-1, -1], [-1, -1], [0, 3], [4, 7], [8, 11], [12, 15]]] * 4)
    ids = ["x", "x", "y", "z"]  # x has two features
    # x: spans 2..3 (score 3 + 3 = 6) in feature 0; null scores 1 + 1 = 2 (feature 0) and 4 + 4 = 8 (feature 1)
    # -> the lowest null (2) < 6: the span. y: null 5 + 5 = 10 > best span 4 + 2 = 6: no answer.
    # z: its only span scores 2 + 2 = 4 and the null 2 + 2 = 4: a tie keeps the span.
    start = _logits([{0: 1, 2: 3}, {0: 4, 4: 0}, {0: 5, 4: 4}, {0: 2, 5: 2}])
    end = _logits([{0: 1, 3: 3}, {0: 4, 5: 0}, {0: 5, 5: 2}, {0: 2, 5: 2}])
    examples = {"id": ["x", "y", "z"], "context": contexts}
    with_null = qa_features.postprocess_with_null
    assert qa_features.postprocess_predictions(start, end, ids, offsets, examples) == {
        "x": "aaa bbb", "y": "ccc ddd", "z": "ddd"}
    assert with_null(start, end, ids, offsets, examples) == {"x": "aaa bbb", "y": "", "z": "ddd"}
    assert with_null(start, end, ids, offsets, examples, null_score_diff_threshold=-0.5)["z"] == ""
    none_valid = np.full((1, 6, 2), -1)
    assert with_null(start[:1], end[:1], ["x"], none_valid, {"id": ["x"], "context": ["a"]}) == {"x": ""}


SQUAD_V2_REFERENCES = [
    {"id": "q1", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}},
    {"id": "q2", "answers": {"text": ["Carolina Panthers", "Panthers"], "answer_start": [0, 9]}},
    {"id": "q3", "answers": {"text": [], "answer_start": []}},
    {"id": "q4", "answers": {"text": [], "answer_start": []}},
    {"id": "q5", "answers": {"text": ["Carolina Panthers"], "answer_start": [0]}},
]
SQUAD_V2_PREDICTIONS = [{"id": q, "prediction_text": t, "no_answer_probability": 0.0}
                        for q, t in (("q1", "the Denver Broncos!"), ("q2", "the Panthers team"), ("q3", ""),
                                     ("q4", "Santa Clara"), ("q5", ""))]


def test_squad_v2_metric_on_hand_computed_values() -> None:
    # exact: q1 1, q2 0, q3 1 (no answer, none given), q4 0, q5 0 -> 40
    # f1: q1 1; q2 max(F1(carolina panthers | panthers team) = 0.5, F1(panthers | panthers team) = 2/3); q3 1;
    #     q4 0; q5 0 (an answer was due) -> (1 + 2/3 + 1) / 5
    out = load_metric("squad_v2").compute(predictions=SQUAD_V2_PREDICTIONS, references=SQUAD_V2_REFERENCES)
    assert out == pytest.approx({"exact": 40.0, "f1": 100 * (8 / 3) / 5, "total": 5,
                                 "HasAns_exact": 100 / 3, "HasAns_f1": 100 * (5 / 3) / 3, "HasAns_total": 3,
                                 "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2})
    assert squad_core.compute_squad_v2(SQUAD_V2_PREDICTIONS, SQUAD_V2_REFERENCES) == out


def test_squad_v2_metric_rules_of_the_official_script() -> None:
    assert squad_core.f1_v2("", "") == 1.0 and squad_core.f1_v2("", "x") == 0.0
    assert squad_core.exact_v2("the", "") == 1
    only_answerable = [SQUAD_V2_REFERENCES[0]]
    assert set(squad_core.compute_squad_v2(SQUAD_V2_PREDICTIONS, only_answerable)) == {
        "exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"}
    # a gold that normalises to nothing (an article) counts as "no answer" text, but the question has an answer
    article = [{"id": "q3", "answers": {"text": ["The"], "answer_start": [0]}}]
    assert squad_core.compute_squad_v2(SQUAD_V2_PREDICTIONS, article)["HasAns_exact"] == 100.0
    sure_no_answer = [{**p, "no_answer_probability": 1.5} for p in SQUAD_V2_PREDICTIONS]
    out = squad_core.compute_squad_v2(sure_no_answer, SQUAD_V2_REFERENCES)
    assert out["NoAns_exact"] == 100.0 and out["HasAns_exact"] == 0.0
    missing = squad_core.compute_squad_v2(SQUAD_V2_PREDICTIONS[:1], SQUAD_V2_REFERENCES)
    assert missing["total"] == 5 and missing["exact"] == 20.0


def test_squad_v2_module_inline_copy_matches_squad_core() -> None:
    script = sys.modules[type(load_metric("squad_v2")).__module__]
    for gold, pred in [("The Eiffel Tower!", "eiffel tower"), ("", ""), ("", "x"), ("dog dog", "the dog"),
                       ("a", "")]:
        assert script.normalize_answer(pred) == squad_core.normalize_answer(pred)
        assert script.exact_v2(gold, pred) == squad_core.exact_v2(gold, pred)
        assert script.f1_v2(gold, pred) == squad_core.f1_v2(gold, pred)


# ---------------------------------------------------------------- predict


def test_a_model_trained_with_unanswerable_questions_predicts_with_handle_impossible_answer(
        tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    job = qa_job()
    model = QaTask().build_model(job, Manifest("file:///x", {"info": {"train_unanswerable": 3}}), tokenizer)
    assert getattr(model.config, qa_task.UNANSWERABLE_ATTR) == 3
    v1 = QaTask().build_model(job, Manifest("file:///x", {"info": {"train_unanswerable": 0}}), tokenizer)
    assert not hasattr(v1.config, qa_task.UNANSWERABLE_ATTR)  # a v1 model's config.json stays as it was
    calls: list[dict[str, Any]] = []

    class Pipe:
        def __init__(self, model: Any) -> None:
            self.model = model

        def __call__(self, inputs: Any, **kwargs: Any) -> Any:  # a stream of {question, context}, as predict sends
            calls.append(kwargs)
            return [{"answer": "", "score": 0.5, "start": 0, "end": 0} for _ in inputs]

    for trained in (model, v1):
        monkeypatch.setattr(transformers, "pipeline", lambda *a, trained=trained, **k: Pipe(trained))
        QaTask().predict("unused", [{"question": "When?", "context": CONTEXT}])
    assert [c["handle_impossible_answer"] for c in calls] == [True, False]
