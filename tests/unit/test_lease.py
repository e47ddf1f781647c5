"""One trainer per run: the lease on object storage (nlpjobs.train.lease), with a simulated clock, and two real
`nlpjobs train` processes on one run name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nlpjobs.train.lease import LEASE, LeaseHeld, RunLease

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """Time that moves only when something sleeps; ``on_sleep`` runs at each sleep (the other trainer's move)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.on_sleep = lambda: None

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.on_sleep()


def _lease(run: Path, clock: Clock, ttl: float = 30) -> RunLease:
    return RunLease(f"file://{run}", ttl_s=ttl, clock=clock, sleep=clock.sleep, settle_s=0.5)


def _holder(run: Path) -> dict:
    return json.loads((run / LEASE).read_text())


def test_a_free_run_is_taken_and_released(tmp_path: Path) -> None:
    clock = Clock()
    lease = _lease(tmp_path, clock).acquire()
    try:
        assert _holder(tmp_path)["id"] == lease.owner["id"] and _holder(tmp_path)["pid"] == os.getpid()
    finally:
        lease.release()
    assert not (tmp_path / LEASE).exists()


def test_a_live_holder_keeps_its_run(tmp_path: Path) -> None:
    clock = Clock()
    other = _lease(tmp_path, clock)
    other._write()  # noqa: SLF001 - the other trainer's heartbeat, renewed whenever time passes
    clock.on_sleep = other._write  # noqa: SLF001
    with pytest.raises(LeaseHeld, match="is being trained by .* Wait for it to finish, stop it, or choose another run"):
        _lease(tmp_path, clock).acquire()
    assert _holder(tmp_path)["id"] == other.owner["id"]  # untouched


def test_a_dead_holders_lease_is_taken_over_once_stale(tmp_path: Path) -> None:
    clock = Clock()
    dead = _lease(tmp_path, clock)
    dead._write()  # noqa: SLF001 - written once, never renewed: its pod was SIGKILLed
    clock.now += 5
    lease = _lease(tmp_path, clock).acquire()
    try:
        assert _holder(tmp_path)["id"] == lease.owner["id"]
        assert clock.now - 1_000 >= 30  # it waited for the lease to go stale, no longer than that
        assert clock.now - 1_000 < 45
    finally:
        lease.release()


def test_two_trainers_racing_for_a_free_run(tmp_path: Path) -> None:
    clock = Clock()
    other = _lease(tmp_path, clock)
    clock.on_sleep = other._write  # noqa: SLF001 - overwrites ours between our write and our read-back
    with pytest.raises(LeaseHeld, match="took its lease at the same moment"):
        _lease(tmp_path, clock).acquire()


def test_a_second_train_on_a_run_in_use_is_refused(tmp_path: Path) -> None:
    """A real trainer holds the run (renewing its lease every second here); `nlpjobs train` on the same run
    name stops with exit 2 before loading anything, and the holder's lease is kept."""
    run = tmp_path / "store" / "runs" / "shared"
    sets = ["--set", f"storage=file://{tmp_path / 'store'}", "--set", "name=shared",
            "--set", "data.max_train_examples=16", "--set", "data.max_eval_examples=8"]
    job = ["-q", "-c", str(ROOT / "jobs/local/ner.yaml"), *sets]
    subprocess.run([sys.executable, "-m", "nlpjobs", "preprocess", *job], check=True, capture_output=True, timeout=300)
    holder = RunLease(f"file://{run}", ttl_s=3, settle_s=0.2).acquire()
    try:
        proc = subprocess.run([sys.executable, "-m", "nlpjobs", "train", *job], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "NLPJOBS_LEASE_TTL_S": "3"})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "error: run in use: run 'shared' is being trained by" in proc.stderr and "Traceback" not in proc.stderr
        assert _holder(run)["id"] == holder.owner["id"]
    finally:
        holder.release()
