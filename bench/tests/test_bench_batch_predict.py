"""The batch-prediction figure (bench.batch_predict) runs both sides on a few sentences and finds the same outputs,
and a figure measured apart merges into results.md/results.json as its own section. No timings asserted."""

from __future__ import annotations

import json
from pathlib import Path

from bench import batch_predict, cli
from bench.common import Sizes
from bench.records import Record, aggregate, write_results, write_section


def test_plan_runs_the_figure_for_ner_only() -> None:
    assert ("batch-predict", "ner") in cli.plan("ner", list(cli.FIGURES))
    assert cli.plan("qa", ["batch-predict"]) == []
    assert cli.plan("all", ["batch-predict"]) == [("batch-predict", "ner")]
    assert cli.sizes_from(cli.parser().parse_args(["--batch-predict-rows", "50"])).batch_predict_rows == 50
    assert cli.sizes_from(cli.parser().parse_args(["--quick"])).batch_predict_rows == 200


def test_figure_measures_both_sides_with_the_same_outputs(tmp_path: Path) -> None:
    sizes = Sizes(repeats=1, batch_predict_rows=40)
    samples = batch_predict.measure(sizes, tmp_path)
    assert [s.figure for s in samples] == list(batch_predict.FIGURES)
    for s in samples:
        assert s.unit == "rows/s" and s.nlpjobs and s.baseline and s.higher_is_better
        assert s.metric["rows with identical entities"] == s.metric["rows"] == 40
        assert s.metric["largest score difference"] < 1e-4


def _record(figure: str, value: float) -> Record:
    return Record("ner", figure, "rows/s", value, 1.0, value, None, repeats=1, notes=[f"{figure} note"])


def test_a_section_merges_into_the_results(tmp_path: Path) -> None:
    quality = "## Quality at full scale\n\nF1 0.87\n"
    (tmp_path / "quality.md").write_text(quality)
    write_results(tmp_path, aggregate([]) + [_record("old", 2.0), _record("kept", 3.0)], ["CPU: a"], "`full`")
    write_section(tmp_path, [_record("old", 5.0), _record("new", 7.0)], ["CPU: b"], "`part`", "Batch prediction")
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(r["figure"], r["nlpjobs"]) for r in data] == [("old", 5.0), ("kept", 3.0), ("new", 7.0)]
    md = (tmp_path / "results.md").read_text()
    assert md.index("`full`") < md.index("## Batch prediction") < md.index("## Quality at full scale")
    assert "| ner | new | rows/s | 7.00 |" in md and "- CPU: b" in md and "- ner / new: new note" in md
    write_section(tmp_path, [_record("new", 8.0)], ["CPU: c"], "`again`", "Batch prediction")  # replaced, not added
    md = (tmp_path / "results.md").read_text()
    assert md.count("## Batch prediction") == 1 and "`part`" not in md and "| ner | new | rows/s | 8.00 |" in md
    assert md.endswith(quality) and "`full`" in md
