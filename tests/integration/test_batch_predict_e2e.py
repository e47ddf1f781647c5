"""Batch prediction over 10,000 CoNLL-2003 sentences through the CLI, as a user runs it: a NER model trained for a
few steps, `nlpjobs batch-predict` killed (SIGKILL) once its first parts are committed, then stopped by SIGTERM
after one more, then run again. The rerun predicts only the parts that were not committed (those are left byte
for byte as they were), and the output holds every input row once, in order, with the pipeline's own
predictions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clitools import cli, job_file
from nlpjobs import batch_predict, storage

pytestmark = pytest.mark.slow
ROWS, PER_PART = 10_000, 1000


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NER run trained for 4 steps on 64 sentences; batch prediction of the first 10,000 training sentences."""
    tmp = tmp_path_factory.mktemp("batch-predict")
    path = job_file(tmp, "jobs/local/ner.yaml", f"file://{tmp / 'store'}", name="bp-e2e",
                    data={"max_train_examples": 64, "max_eval_examples": 16},
                    train={"max_steps": 4, "batch_size": 16, "save_every": "never", "eval_every": "never",
                           "log_every": 1, "warmup_steps": 0},
                    predict={"inputs": [], "dataset": {"split": "train", "max_examples": ROWS,
                                                       "rows_per_shard": PER_PART, "batch_size": 32,
                                                       "keep_columns": ["id"]}})
    cli("preprocess", "-q", "-c", str(path))
    cli("train", "-q", "-c", str(path))
    return path


def _parts(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*.jsonl"))}


def test_ten_thousand_sentences_killed_and_resumed(job: Path) -> None:
    from nlpjobs.data import offline
    from nlpjobs.jobfile import load_job
    from nlpjobs.tasks.ner import NerTask

    folder = job.parent / "store" / "runs" / "bp-e2e" / "predictions" / "train"
    log = job.parent / "killed.log"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "NLPJOBS_PROGRESS_INTERVAL_S": "0"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nlpjobs", "batch-predict", "-c", str(job)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while len(_parts(folder)) < 2 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, f"batch-predict ended before it was killed:\n{log.read_text()}"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    committed = _parts(folder)
    assert 2 <= len(committed) < ROWS // PER_PART, log.read_text()
    assert not (folder / "manifest.json").exists() and not (folder / "_SUCCESS").exists()
    assert list(committed) == [f"part-{i:05d}.jsonl" for i in range(len(committed))]  # in order, whole

    # SIGTERM (a preemption) once one more part is committed: the run stops when the part in progress is
    # committed, with the code of a run to be resumed, and says where the output stands.
    killed = len(committed)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nlpjobs", "batch-predict", "-c", str(job)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while len(_parts(folder)) <= killed and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, f"batch-predict ended before SIGTERM:\n{log.read_text()}"
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=300)
        finally:
            proc.kill()
            proc.wait()
    text = log.read_text()
    committed = _parts(folder)
    assert code == 143 and "Traceback" not in text, text
    assert killed < len(committed) < ROWS // PER_PART, text
    assert (f"error: stopped by SIGTERM after {len(committed) - killed} part(s) written by this run: "
            f"{len(committed)} of 10 part(s) committed at file://{folder}. Rerun the same command") in text, text
    assert list(committed) == [f"part-{i:05d}.jsonl" for i in range(len(committed))]

    rerun = cli("batch-predict", "-c", str(job))
    skipped = len(committed)
    assert f"{skipped} of this worker's 10 part(s) already committed: skipped" in rerun.stdout, rerun.stdout
    assert (f"{ROWS - skipped * PER_PART:,} rows predicted in {10 - skipped} part(s) written, {skipped} skipped "
            "(committed before)") in rerun.stdout, rerun.stdout
    assert f"all {ROWS:,} rows in 10 part(s): file://{folder} (manifest.json, _SUCCESS)" in rerun.stdout
    assert "rows/s on cpu" in rerun.stdout and "batch-predict:" in rerun.stderr  # the summary, the progress bar
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    after = _parts(folder)
    assert {name: after[name] for name in committed} == committed  # neither rewritten nor touched

    uri = f"file://{folder}"
    manifest = storage.read_json(f"{uri}/manifest.json")
    assert manifest["rows"] == ROWS and [p["rows"] for p in manifest["parts"]] == [PER_PART] * 10
    assert manifest["source"]["source"] == "offline:conll2003" and manifest["source"]["split"] == "train"
    rows = list(batch_predict.read_predictions(uri))
    sentences = offline.load("conll2003", ["train"])["train"].select(range(ROWS))
    assert [r["index"] for r in rows] == list(range(ROWS))
    assert [r["input"] for r in rows] == [" ".join(t) for t in sentences["tokens"]]
    assert [r["id"] for r in rows] == list(sentences["id"])
    for r in rows:
        for entity in r["output"]:
            assert set(entity) == {"entity_group", "score", "word", "start", "end"}
            assert 0 <= entity["start"] < entity["end"] <= len(r["input"])

    # the outputs are the plain pipeline's (nlpjobs predict, one row at a time) for rows of every part
    sample = list(range(0, ROWS, 97))
    plain = NerTask().predict(str(job.parent / "store" / "runs" / "bp-e2e" / "model"),
                              [rows[i]["input"] for i in sample])
    for i, expected in zip(sample, plain):
        got = rows[i]["output"]
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == \
            [(e["entity_group"], e["word"], e["start"], e["end"]) for e in expected], i
        assert [e["score"] for e in got] == pytest.approx([e["score"] for e in expected], abs=1e-4)

    again = cli("batch-predict", "-c", str(job))
    assert "already complete" in again.stdout and _parts(folder) == after
    assert load_job(job).predict.dataset.rows_per_shard == PER_PART
