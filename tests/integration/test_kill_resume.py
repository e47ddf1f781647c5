"""Preemption and crashes never lose work: SIGKILL and SIGTERM at arbitrary points of training, then
restarts, end with bit-identical weights and the same evaluation history as an uninterrupted run.

Each test chains several interruptions of one run, as a job preempted more than once would see:

- one process: SIGTERM while loading (exit 143, nothing to save), SIGTERM to the whole process group
  while training with a DataLoader worker (checkpoint at the next step, exit 143), SIGKILL of the tree
  after a later checkpoint (resume crosses an epoch boundary), then the finishing run;
- one process, Ctrl-C to the whole foreground group: a checkpoint, exit 130, then the resuming run;
- two processes (torchrun): SIGTERM to torchrun alone, as the pod's init forwards it, in the middle of
  an evaluation (the evaluation is abandoned, the step is committed with the evaluation pending and run
  first on resume), then SIGKILL of the tree, then the finishing run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from clitools import cli, job_file

pytestmark = pytest.mark.slow
STEPS = 8


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NER on 24 sentences: 6 optimizer steps per epoch with one process, 3 with two; a checkpoint every
    2 steps, an evaluation every 4 on 96 sentences in batches of 2 (long enough to be interrupted)."""
    tmp = tmp_path_factory.mktemp("kill-resume")
    path = job_file(tmp, "jobs/local/ner.yaml", f"file://{tmp / 'store'}", name="ref",
                    data={"max_train_examples": 24, "max_eval_examples": 96},
                    train={"max_steps": STEPS, "batch_size": 4, "save_every": "2", "eval_every": "4",
                           "log_every": 1, "keep_checkpoints": 10, "num_workers": 1},
                    evaluate={"batch_size": 2})
    cli("preprocess", "-c", str(path))
    return path


def _store(job: Path) -> Path:
    return job.parent / "store"


def _cmd(job: Path, name: str, processes: int, quiet: bool = True) -> list[str]:
    """One process: ``nlpjobs train``; several: the training pod's launcher (``--launch-from-env``, torchrun's
    agent in the launcher's process) with ``processes`` workers."""
    launch = ["--launch-from-env"] if processes > 1 else []
    return [sys.executable, "-m", "nlpjobs", "train", *launch, *(["-q"] if quiet else []), "-c", str(job),
            "--set", f"name={name}"]


def _env(processes: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NLPJOBS_") or k == "NLPJOBS_CACHE"}
    # a SIGKILLed trainer leaves its run's lease behind: the next one takes it over once stale (4 s here)
    return {**env, "TOKENIZERS_PARALLELISM": "false", "NLPJOBS_NPROC_PER_NODE": str(processes),
            "NLPJOBS_MASTER_PORT": str(_free_port()), "NLPJOBS_LEASE_TTL_S": "4",
            "NLPJOBS_PROGRESS_INTERVAL_S": "0"}  # every step's bar line: the test waits for a given step


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Run:
    """A training process whose merged output is collected in the background."""

    def __init__(self, cmd: list[str], processes: int = 1) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(processes),
                                     start_new_session=True)
        self.output = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            self.output += chunk.decode(errors="replace")

    def wait_until(self, condition, what: str, timeout: float = 300) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the run ended before {what}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.output[-3000:]}"
            time.sleep(0.02)

    def catches_sigterm(self) -> bool:
        """SIGTERM (15) is in the process's caught-signal mask: the train command installed its handler."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    def kill_tree(self) -> None:
        """SIGKILL torchrun/the trainer and every descendant at once, as a node loss would."""
        tree = [self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))]
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def finish(self, timeout: float = 300) -> int:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return self.proc.returncode


def _committed(run: Path) -> list[str]:
    return sorted(p.parent.name for p in (run / "checkpoints").glob("step-*/_COMMITTED"))


def _reference(job: Path, processes: int) -> Path:
    name = f"ref-{processes}"
    proc = subprocess.run(_cmd(job, name, processes), capture_output=True, text=True, timeout=600,
                          env=_env(processes))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _store(job) / "runs" / name


def _assert_same_run(got: Path, expected: Path) -> None:
    a = load_file(str(expected / "model" / "model.safetensors"))
    b = load_file(str(got / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(b[key], value), f"{key} differs from the uninterrupted run"
    evals = [json.loads((run / "metrics.json").read_text())["train"]["eval"] for run in (expected, got)]
    assert [e["step"] for e in evals[0]] == [4, 8]
    assert evals[1] == evals[0]  # every evaluation happened once, with the same result


def test_one_process_sigterm_loading_sigterm_group_sigkill(job: Path) -> None:
    expected = _reference(job, 1)
    run = _store(job) / "runs" / "chain-1"

    # 1. SIGTERM while the trainer is still importing/loading: exit 143 at once, nothing committed.
    first = Run(_cmd(job, "chain-1", 1))
    first.wait_until(first.catches_sigterm, "the SIGTERM handler", timeout=60)
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 143, first.output
    assert "stopped by SIGTERM during loading" in first.output
    assert _committed(run) == []

    # 2. SIGTERM to the whole process group (trainer and its DataLoader worker) while step 3 trains.
    second = Run(_cmd(job, "chain-1", 1))
    second.wait_until(lambda: (run / "checkpoints/step-00000002/_COMMITTED").exists(), "checkpoint 2")
    os.killpg(second.proc.pid, signal.SIGTERM)
    assert second.finish() == 143, second.output
    assert "stopped by SIGTERM during training at optimizer step" in second.output
    assert "DataLoader worker" not in second.output
    interrupted_at = int(second.output.split("at optimizer step ")[1].split(";")[0])
    assert 2 < interrupted_at < STEPS and _committed(run)[-1] == f"step-{interrupted_at:08d}"
    assert not (run / "model/_SUCCESS").exists()

    # 3. SIGKILL after checkpoint 6 (the resumed part crossed the epoch boundary at step 6).
    third = Run(_cmd(job, "chain-1", 1))
    third.wait_until(lambda: (run / "checkpoints/step-00000006/_COMMITTED").exists(), "checkpoint 6")
    third.kill_tree()
    assert third.finish() == -signal.SIGKILL
    assert f"resumed from committed checkpoint step {interrupted_at}" in third.output
    assert not (run / "model/_SUCCESS").exists()

    # 4. The finishing run.
    last = Run(_cmd(job, "chain-1", 1))
    assert last.finish() == 0, last.output
    resumed = int(last.output.split("resumed from committed checkpoint step ")[1].split()[0])
    assert 6 <= resumed < STEPS
    _assert_same_run(run, expected)


def test_two_processes_sigterm_during_evaluation_then_sigkill(job: Path) -> None:
    expected = _reference(job, 2)
    run = _store(job) / "runs" / "chain-2"

    # 1. SIGTERM to the pod's launcher alone (what the pod's tini forwards) while the evaluation after step 4
    # runs: the workers commit and the pod exits 143, the code of a run stopped to be resumed.
    first = Run(_cmd(job, "chain-2", 2, quiet=False), processes=2)
    first.wait_until(lambda: "evaluate" in first.output.split("| 4/8", 1)[-1] and "| 4/8" in first.output,
                     "the evaluation at step 4")
    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 143, first.output[-3000:]
    assert "stopped by SIGTERM during evaluation at optimizer step 4" in first.output, first.output[-3000:]
    assert _committed(run)[-1] == "step-00000004"
    state = json.loads((run / "checkpoints/step-00000004/trainer_state.json").read_text())
    assert state["history"]["pending_eval"] == 4 and [e["step"] for e in state["history"]["eval"]] == []

    # 2. The pending evaluation runs first; SIGKILL after checkpoint 6 (every process, torchrun included).
    second = Run(_cmd(job, "chain-2", 2), processes=2)
    second.wait_until(lambda: (run / "checkpoints/step-00000006/_COMMITTED").exists(), "checkpoint 6")
    second.kill_tree()
    assert second.finish() == -signal.SIGKILL
    assert "resumed from committed checkpoint step 4" in second.output and "step 4/8 eval" in second.output

    # 3. The finishing run.
    last = Run(_cmd(job, "chain-2", 2), processes=2)
    assert last.finish() == 0, last.output
    assert "resumed from committed checkpoint step 6" in last.output
    _assert_same_run(run, expected)


def test_ctrl_c_commits_a_checkpoint_and_the_rerun_resumes_it(job: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the foreground group: the trainer and its DataLoader worker) stops as
    SIGTERM does, with the shell's code for Ctrl-C; before this, it lost every step since the last checkpoint."""
    expected = _reference(job, 1)
    run = _store(job) / "runs" / "ctrl-c"

    first = Run(_cmd(job, "ctrl-c", 1))
    first.wait_until(lambda: (run / "checkpoints/step-00000002/_COMMITTED").exists(), "checkpoint 2")
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.finish() == 130, first.output
    assert "Ctrl-C again aborts at once" in first.output
    assert "Traceback" not in first.output and "DataLoader worker" not in first.output
    stopped = first.output.split("error: stopped by Ctrl-C (SIGINT) during ", 1)[1]
    interrupted_at = int(stopped.split("at optimizer step ")[1].split(";")[0])
    assert 2 < interrupted_at < STEPS and _committed(run)[-1] == f"step-{interrupted_at:08d}", first.output
    assert "Rerun the same command to resume" in stopped

    last = Run(_cmd(job, "ctrl-c", 1))
    assert last.finish() == 0, last.output
    assert f"resumed from committed checkpoint step {interrupted_at}" in last.output
    _assert_same_run(run, expected)
