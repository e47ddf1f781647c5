"""NER tags as users have them, through the CLI: string tags in every file format of a ``files:`` source, a label
only in the evaluation split, and the example files of docs/examples/ner from preprocess to predict."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from clitools import ROOT, cli, job_file
from nlpjobs.cli import main
from nlpjobs.data import shards

ROWS = [{"tokens": ["Peter", "Blackburn", "moved", "to", "Wolverhampton"],
         "ner_tags": ["B-PERSON", "I-PERSON", "O", "O", "B-CITY"]},
        {"tokens": ["Acme", "Robotics", "hired", "Anna"], "ner_tags": ["B-ORG", "I-ORG", "O", "B-PERSON"]}]
NAMES = ["O", "B-CITY", "I-CITY", "B-ORG", "I-ORG", "B-PERSON", "I-PERSON"]
TINY = {"data": {"max_train_examples": None, "max_eval_examples": None}, "preprocess": {"num_shards": 1}}


def write(folder: Path, split: str, fmt: str, rows: list[dict]) -> None:
    """``rows`` as ``folder/<split>.<fmt>``, the way a user would write that format."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":  # a list in a CSV cell is its JSON text
        pd.DataFrame({k: [json.dumps(r[k]) for r in rows] for k in ("tokens", "ner_tags")}).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)


def preprocess(tmp_path: Path, raw: Path, name: str) -> dict:
    """Preprocess ``raw`` (labels from the data) into its own store; the manifest and the token labels."""
    store = tmp_path / f"store-{name}"
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{store}", **{**TINY, "data": {
        **TINY["data"], "source": f"files:{raw}"}})
    result = CliRunner().invoke(main, ["preprocess", "-q", "-c", str(job)])
    assert result.exit_code == 0, result.output
    [manifest] = store.glob("datasets/ner/*/manifest.json")
    dataset = shards.open_dataset(f"file://{manifest.parent}")
    labels = {split: shards.load_split(dataset, split)["labels"] for split in ("train", "eval")}
    return {"manifest": json.loads(manifest.read_text()), "labels": labels}


def test_string_tags_read_alike_from_every_file_format(tmp_path: Path) -> None:
    results = {}
    for fmt in ("jsonl", "json", "csv", "parquet"):
        for split in ("train", "validation"):
            write(tmp_path / fmt, split, fmt, ROWS)
        results[fmt] = preprocess(tmp_path, tmp_path / fmt, fmt)
    jsonl = results["jsonl"]
    assert jsonl["manifest"]["info"]["label_names"] == NAMES
    assert jsonl["labels"]["train"][0][0] == -100 and 5 in jsonl["labels"]["train"][0]
    for fmt, result in results.items():
        assert result["manifest"]["info"]["label_names"] == NAMES, fmt
        assert result["labels"] == jsonl["labels"], fmt


def test_a_label_only_in_evaluation_is_in_the_manifest_and_warned(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "raw", "train", "jsonl", ROWS[1:])
    write(tmp_path / "raw", "validation", "jsonl", ROWS)
    with caplog.at_level(logging.WARNING, logger="nlpjobs"):
        info = preprocess(tmp_path, tmp_path / "raw", "eval-only")["manifest"]["info"]
    assert info["label_names"] == NAMES  # the union of both splits
    assert info["eval_only_labels"] == ["B-CITY", "I-PERSON"]
    assert "['CITY'] are never predicted: their recall is 0" in caplog.text


@pytest.mark.slow
def test_the_example_files_run_end_to_end(tmp_path: Path) -> None:
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{tmp_path / 'store'}",
                   data={"source": f"files:{ROOT / 'docs/examples/ner'}"},
                   train={"max_steps": 4, "batch_size": 8, "eval_every": "never", "save_every": "never"})
    out = cli("run", "-q", "-c", str(job)).stdout
    assert "precision=" in out and "f1=" in out
    [manifest] = (tmp_path / "store/datasets/ner").glob("*/manifest.json")
    names = json.loads(manifest.read_text())["info"]["label_names"]
    assert names == ["O", "B-CITY", "I-CITY", "B-ORG", "I-ORG", "B-PERSON", "I-PERSON"]
    config = json.loads((tmp_path / "store/runs/ner-local/model/config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(names))] == names
    evaluated = json.loads((tmp_path / "store/runs/ner-local/metrics.json").read_text())["evaluate"]
    assert evaluated["examples"] == 15
