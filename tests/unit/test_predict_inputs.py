"""`nlpjobs predict`: a user's own inputs never replace the run's predictions.jsonl (they go to --out or stdout),
and a malformed input or --out stops with one error line before the model is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nlpjobs import stages
from nlpjobs.cli import main
from nlpjobs.config import ConfigError
from nlpjobs.jobfile import load_job
from nlpjobs.tasks import get_task
from nlpjobs.tasks.ner import NerTask

ROOT = Path(__file__).resolve().parents[2]
QA = {"question": "Who?", "context": "Ada wrote it."}


@pytest.mark.parametrize(("task", "item", "says"), [
    ("qa", "Who wrote it?", "qa needs a JSON object"),
    ("qa", {"question": "Who?"}, "lacks ['context']"),
    ("qa", {"question": " ", "context": "Ada wrote it."}, "non-empty text in ['question']"),
    ("qa", {"question": "Who?", "context": 3}, "non-empty text in ['context']"),
    ("ner", "", "ner needs non-empty text"),
    ("ner", {"text": "EU rejects German lamb"}, "ner needs a text string"),
    ("translation", ["Open", "the file"], "translation needs a text string"),
    ("summarization", "   ", "summarization needs non-empty text"),
    ("clm", None, "clm needs a text string"),
    ("mlm", 3, "mlm needs a text string"),
    ("mlm", "no mask in this sentence", "has no [MASK] token to fill"),
])
def test_each_task_says_what_input_it_expected(task: str, item: Any, says: str) -> None:
    assert says in (get_task(task).input_problem(item) or "")


@pytest.mark.parametrize(("task", "item"), [("qa", QA), ("ner", "EU rejects German lamb"), ("mlm", "A [MASK]."), ("mlm", "A <mask>.")])
def test_good_inputs_pass(task: str, item: Any) -> None:
    assert get_task(task).input_problem(item) is None


def test_a_bad_predict_input_in_the_job_fails_when_the_job_loads() -> None:
    with pytest.raises(ConfigError, match=r"predict.inputs\[1\]: qa needs a JSON object"):
        load_job(ROOT / "jobs/local/qa.yaml", ['predict.inputs=[{question: "Who", context: "Ada."}, "Who?"]'])


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the model is an error: the checks must come first."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stages, "fetch_model", refuse)


def predict(task: str, store: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["predict", "-c", str(ROOT / f"jobs/local/{task}.yaml"),
                                     "--set", f"storage=file://{store}", *args])


@pytest.mark.parametrize(("task", "args", "says"), [
    ("qa", ["-i", json.dumps(QA), "-i", "Who wrote it?"], "--input 2: qa needs a JSON object"),
    ("qa", ["-i", '{"question": "Who?", "context": "Ada"'], "--input 1: '{\"question\""),
    ("qa", ["-i", json.dumps({"question": "Who?"})], "--input 1: qa needs a JSON object"),
    ("ner", ["-i", "EU rejects German lamb", "-i", ""], "--input 2: ner needs non-empty text"),
    ("translation", ["-i", "   "], "--input 1: translation needs non-empty text"),
    ("mlm", ["-i", "A [MASK].", "-i", "no mask here"], "--input 2: 'no mask here' has no [MASK] token"),
])
def test_a_bad_input_stops_before_the_model_loads(no_model: None, tmp_path: Path, task: str, args: list[str],
                                                  says: str) -> None:
    result = predict(task, tmp_path / "store", *args)
    assert result.exit_code == 2, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: bad input: ") and says in line, line
    assert "invalid configuration" not in line and "Traceback" not in result.output


def test_input_file_lines_are_named_and_checked(no_model: None, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps(QA) + "\n\n" + json.dumps({"question": "Who?", "context": ""}) + "\n")
    result = predict("qa", tmp_path / "store", "--input-file", str(inputs))
    assert result.exit_code == 2 and f"error: bad input: {inputs} line 3: qa needs non-empty text in ['context']" \
        in result.stderr, result.output
    inputs.write_text(json.dumps(QA) + "\n{not json\n")
    result = predict("qa", tmp_path / "store", "--input-file", str(inputs))
    assert result.exit_code == 2 and f"{inputs} line 2: not a JSON value" in result.stderr, result.output
    result = predict("qa", tmp_path / "store", "--input-file", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2 and "missing.jsonl: no such file" in result.stderr, result.output


@pytest.mark.parametrize(("out", "code", "says"), [
    ("gs://bucket/predictions.jsonl", 2, "unknown storage scheme 'gs'"),
    ("{tmp}/afile/sub/predictions.jsonl", 4, "afile is a file, not a directory"),
    ("{tmp}", 2, "is a directory; give a file name"),
])
def test_a_bad_out_stops_before_the_model_loads(no_model: None, tmp_path: Path, out: str, code: int,
                                                says: str) -> None:
    (tmp_path / "afile").write_text("x")
    result = predict("ner", tmp_path / "store", "-i", "EU rejects German lamb", "--out", out.format(tmp=tmp_path))
    assert result.exit_code == code and says in result.stderr, result.output
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[Any]]:
    """A trained model that tags every input with its own text; records what each call predicted."""
    calls: list[list[Any]] = []

    def fake_predict(self: NerTask, model_dir: str, inputs: list[Any]) -> list[Any]:
        calls.append(list(inputs))
        return [[{"entity_group": "MISC", "word": x}] for x in inputs]

    monkeypatch.setattr(stages, "fetch_model", lambda job, download=True: tmp_path / "model")
    monkeypatch.setattr(NerTask, "predict", fake_predict)
    return calls


def test_own_inputs_never_replace_the_runs_predictions(fake_model: list[list[Any]], tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_file = store / "runs/ner-local/predictions.jsonl"

    result = predict("ner", store)  # the job's predict.inputs: the run's predictions
    assert result.exit_code == 0, result.output
    job_inputs = [json.loads(x)["input"] for x in run_file.read_text().splitlines()]
    assert job_inputs == fake_model[-1] and len(job_inputs) == 2
    written = run_file.read_bytes()

    result = predict("ner", store, "-i", "Ada lives in Paris", "-i", "Bob")  # to stdout, as JSON lines
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in result.stdout.splitlines()]
    assert rows == [{"input": x, "output": [{"entity_group": "MISC", "word": x}]} for x in ("Ada lives in Paris", "Bob")]
    assert run_file.read_bytes() == written

    inputs = tmp_path / "mine.jsonl"
    inputs.write_text('"Carol"\n')
    out = tmp_path / "out/mine.jsonl"
    result = predict("ner", store, "-i", "Dan", "--input-file", str(inputs), "--out", f"file://{out}")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["input"] for x in out.read_text().splitlines()] == ["Dan", "Carol"]
    assert run_file.read_bytes() == written and str(out) in result.stdout
    result = predict("ner", store, "--out", str(tmp_path / "job.jsonl"))  # the job's inputs, elsewhere
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["input"] for x in (tmp_path / "job.jsonl").read_text().splitlines()] == job_inputs
    assert run_file.read_bytes() == written
