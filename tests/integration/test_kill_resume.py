"""SIGKILL at an arbitrary point of training, then a restart: the run resumes from the newest committed
checkpoint and ends with bit-identical weights to an uninterrupted run (one and two processes), also when
the resumed part crosses an epoch boundary."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from clitools import cli, job_file

pytestmark = pytest.mark.slow
STEPS = 8


def _cmd(job: Path, name: str, processes: int) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else [sys.executable]
    return [*launch, "-m", "nlpjobs", "train", "-q", "-c", str(job), "--set", f"name={name}"]


def _env() -> dict[str, str]:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_then_restart_ends_bit_identical(tmp_path: Path, processes: int) -> None:
    store = tmp_path / "store"
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{store}", name="ref",
                   data={"max_train_examples": 24, "max_eval_examples": 8},  # 6 (1 process) or 3 (2) steps per epoch
                   train={"max_steps": STEPS, "batch_size": 4, "save_every": "2", "eval_every": "never",
                          "log_every": 1, "keep_checkpoints": 10})
    cli("preprocess", "-c", str(job))
    ref = subprocess.run(_cmd(job, "ref", processes), capture_output=True, text=True, timeout=600, env=_env())
    assert ref.returncode == 0, ref.stderr[-3000:]

    # Kill the whole process tree (torchrun and its workers) with SIGKILL once step 4 is committed,
    # i.e. somewhere while step 5 or 6 trains or checkpoints.
    run = store / "runs" / "killed"
    proc = subprocess.Popen(_cmd(job, "killed", processes), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), start_new_session=True)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step-00000004" / "_COMMITTED").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    # torchrun's workers live in their own process groups: kill the whole tree at once, as a node loss would.
    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model" / "_SUCCESS").exists()

    again = subprocess.run(_cmd(job, "killed", processes), capture_output=True, text=True, timeout=600, env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = int((again.stdout + again.stderr).split("resumed from committed checkpoint step ")[1].split()[0])
    assert 4 <= resumed < STEPS
    expected = load_file(str(store / "runs" / "ref" / "model" / "model.safetensors"))
    got = load_file(str(run / "model" / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key} differs after SIGKILL + resume ({processes} process(es))"
