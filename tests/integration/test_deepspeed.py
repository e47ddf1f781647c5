"""DeepSpeed ZeRO-2 for real: two CPU processes over gloo, against plain DDP and across a resume
(bit-identical, also across an epoch boundary)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clitools import cli, job_file

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.slow


def _torchrun(job: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "nlpjobs", "train", "-q", "-c", str(job), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_zero2_two_processes_matches_ddp_and_resumes_exactly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{store}", name="ner-ds",
                   data={"max_train_examples": 48, "max_eval_examples": 16},
                   train={"max_steps": 4, "batch_size": 4, "grad_accum": 2, "save_every": "2",
                          "eval_every": "never", "log_every": 1, "keep_checkpoints": 5})
    cli("preprocess", "-c", str(job))

    ds = _torchrun(job, "deepspeed.enabled=true", "deepspeed.zero_stage=2")
    assert "4/4 optimizer steps" in ds.stdout
    run = store / "runs" / "ner-ds"
    zero_files = list((run / "checkpoints" / "step-00000004").rglob("*optim_states.pt"))
    assert len(zero_files) == 2, "ZeRO-2 writes one optimizer-state partition per rank"
    ds_weights = _weights(run / "model")

    # Same recipe without DeepSpeed (another run name): ZeRO-2 in fp32 must train the same model.
    _torchrun(job, "name=ner-ddp")
    ddp_weights = _weights(store / "runs" / "ner-ddp" / "model")
    common = set(ds_weights) & set(ddp_weights)
    assert len(common) >= len(ddp_weights) - 1
    for key in common:
        torch.testing.assert_close(ds_weights[key], ddp_weights[key], rtol=1e-4, atol=1e-5, msg=key)

    # Lose the model and the step-4 checkpoint: the rerun resumes from step 2 and ends where it did.
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    resumed = _torchrun(job, "deepspeed.enabled=true", "deepspeed.zero_stage=2")
    assert "resumed from committed checkpoint step 2 of 4" in resumed.stdout + resumed.stderr
    after = _weights(run / "model")
    # 3 optimizer steps per epoch: the resumed run crosses into epoch 1 and must still match bit for bit.
    for key, value in ds_weights.items():
        assert torch.equal(after[key], value), f"{key} differs after resume"

    # Switching DeepSpeed off for the same run would mix two checkpoint formats: refused up front.
    mixed = subprocess.run([sys.executable, "-m", "nlpjobs", "train", "-q", "-c", str(job)],
                           capture_output=True, text=True, timeout=300)
    assert mixed.returncode == 2 and "deepspeed" in mixed.stderr
