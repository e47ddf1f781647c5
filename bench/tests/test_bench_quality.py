"""The full-scale quality figure: its table (F1 per epoch, the difference and speed against the course) and its
place in results.md. A smoke run at a tiny size checks that both engines train and report an F1 per epoch."""

from __future__ import annotations

import json
from pathlib import Path

from bench import quality
from bench.quality import QualityRun, markdown
from bench.records import aggregate, write_results


def test_the_table_puts_each_run_beside_the_course() -> None:
    runs = [QualityRun("course Trainer", [], [0.8653, 0.8726], 1000.0, 10),
            QualityRun("nlpjobs (defaults)", [], [0.86, 0.8513], 500.0, 10),
            QualityRun("nlpjobs (grouped)", ["train.group_by_length=true"], [0.8724], 1250.0, 10)]
    md = markdown(runs, "header")
    assert md.startswith("## Quality at full scale\n\nheader\n")
    assert "| course Trainer | 0.8653 | 0.8726 | **0.8726** | — | 1,000 s | — |" in md
    assert "| nlpjobs (defaults) | 0.8600 | 0.8513 | **0.8513** | -0.0213 | 500 s | 2.00× |" in md
    assert "| nlpjobs (grouped) | 0.8724 | — | **0.8724** | -0.0002 | 1,250 s | 0.80× |" in md


def test_results_md_carries_the_last_quality_figure(tmp_path: Path) -> None:
    write_results(tmp_path, aggregate([]), ["CPU: test"])
    assert "Quality at full scale" not in (tmp_path / "results.md").read_text()
    (tmp_path / "quality.md").write_text("## Quality at full scale\n\nthe figure\n")
    write_results(tmp_path, aggregate([]), ["CPU: test"])
    assert (tmp_path / "results.md").read_text().endswith("## Quality at full scale\n\nthe figure\n")


def test_a_quick_run_trains_both_engines_and_writes_the_figure(tmp_path: Path) -> None:
    assert quality.main(["--quick", "--variants", "defaults", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "quality.json").read_text())
    assert [r["engine"] for r in data["runs"]] == ["course Trainer", "nlpjobs (defaults)"]
    assert all(len(r["f1_per_epoch"]) == 1 and r["steps"] == 38 and r["seconds"] > 0 for r in data["runs"])
    assert "| course Trainer |" in (tmp_path / "quality.md").read_text()
    assert not list((tmp_path / "out").glob("quality-*"))  # scratch removed
