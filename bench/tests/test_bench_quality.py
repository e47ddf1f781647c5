"""The full-scale quality figure: its tables (the metric per epoch or once, the difference and speed against the
course, distinct outputs for generation), one document from every task's entry, its place in results.md, and smoke
runs at a tiny size that check both engines train and report their metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quality
from bench.quality import QualityRun, document, table
from bench.records import aggregate, write_results


def test_the_ner_table_puts_each_epoch_beside_the_course() -> None:
    runs = [QualityRun("course Trainer", [], [0.8653, 0.8726], 1000.0, 10),
            QualityRun("nlpjobs (defaults)", [], [0.86, 0.8513], 500.0, 10),
            QualityRun("nlpjobs (grouped)", ["train.group_by_length=true"], [0.8724], 1250.0, 10)]
    md = table(runs, "ner")
    assert md.startswith("| engine | F1 epoch 1 | F1 epoch 2 | final F1 | Δ F1 vs course | time | speed vs course |")
    assert "| course Trainer | 0.8653 | 0.8726 | **0.8726** | — | 1,000 s | — |" in md
    assert "| nlpjobs (defaults) | 0.8600 | 0.8513 | **0.8513** | -0.0213 | 500 s | 2.00× |" in md
    assert "| nlpjobs (grouped) | 0.8724 | — | **0.8724** | -0.0002 | 1,250 s | 0.80× |" in md


def test_the_translation_table_has_one_bleu_and_the_distinct_outputs() -> None:
    runs = [QualityRun("course Trainer", [], [29.5], 2400.0, 5370, 911),
            QualityRun("nlpjobs (defaults)", [], [30.25], 600.0, 5370, 930)]
    md = table(runs, "translation")
    assert md.splitlines()[0] == ("| engine | final BLEU | Δ BLEU vs course | distinct outputs | time | "
                                  "speed vs course |")
    assert "| course Trainer | **29.50** | — | 911 | 2,400 s | — |" in md
    assert "| nlpjobs (defaults) | **30.25** | +0.75 | 930 | 600 s | 4.00× |" in md


def test_a_task_s_run_replaces_its_entry_and_keeps_the_others(tmp_path: Path) -> None:
    # the first figure's quality.json held one NER entry at its top level, with f1_per_epoch
    (tmp_path / "quality.json").write_text(json.dumps({"header": "ner header", "runs": [
        {"engine": "course Trainer", "overrides": [], "f1_per_epoch": [0.8, 0.87], "seconds": 10.0, "steps": 4}]}))
    (tmp_path / "results.md").write_text("# nlpjobs benchmark\n\n| speed |\n\n## Quality at full scale\n\nold\n")
    entry = {"header": "translation header", "runs": [QualityRun("course Trainer", [], [12.0], 5.0, 3, 7)]}
    text = quality.write(tmp_path, "translation", entry)
    assert text.index("### NER") < text.index("### Translation") and "ner header" in text
    assert "| course Trainer | 0.8000 | 0.8700 | **0.8700** |" in text
    assert "| course Trainer | **12.00** | — | 7 | 5 s | — |" in text
    assert (tmp_path / "quality.md").read_text() == text
    assert (tmp_path / "results.md").read_text() == "# nlpjobs benchmark\n\n| speed |\n\n" + text
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert set(saved) == {"ner", "translation"} and saved["translation"]["runs"][0]["score"] == 12.0
    assert document(quality.read_entries(tmp_path / "quality.json")) == text


def test_results_md_carries_the_last_quality_figure(tmp_path: Path) -> None:
    write_results(tmp_path, aggregate([]), ["CPU: test"])
    assert "Quality at full scale" not in (tmp_path / "results.md").read_text()
    (tmp_path / "quality.md").write_text("## Quality at full scale\n\nthe figure\n")
    write_results(tmp_path, aggregate([]), ["CPU: test"])
    assert (tmp_path / "results.md").read_text().endswith("## Quality at full scale\n\nthe figure\n")


def test_unknown_variants_are_refused_per_task() -> None:
    with pytest.raises(SystemExit, match="sorted"):
        quality.main(["--task", "translation", "--variants", "grouped,sorted", "--out", "/nonexistent"])


@pytest.mark.parametrize(("task", "steps"), [("ner", 38), ("translation", 17)])
def test_a_quick_run_trains_both_engines_and_writes_the_figure(tmp_path: Path, task: str, steps: int) -> None:
    assert quality.main(["--quick", "--task", task, "--variants", "defaults", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quality.json").read_text())[task]
    assert [r["engine"] for r in data["runs"]] == ["course Trainer", "nlpjobs (defaults)"]
    assert all(len(r["scores"]) == 1 and r["steps"] == steps and r["seconds"] > 0 for r in data["runs"])
    if task == "translation":  # one evaluator for both, the copy baseline beside them
        assert all(r["distinct"] >= 1 for r in data["runs"]) and data["copy_bleu"] > 0
    assert "| course Trainer |" in (tmp_path / "quality.md").read_text()
    assert not list((tmp_path / "out").glob("quality-*"))  # scratch removed
