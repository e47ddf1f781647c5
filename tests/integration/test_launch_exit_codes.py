"""The training pod's launcher for real (torch.distributed.run in the pod's process): the pod exits with its
workers' meaningful code, so the chart's failure policy can tell bad input (never retried) from a crash
(restarted), and rank 0's rendezvous honours the launch timeout the chart sets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _launch(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NLPJOBS_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "nlpjobs", "train", "--launch-from-env", "-q", "-c", str(ROOT / "jobs/local/ner.yaml"),
         "--set", f"storage=file://{tmp_path}", "--set", "name=launch"],
        env={**base, "NLPJOBS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **env},
        capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - started


def test_the_pod_exits_with_the_workers_bad_data_code_not_torchruns_1(tmp_path: Path) -> None:
    """Two workers fail with exit 3 (no preprocessed dataset): the pod exits 3, so a FailJob rule on exit code 3
    stops the run at once instead of retrying it."""
    proc, _ = _launch(tmp_path, NLPJOBS_NPROC_PER_NODE="2", NLPJOBS_MASTER_PORT=str(_free_port()))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: bad data" in proc.stderr
    assert "workers failed" in proc.stderr and "exit 3" in proc.stderr


def test_rank_0_waits_for_its_peers_only_as_long_as_the_launch_timeout(tmp_path: Path) -> None:
    """Rank 0 of two nodes with no peer gives up after NLPJOBS_RDZV_TIMEOUT (here 5 s), not torch's 600 s
    default, and says so in one line with the launch exit code."""
    proc, seconds = _launch(tmp_path, NLPJOBS_NNODES="2", NLPJOBS_MASTER_ADDR="127.0.0.1",
                            NLPJOBS_MASTER_PORT=str(_free_port()), NLPJOBS_RDZV_TIMEOUT="5", JOB_COMPLETION_INDEX="0")
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert seconds < 120
    assert "error: launch:" in proc.stderr and "Traceback" not in proc.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
