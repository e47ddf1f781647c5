"""End to end through the CLI, as a user runs it: preprocess → train → evaluate → predict against the real
SeaweedFS server with s3:// URIs, resume from a committed checkpoint, and a two-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clitools import cli, job_file
from nlpjobs import storage

pytestmark = [pytest.mark.slow]


def state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def local_copy(uri: str, dest: Path) -> Path:
    return storage.download(uri, dest)


NER_SMALL = {
    "data": {"max_train_examples": 48, "max_eval_examples": 24},
    "train": {"max_steps": 6, "batch_size": 8, "save_every": "2", "eval_every": "3", "log_every": 1,
              "keep_checkpoints": 2, "learning_rate": 1e-4, "warmup_steps": 0},
    "preprocess": {"num_shards": 2},
}


@pytest.mark.s3
def test_ner_on_s3_end_to_end_with_exact_resume(s3_env: str, tmp_path: Path) -> None:
    job = job_file(tmp_path, "jobs/local/ner.yaml", s3_env, name="ner-e2e", **NER_SMALL)
    first = cli("preprocess", "-c", str(job))
    assert "dataset written" in first.stdout
    datasets_root = storage.join(s3_env, "datasets", "ner")
    [key] = [n for n in storage.listdir(datasets_root) if not n.startswith("_")]
    manifest = storage.read_json(storage.join(datasets_root, key, "manifest.json"))
    assert manifest["splits"]["train"]["rows"] == 48 and len(manifest["splits"]["train"]["shards"]) == 2
    assert manifest["info"]["label_names"][:3] == ["O", "B-PER", "I-PER"]
    assert storage.exists(storage.join(datasets_root, key, "_SUCCESS"))
    assert "dataset reused" in cli("preprocess", "-c", str(job)).stdout

    out = cli("train", "-q", "-c", str(job)).stdout
    assert "6/6 optimizer steps" in out
    run = storage.join(s3_env, "runs", "ner-e2e")
    ckpts = storage.join(run, "checkpoints")
    assert [n for n in storage.listdir(ckpts) if n.startswith("step-")] == ["step-00000004", "step-00000006"]
    assert storage.read_bytes(storage.join(ckpts, "latest")) == b"step-00000006"
    reference = state_dict(local_copy(storage.join(run, "model"), tmp_path / "model-a"))
    metrics = storage.read_json(storage.join(run, "metrics.json"))["train"]
    assert [e["step"] for e in metrics["eval"]] == [3, 6]
    assert storage.exists(storage.join(run, "loss_curve.png"))

    # A crash after step 4 committed: the final model and step 6 are gone, and a half-written
    # step-6 checkpoint (no _COMMITTED marker) is left behind. It must be ignored.
    storage.remove(storage.join(run, "model"))
    storage.remove(storage.join(ckpts, "step-00000006"))
    partial = storage.download(storage.join(ckpts, "step-00000004"), tmp_path / "partial")
    (partial / "_COMMITTED").unlink()
    storage.upload(partial, storage.join(ckpts, "step-00000006"))
    out = cli("train", "-q", "-c", str(job)).stdout
    assert "resumed from step 4" in out
    resumed = state_dict(local_copy(storage.join(run, "model"), tmp_path / "model-b"))
    assert resumed.keys() == reference.keys()
    different = [k for k in reference if not torch.equal(reference[k], resumed[k])]
    assert different == [], f"resumed run diverged in {different[:5]}"

    out = cli("evaluate", "-q", "-c", str(job)).stdout
    assert "f1=" in out and "PER" in out
    evaluated = storage.read_json(storage.join(run, "metrics.json"))["evaluate"]
    assert evaluated["examples"] == 24 and 0.0 <= evaluated["overall_f1"] <= 1.0
    assert evaluated["overall_f1"] == pytest.approx(metrics["final_eval"]["overall_f1"])
    inputs = evaluated["inputs"]  # what produced these metrics
    assert inputs["dataset"] == storage.join(datasets_root, key) and inputs["split"] == "validation"
    assert (inputs["examples"], inputs["model"], inputs["trained_steps"]) == (24, storage.join(run, "model"), 6)

    # a dataset made with another tokenizer (here: one token more) is refused, and metrics.json is kept
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    other = AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))
    other.add_tokens(["<other>"])
    other.save_pretrained(tmp_path / "other-tokenizer")
    cli("preprocess", "-q", "-c", str(job), "--set", f"model.name={tmp_path / 'other-tokenizer'}")
    refused = cli("evaluate", "-q", "-c", str(job), "--set", f"model.name={tmp_path / 'other-tokenizer'}", check=False)
    assert refused.returncode == 3 and "tokenized with another tokenizer" in refused.stderr, refused.stderr
    assert storage.read_json(storage.join(run, "metrics.json"))["evaluate"] == evaluated

    mine = storage.join(s3_env, "mine", "predictions.jsonl")
    cli("predict", "-c", str(job), "--input", "Peter Blackburn flew to Brussels.", "--out", mine)
    lines = storage.read_bytes(mine).decode().splitlines()
    assert len(lines) == 1 and isinstance(json.loads(lines[0])["output"], list)
    assert not storage.exists(storage.join(run, "predictions.jsonl"))  # your inputs never go to the run's file
    out = cli("predict", "-c", str(job), "--input", "Peter Blackburn flew to Brussels.").stdout  # no --out: stdout
    assert [json.loads(x) for x in out.splitlines()] == [json.loads(x) for x in lines]


@pytest.mark.s3
def test_qa_on_s3_end_to_end(s3_env: str, tmp_path: Path) -> None:
    job = job_file(tmp_path, "jobs/local/qa.yaml", s3_env, name="qa-e2e",
                   train={"max_steps": 2, "epochs": 1, "batch_size": 4, "eval_every": "never",
                          "save_every": "1", "log_every": 1})
    out = cli("run", "-q", "-c", str(job)).stdout
    assert "EM=" in out and "F1=" in out
    run = storage.join(s3_env, "runs", "qa-e2e")
    metrics = storage.read_json(storage.join(run, "metrics.json"))
    assert metrics["evaluate"]["examples"] == 5 and 0 <= metrics["evaluate"]["f1"] <= 100
    preds = [json.loads(x) for x in storage.read_bytes(storage.join(run, "predictions.jsonl")).decode().splitlines()]
    assert len(preds) == 2
    for p in preds:  # the pipeline's answer is a span of the context it was given
        assert p["input"]["context"][p["output"]["start"]:p["output"]["end"]] == p["output"]["answer"]


def test_two_processes_train_and_distributed_eval_matches_single(tmp_path: Path) -> None:
    root = f"file://{tmp_path / 'store'}"
    job = job_file(tmp_path, "jobs/local/ner.yaml", root, name="ner-ddp",
                   data={"max_train_examples": 40, "max_eval_examples": 25},
                   train={"max_steps": 4, "batch_size": 4, "save_every": "2", "eval_every": "4", "log_every": 1})
    cli("preprocess", "-c", str(job))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "nlpjobs", "train", "-q", "-c", str(job)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4/4 optimizer steps" in proc.stdout
    run = storage.join(root, "runs", "ner-ddp")
    train_metrics = storage.read_json(storage.join(run, "metrics.json"))["train"]
    assert train_metrics["processes"] == 2 and train_metrics["effective_batch"] == 8
    # 25 eval rows over 2 processes: Accelerate pads with duplicates; they must be dropped.
    assert train_metrics["final_eval"]["examples"] == 25
    single = cli("evaluate", "-q", "-c", str(job))
    assert single.returncode == 0
    evaluated = storage.read_json(storage.join(run, "metrics.json"))["evaluate"]
    assert evaluated["examples"] == 25
    for key in ("overall_f1", "overall_accuracy", "overall_precision", "overall_recall"):
        assert evaluated[key] == pytest.approx(train_metrics["final_eval"][key], abs=1e-9)


def test_two_nodes_launch_from_env_static_rendezvous(tmp_path: Path) -> None:
    """Two 'nodes' (processes with the Indexed Job's environment) rendezvous through the master address;
    node 1 starts first and waits for the master's port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = f"file://{tmp_path / 'store'}"
    job = job_file(tmp_path, "jobs/local/ner.yaml", root, name="ner-nodes",
                   data={"max_train_examples": 16, "max_eval_examples": 8},
                   train={"max_steps": 2, "batch_size": 4, "save_every": "never", "eval_every": "never"})
    cli("preprocess", "-c", str(job))
    base = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "NLPJOBS_NNODES": "2", "NLPJOBS_NPROC_PER_NODE": "1",
            "NLPJOBS_MASTER_ADDR": "127.0.0.1", "NLPJOBS_MASTER_PORT": str(port), "NLPJOBS_RDZV_TIMEOUT": "120"}
    cmd = [sys.executable, "-m", "nlpjobs", "train", "-q", "--launch-from-env", "-c", str(job)]
    node1 = subprocess.Popen(cmd, env={**base, "JOB_COMPLETION_INDEX": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    import time

    time.sleep(3)
    node0 = subprocess.run(cmd, env={**base, "JOB_COMPLETION_INDEX": "0"}, capture_output=True, text=True,
                           timeout=600)
    out1, _ = node1.communicate(timeout=600)
    assert node0.returncode == 0, node0.stdout + node0.stderr
    assert node1.returncode == 0, out1
    assert "waiting for master 127.0.0.1" in out1 and "is up" in out1
    metrics = storage.read_json(storage.join(root, "runs", "ner-nodes", "metrics.json"))["train"]
    assert metrics["processes"] == 2 and metrics["steps"] == 2
