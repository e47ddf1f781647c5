"""Batch prediction over a dataset (`nlpjobs batch-predict`, nlpjobs.batch_predict) without a model: the task's
pipeline is replaced by a fake predictor, so these check the parts, their order, the worker split, resume after a
failure, the plan that refuses mixed inputs, both formats, S3, and every refusal's message."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nlpjobs import batch_predict as bp
from nlpjobs import storage
from nlpjobs.cli import main
from nlpjobs.config import ConfigError
from nlpjobs.jobfile import load_job
from nlpjobs.tasks.base import TaskDataError
from nlpjobs.tasks.ner import NerTask

ROOT = Path(__file__).resolve().parents[2]
ROWS = 25


def sentence(i: int) -> list[str]:
    return [f"w{i}"] * (1 + (i * 7) % 5)  # lengths differ, so the length order differs from the row order


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    with open(folder / "test.jsonl", "w") as fh:
        for i in range(ROWS):
            fh.write(json.dumps({"id": f"s{i}", "words": sentence(i), "ner_tags": ["O"] * len(sentence(i))}) + "\n")
    return folder


def fake_model(root: str, name: str = "bp") -> None:
    model = storage.join(root, "runs", name, "model")
    storage.write_bytes(storage.join(model, "config.json"), b"{}")
    storage.write_bytes(storage.join(model, "_SUCCESS"), b"")


class Calls:
    """What the fake pipeline was asked: the batches' inputs in the order they came."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.inputs: list[str] = []
        self.loads = 0
        self.fail_at = fail_at


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """NerTask's pipeline replaced: output = the input's words upper-cased; loaded once per run."""
    seen = Calls()

    def batch_predictor(self: NerTask, model_dir: str, device: int, batch_size: int) -> Any:
        seen.loads += 1
        assert device == -1 and batch_size == 4

        def run(inputs: Iterable[str]) -> Iterator[list[str]]:
            for x in inputs:
                if seen.fail_at is not None and len(seen.inputs) == seen.fail_at:
                    raise RuntimeError("the pipeline died")
                seen.inputs.append(x)
                yield [{"word": w.upper(), "score": 0.5} for w in x.split()]

        return run

    monkeypatch.setattr(NerTask, "batch_predictor", batch_predictor)
    return seen


def job(root: str, data: Path | str, *sets: str) -> Any:
    return load_job(ROOT / "jobs/local/ner.yaml", [
        f"storage={root}", "name=bp", f"predict.dataset.source=files:{data}", "predict.dataset.split=test",
        "predict.dataset.columns={tokens: words}", "predict.dataset.rows_per_shard=10", "predict.dataset.batch_size=4",
        "predict.dataset.device=cpu", *sets])


def expected(n: int = ROWS) -> list[dict[str, Any]]:
    return [{"index": i, "input": " ".join(sentence(i)),
             "output": [{"word": w.upper(), "score": 0.5} for w in sentence(i)]} for i in range(n)]


# ------------------------------------------------------------------------------------------------ pure parts


def test_parts_are_consecutive_ranges_and_workers_take_disjoint_shares() -> None:
    assert bp.part_ranges(25, 10) == [(0, 10), (10, 20), (20, 25)]
    assert bp.part_ranges(20, 10) == [(0, 10), (10, 20)]
    for workers in (1, 2, 3, 7):
        shares = [bp.worker_parts(10, i, workers) for i in range(workers)]
        assert sorted(p for share in shares for p in share) == list(range(10))
        assert all(p % workers == i for i, share in enumerate(shares) for p in share)
    assert bp.worker_parts(2, 4, 5) == []  # more workers than parts: the extra ones have nothing to do
    with pytest.raises(ConfigError, match=r"--worker-index: got 2, must be between 0 and 1 \(--workers 2\)"):
        bp.worker_parts(10, 2, 2)
    with pytest.raises(ConfigError, match="--workers: got 0"):
        bp.worker_parts(10, 0, 0)
    assert bp.part_name(3, "jsonl") == "part-00003.jsonl" and bp.part_name(12, "parquet") == "part-00012.parquet"


def test_rows_go_longest_first_and_come_back_in_row_order() -> None:
    inputs = ["bb", "a", "dddd", "ccc", {"question": "q", "context": "ccccc"}]
    assert bp.by_length(inputs) == [4, 2, 3, 0, 1]
    order: list[Any] = []

    def echo(items: Iterable[Any]) -> Iterator[Any]:
        for x in items:
            order.append(x)
            yield x

    assert bp.predict_rows(echo, inputs) == inputs
    assert order == [inputs[i] for i in (4, 2, 3, 0, 1)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_part_encoding_round_trips(fmt: str) -> None:
    records = [{"index": 0, "input": "EU rejects", "output": [{"word": "EU", "score": 0.9}], "id": "a"},
               {"index": 1, "input": {"question": "q", "context": "c"}, "output": {"answer": "c"}, "id": "b"}]
    back = bp.decode_part(bp.encode_part(records, fmt), fmt)
    if fmt == "parquet":  # non-text inputs are JSON text there
        back[1]["input"] = json.loads(back[1]["input"])
    assert back == records


@pytest.mark.parametrize(("sets", "message"), [
    (["predict.dataset.rows_per_shard=0"], "predict.dataset.rows_per_shard: got 0, must be > 0"),
    (["predict.dataset.batch_size=-1"], "predict.dataset.batch_size: got -1, must be > 0"),
    (["predict.dataset.max_examples=0"], "predict.dataset.max_examples: got 0, must be > 0"),
    (["predict.dataset.format=csv"], "predict.dataset.format: got 'csv', allowed values are 'jsonl', 'parquet'"),
    (["predict.dataset.source=s3://bucket/x"], "predict.dataset.source: got 's3://bucket/x'; expected 'hub:<id>'"),
    (["predict.dataset.name=../up"], "predict.dataset.name: got '../up'; an output folder name is"),
    (["predict.dataset.split=a/b"], "predict.dataset.split: got 'a/b'; a split name may not contain '/'"),
    (["predict.dataset.device=tpu"], "predict.dataset.device: got 'tpu', allowed values are 'auto', 'cpu', 'cuda'"),
    (["predict.dataset.rows_per_part=5"], "predict.dataset.rows_per_part: unknown setting. Did you mean 'rows_per_shard'?"),
])
def test_bad_settings_fail_when_the_job_loads(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_job(ROOT / "jobs/local/ner.yaml", sets)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------------- the run


def test_workers_share_the_parts_and_the_last_writes_the_manifest(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    fake_model(root)
    j = job(root, data, "predict.dataset.keep_columns=[id]")
    first = bp.run(j, worker_index=0, workers=2, show_progress=False)
    uri = bp.output_uri(j)
    assert uri == f"{root}/runs/bp/predictions/test"
    assert (first.parts, first.mine, first.written, first.skipped, first.rows_predicted) == (3, 2, 2, 0, 15)
    assert not first.complete and first.committed == 2
    assert sorted(bp.committed_parts(uri, "jsonl")) == ["part-00000.jsonl", "part-00002.jsonl"]
    assert not storage.exists(storage.join(uri, "manifest.json")) and not storage.exists(storage.join(uri, "_SUCCESS"))
    assert "the other workers' parts are still to come" in bp.summary(first)

    second = bp.run(j, worker_index=1, workers=2, show_progress=False)
    assert (second.written, second.rows_predicted, second.complete) == (1, 10, True)
    assert calls.loads == 2  # the model, once per process that has parts to predict
    manifest = storage.read_json(storage.join(uri, "manifest.json"))
    assert manifest["rows"] == ROWS and [p["rows"] for p in manifest["parts"]] == [10, 10, 5]
    assert [p["first_row"] for p in manifest["parts"]] == [0, 10, 20] and manifest["workers"] == 2
    assert manifest["source"]["source"] == f"files:{data}" and manifest["columns"]["mapping"] == {"tokens": "words"}
    assert manifest["columns"]["fields"] == ["index", "input", "output", "id"]
    assert manifest["model"] == f"{root}/runs/bp/model" and manifest["seconds"] >= 0
    for part in manifest["parts"]:
        assert part["bytes"] == storage.size(storage.join(uri, part["name"]))
    rows = list(bp.read_predictions(uri))
    assert rows == [{**e, "id": f"s{e['index']}"} for e in expected()]
    assert "all 25 rows in 3 part(s)" in bp.summary(second) and "(manifest.json, _SUCCESS)" in bp.summary(second)

    again = bp.run(j, show_progress=False)  # complete: nothing to do, the model is not loaded
    assert again.already_complete and again.written == 0 and calls.loads == 2
    assert "already complete" in bp.summary(again)


def test_a_failed_run_resumes_without_redoing_committed_parts(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    fake_model(root)
    j = job(root, data)
    uri = bp.output_uri(j)
    calls.fail_at = 13  # part 0 (rows 0-9) committed, part 1 dies after 3 rows
    with pytest.raises(RuntimeError, match="the pipeline died"):
        bp.run(j, show_progress=False)
    assert list(bp.committed_parts(uri, "jsonl")) == ["part-00000.jsonl"]
    part0 = Path(storage.resolve(storage.join(uri, "part-00000.jsonl"))[1])
    before = (part0.read_bytes(), part0.stat().st_mtime_ns)
    leftover = part0.with_name(".part-00001.jsonl.123-456.tmp")  # a writer killed in the middle of its write
    leftover.write_bytes(b'{"index": 10')
    calls.fail_at, calls.inputs = None, []
    result = bp.run(j, show_progress=False)
    assert not leftover.exists()
    assert (result.skipped, result.written, result.rows_predicted, result.complete) == (1, 2, 15, True)
    assert (part0.read_bytes(), part0.stat().st_mtime_ns) == before  # never rewritten
    assert sorted(calls.inputs) == sorted(" ".join(sentence(i)) for i in range(10, ROWS))  # only the rest
    assert list(bp.read_predictions(uri)) == expected()


def test_other_inputs_are_refused_rather_than_mixed(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    fake_model(root)
    bp.run(job(root, data, "predict.dataset.max_examples=12"), workers=2, show_progress=False)  # incomplete
    with pytest.raises(ConfigError, match=r"holds predictions of other inputs \(max_examples, the number of rows"):
        bp.run(job(root, data, "predict.dataset.max_examples=20"), show_progress=False)
    with pytest.raises(ConfigError, match=r"the model \(it was trained or exported again\)"):
        storage.write_bytes(storage.join(root, "runs/bp/model/config.json"), b'{"retrained": true}')
        bp.run(job(root, data, "predict.dataset.max_examples=12"), show_progress=False)
    other = bp.run(job(root, data, "predict.dataset.max_examples=12", "predict.dataset.name=again"), show_progress=False)
    assert other.complete and other.uri.endswith("/predictions/again") and other.rows == 12


def test_an_edited_source_file_is_a_new_input(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    fake_model(root)
    bp.run(job(root, data), workers=3, show_progress=False)
    with open(data / "test.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "new", "words": ["more"], "ner_tags": ["O"]}) + "\n")
    os.utime(data / "test.jsonl", (1, 1))
    with pytest.raises(ConfigError, match=r"the split's data \(its file or commit\)"):
        bp.run(job(root, data), show_progress=False)


def test_parquet_parts(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    fake_model(root)
    result = bp.run(job(root, data, "predict.dataset.format=parquet"), show_progress=False)
    assert result.complete
    assert sorted(bp.committed_parts(result.uri, "parquet")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert list(bp.read_predictions(result.uri)) == expected()
    import pyarrow.parquet as pq

    table = pq.read_table(storage.resolve(storage.join(result.uri, "part-00000.parquet"))[1])
    assert table.column_names == ["index", "input", "output"] and str(table.schema.field("index").type) == "int64"


@pytest.mark.s3
def test_on_s3(s3_env: str, data: Path, calls: Calls) -> None:
    """The rows from an s3:// folder (files: source), the parts and the manifest on S3."""
    fake_model(s3_env)
    storage.upload(data / "test.jsonl", storage.join(s3_env, "data", "test.jsonl"))
    j = job(s3_env, storage.join(s3_env, "data"), "predict.dataset.max_examples=21")
    assert not bp.run(j, worker_index=1, workers=2, show_progress=False).complete
    assert list(bp.committed_parts(bp.output_uri(j), "jsonl")) == ["part-00001.jsonl"]
    result = bp.run(j, worker_index=0, workers=2, show_progress=False)
    assert result.complete and result.written == 2
    assert list(bp.read_predictions(result.uri)) == expected(21)


# ------------------------------------------------------------------------------------------------- refusals


def test_refusals_name_the_fix(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    with pytest.raises(ConfigError, match="no trained model at"):
        bp.run(job(root, data), show_progress=False)
    fake_model(root)
    with pytest.raises(ConfigError, match=r"predict.dataset.split: not set; name the split to predict, e.g. --set "
                                          r"predict.dataset.split=test"):
        bp.run(job(root, data, "predict.dataset.split="), show_progress=False)
    with pytest.raises(TaskDataError, match=r"lacks the column\(s\) \['tokens'\] batch prediction reads; it has "
                                            r"\['id', 'words', 'ner_tags'\]\. Map yours with predict.dataset.columns"):
        bp.run(job(root, data, "predict.dataset.columns={}"), show_progress=False)
    with pytest.raises(ConfigError, match=r"predict.dataset.keep_columns: \['nope'\] not in split 'test'"):
        bp.run(job(root, data, "predict.dataset.keep_columns=[nope]"), show_progress=False)
    with pytest.raises(ConfigError, match="no test.jsonl/.json/.parquet/.csv under"):
        bp.run(job(root, data, "predict.dataset.split=test", f"predict.dataset.source=files:{tmp_path}"),
               show_progress=False)
    clm = load_job(ROOT / "jobs/local/clm.yaml", [f"storage={root}", "predict.dataset.split=valid"])
    with pytest.raises(ConfigError, match="not supported for clm: its predictions sample with the seed reset"):
        bp.run(clm, show_progress=False)
    assert calls.loads == 0


def test_cli_exit_codes_and_summary(tmp_path: Path, data: Path, calls: Calls) -> None:
    root = f"file://{tmp_path / 'store'}"
    fake_model(root)
    args = ["batch-predict", "-q", "-c", str(ROOT / "jobs/local/ner.yaml"), "--set", f"storage={root}", "--set",
            "name=bp", "--set", f"predict.dataset.source=files:{data}", "--set", "predict.dataset.split=test",
            "--set", "predict.dataset.columns={tokens: words}", "--set", "predict.dataset.rows_per_shard=10",
            "--set", "predict.dataset.batch_size=4", "--set", "predict.dataset.device=cpu"]
    runner = CliRunner()
    bad = runner.invoke(main, [*args, "--workers", "2", "--worker-index", "2"])
    assert bad.exit_code == 2 and "--worker-index: got 2, must be between 0 and 1" in bad.output
    half = runner.invoke(main, args, env={"JOB_COMPLETION_INDEX": "1", "NLPJOBS_PREDICT_WORKERS": "3"})
    assert half.exit_code == 0, half.output
    assert "batch-predict (worker 1 of 3): 10 rows predicted in 1 part(s) written, 0 skipped" in half.output
    rest = runner.invoke(main, args)
    assert rest.exit_code == 0, rest.output
    assert "15 rows predicted in 2 part(s) written, 1 skipped (committed before)" in rest.output
    assert f"all 25 rows in 3 part(s): {root}/runs/bp/predictions/test (manifest.json, _SUCCESS)" in rest.output
    assert "rows/s" in rest.output
    unset = runner.invoke(main, [*args, "--set", "predict.dataset.split="])
    assert unset.exit_code == 2 and "error: invalid configuration: predict.dataset.split: not set" in unset.output
