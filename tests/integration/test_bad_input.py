"""Bad input ends in one clear error (what, where, how to fix), a distinct exit code, and no output that a
later stage would take for complete."""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pytest

from clitools import cli, job_file
from nlpjobs import storage
from nlpjobs.config import load_job
from nlpjobs.tasks.base import TaskDataError
from nlpjobs.tasks.qa import QaTask

ROOT = Path(__file__).resolve().parents[2]
TINY_NER = {"data": {"max_train_examples": 16, "max_eval_examples": 8},
            "train": {"max_steps": 1, "batch_size": 8, "eval_every": "never", "save_every": "never"}}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ner_rows(n: int) -> list[dict]:
    return [{"tokens": ["EU", "rejects", "German", "lamb"], "ner_tags": [3, 0, 7, 0]} for _ in range(n)]


def files_job(tmp_path: Path, **extra: dict) -> Path:
    return job_file(tmp_path, "jobs/local/ner.yaml", f"file://{tmp_path / 'store'}",
                    data={"source": f"files:{tmp_path / 'raw'}", "max_train_examples": None,
                          "max_eval_examples": None},
                    preprocess={"label_names": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
                                                "B-MISC", "I-MISC"]}, **extra)


def assert_no_dataset(tmp_path: Path) -> None:
    """Nothing committed: no _SUCCESS marker anywhere under the store."""
    assert not list((tmp_path / "store").rglob("_SUCCESS")) if (tmp_path / "store").exists() else True


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "raw/train.jsonl", [{"words": ["a"], "ner_tags": [0]}])
    write_jsonl(tmp_path / "raw/validation.jsonl", [{"words": ["a"], "ner_tags": [0]}])
    proc = cli("preprocess", "-c", str(files_job(tmp_path)), check=False)
    assert proc.returncode == 3
    assert "lacks required column(s) ['tokens']" in proc.stderr and "'words'" in proc.stderr
    assert "data.columns" in proc.stderr
    assert_no_dataset(tmp_path)


def test_empty_split(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "raw/train.jsonl", ner_rows(4))
    write_jsonl(tmp_path / "raw/validation.jsonl", [])
    (tmp_path / "raw/validation.jsonl").write_text("")
    proc = cli("preprocess", "-c", str(files_job(tmp_path)), check=False)
    assert proc.returncode in (2, 3), proc.stderr
    assert "empty" in proc.stderr and "validation" in proc.stderr
    assert_no_dataset(tmp_path)


def test_tag_outside_label_space(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "raw/train.jsonl", ner_rows(3) + [{"tokens": ["x"], "ner_tags": [11]}])
    write_jsonl(tmp_path / "raw/validation.jsonl", ner_rows(2))
    proc = cli("preprocess", "-c", str(files_job(tmp_path)), check=False)
    assert proc.returncode == 3 and "outside the label space 0..8" in proc.stderr
    assert_no_dataset(tmp_path)


def test_model_head_with_other_label_count(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from nlpjobs.models import resolve_model

    head = tmp_path / "ner-3-labels"
    config = AutoConfig.from_pretrained(resolve_model("offline:minilm"), num_labels=3,
                                        id2label={0: "O", 1: "B-X", 2: "I-X"}, label2id={"O": 0, "B-X": 1, "I-X": 2})
    config.architectures = ["BertForTokenClassification"]
    config.save_pretrained(head)
    AutoTokenizer.from_pretrained(resolve_model("offline:minilm")).save_pretrained(head)
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{tmp_path / 'store'}", model={"name": str(head)},
                   **TINY_NER)
    cli("preprocess", "-c", str(job))
    proc = cli("train", "-q", "-c", str(job), check=False)
    assert proc.returncode == 3
    assert "head with 3 labels" in proc.stderr and "dataset has 9" in proc.stderr
    assert not list((tmp_path / "store").glob("runs/*/model"))


def test_qa_answer_start_mismatch_fails_or_skips() -> None:
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    context = "The quick brown fox jumps over the lazy dog near the river bank."
    rows = {"id": ["a", "b", "c"], "context": [context] * 3, "question": ["What jumps?", "Where?", "Which dog?"],
            "answers": [{"text": ["brown fox"], "answer_start": [10]},
                        {"text": ["river bank"], "answer_start": [40]},   # wrong: the text starts at 53
                        {"text": ["lazy dog"], "answer_start": [35]}]}
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "eval": datasets.Dataset.from_dict(rows)})
    tok = AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))
    job = load_job(ROOT / "jobs/local/qa.yaml", ["preprocess.max_length=64", "preprocess.stride=16"])
    with pytest.raises(TaskDataError) as exc:
        QaTask().prepare(job, raw, tok)
    assert "1 of 3 training examples" in str(exc.value) and "'b'" in str(exc.value)
    assert "preprocess.on_bad_answer=skip" in str(exc.value)
    job.preprocess.on_bad_answer = "skip"  # type: ignore[attr-defined]
    prepared = QaTask().prepare(job, raw, tok)
    assert prepared.info["skipped_bad_answers"] == 1
    assert len(prepared.splits["train"]) == 2 and len(prepared.splits["eval_examples"]) == 3


def test_unknown_task_and_preset(tmp_path: Path) -> None:
    proc = cli("preprocess", "-c", "jobs/local/ner.yaml", "--set", "task=summarise", check=False)
    assert proc.returncode == 2 and "unknown task 'summarise'" in proc.stderr and "Known tasks" in proc.stderr
    proc = cli("train", "-c", "jobs/local/nre.yaml", check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_unreachable_object_store_names_the_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("NLPJOBS_STORAGE_RETRIES", "3")
    monkeypatch.setenv("NLPJOBS_STORAGE_BACKOFF_S", "0.2")
    job = job_file(tmp_path, "jobs/local/ner.yaml", "s3://nowhere/x", **TINY_NER)
    started = time.monotonic()
    proc = cli("preprocess", "-c", str(job), check=False)
    assert proc.returncode == 4, proc.stderr
    assert "http://127.0.0.1:9" in proc.stderr and "unreachable after 3 attempts" in proc.stderr
    assert time.monotonic() - started < 60


def test_incomplete_or_corrupted_dataset_is_refused(tmp_path: Path) -> None:
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{tmp_path / 'store'}", **TINY_NER)
    cli("preprocess", "-c", str(job))
    [dataset] = [p for p in (tmp_path / "store/datasets/ner").iterdir() if not p.name.startswith("_")]
    [shard, *_] = sorted(dataset.rglob("shard-*.arrow"))

    shard.write_bytes(shard.read_bytes()[:-10])
    proc = cli("train", "-q", "-c", str(job), check=False)
    assert proc.returncode == 3 and "corrupted" in proc.stderr and "rerun `nlpjobs preprocess`" in proc.stderr

    shard.unlink()
    proc = cli("train", "-q", "-c", str(job), check=False)
    assert proc.returncode == 3 and "is missing" in proc.stderr

    (dataset / "_SUCCESS").unlink()
    proc = cli("train", "-q", "-c", str(job), check=False)
    assert proc.returncode == 3 and "incomplete (no _SUCCESS marker)" in proc.stderr
    assert not (tmp_path / "store/runs").exists() or not list((tmp_path / "store/runs").rglob("model"))
    # A rerun of preprocess replaces the partial prefix and training can proceed.
    assert "dataset written" in cli("preprocess", "-c", str(job)).stdout
    assert storage.exists(f"file://{dataset}/_SUCCESS")
