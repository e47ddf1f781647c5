"""`nlpjobs run` on SQuAD JSON files as published: v2.0 with unanswerable questions (trained with [CLS] labels,
scored with SQuAD v2.0's metric) and v1.1 (scored as before), through the CLI in-process (click's runner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clitools import ROOT, job_file
from nlpjobs.cli import main

EXAMPLES = ROOT / "docs/examples/squad"
TINY = {"train": {"max_steps": 2, "batch_size": 8, "eval_every": "never", "save_every": "never"},
        "preprocess": {"max_length": 128, "stride": 32}}


def _as_v1(src: Path, dst: Path) -> None:
    """The example files without their unanswerable questions, as SQuAD v1.1 files."""
    dst.mkdir()
    for name in ("train.json", "validation.json"):
        doc = json.loads((src / name).read_text())
        for article in doc["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"] = [{k: v for k, v in qa.items() if k != "is_impossible"}
                                    for qa in paragraph["qas"] if qa["answers"]]
        (dst / name).write_text(json.dumps({"data": doc["data"], "version": "1.1"}))


@pytest.mark.parametrize("version", ["v2.0", "v1.1"])
def test_run_on_squad_json_files(tmp_path: Path, version: str) -> None:
    source = EXAMPLES
    if version == "v1.1":
        source = tmp_path / "v1"
        _as_v1(EXAMPLES, source)
    store = tmp_path / "store"
    job = job_file(tmp_path, "jobs/local/qa.yaml", f"file://{store}", name="squad-json",
                   data={"source": f"files:{source}", "train_split": "train", "eval_split": "validation"}, **TINY)
    result = CliRunner().invoke(main, ["run", "-q", "-c", str(job)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((store / "runs/squad-json/metrics.json").read_text())["evaluate"]
    [dataset] = [p for p in (store / "datasets/qa").iterdir() if not p.name.startswith("_")]
    info = json.loads((dataset / "manifest.json").read_text())["info"]
    config = json.loads((store / "runs/squad-json/model/config.json").read_text())
    assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 100
    if version == "v2.0":
        assert metrics["version_2_with_negative"] is True
        assert metrics["examples"] == 8
        assert (metrics["HasAns_total"], metrics["NoAns_total"]) == (6, 2)
        assert {"HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"} <= set(metrics)
        assert (info["train_unanswerable"], info["eval_unanswerable"]) == (3, 2)
        assert config["nlpjobs_unanswerable_questions"] == 3
        assert "SQuAD v2: HasAns F1=" in result.output
    else:
        assert metrics["version_2_with_negative"] is False and metrics["examples"] == 6
        assert not {k for k in metrics if k.startswith(("HasAns", "NoAns"))}
        assert info["train_unanswerable"] == 0 and "nlpjobs_unanswerable_questions" not in config
    assert len((store / "runs/squad-json/predictions.jsonl").read_text().splitlines()) == 2
