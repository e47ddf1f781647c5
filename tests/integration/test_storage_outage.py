"""Object-store and local-disk faults hit the real stages: the SeaweedFS server is stopped in the middle of
a dataset upload and of a checkpoint upload (the client is frozen with SIGSTOP at that point, so the
outage lands mid-operation every time), then restarted or left down; wrong credentials, a missing
bucket and a full scratch disk. The outcome is a completed stage, or a clear error and nothing that
looks complete (no ``_SUCCESS``, no ``_COMMITTED``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clitools import job_file
from s3server import SeaweedServer

pytestmark = [pytest.mark.s3, pytest.mark.slow]
BUCKET = "outage"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A server of this module's own: the tests stop and restart it."""
    srv = SeaweedServer(tmp_path_factory.mktemp("weed-outage"))
    srv.start()
    srv.create_bucket(BUCKET)
    yield srv
    srv.stop(timeout=1)


@pytest.fixture
def up(server: SeaweedServer) -> SeaweedServer:
    if not server.running():
        server.start()
    return server


def _env(server: SeaweedServer, retries: int, backoff: float, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env())
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "NLPJOBS_STORAGE_RETRIES": str(retries), "NLPJOBS_STORAGE_BACKOFF_S": str(backoff),
                "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def _nlpjobs(*args: str) -> list[str]:
    return [sys.executable, "-m", "nlpjobs", *args]


def _keys(server: SeaweedServer, prefix: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _freeze_when(proc: subprocess.Popen[str], server: SeaweedServer, prefix: str, what: str,
                 timeout: float = 300) -> list[str]:
    """Poll the bucket until an object under ``prefix`` appears, then SIGSTOP the client; return the keys
    seen at that moment."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the stage ended before {what} began: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        try:
            if _keys(server, prefix):
                break
        except Exception:  # noqa: BLE001 - listing races with the upload; poll again
            pass
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    return _keys(server, prefix)


def _ner_job(tmp_path: Path, name: str, **sections: dict) -> Path:
    return job_file(tmp_path, "jobs/local/ner.yaml", f"s3://{BUCKET}/{name}", name=name, **sections)


PREPROCESS = {"data": {"max_train_examples": 2000, "max_eval_examples": 200},
              "preprocess": {"num_shards": 64}}  # ~130 objects: the upload takes long enough to freeze in


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "left-down"])
def test_server_stopped_during_dataset_upload(up: SeaweedServer, tmp_path: Path, restart: bool) -> None:
    name = f"pre-{'restart' if restart else 'down'}"
    job = _ner_job(tmp_path, name, **PREPROCESS)
    retries, backoff = (8, 0.5) if restart else (3, 0.2)
    proc = subprocess.Popen(_nlpjobs("preprocess", "-c", str(job)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(up, retries, backoff))
    seen = _freeze_when(proc, up, f"{name}/datasets/", "the dataset upload")
    assert not any(k.endswith(("_SUCCESS", "manifest.json")) for k in seen), "froze too late: already committed"
    up.stop(timeout=1)
    os.kill(proc.pid, signal.SIGCONT)
    if restart:
        time.sleep(3)  # the client meets a dead endpoint and backs off
        up.start()
    out, err = proc.communicate(timeout=300)
    if not restart:
        up.start()
    keys = _keys(up, f"{name}/datasets/")
    if restart:
        assert proc.returncode == 0, err[-3000:]
        assert "retry" in err  # the backoff was logged
        assert sum(k.endswith("_SUCCESS") for k in keys) == 1
        check = subprocess.run(_nlpjobs("preprocess", "-c", str(job)), capture_output=True, text=True,
                               env=_env(up, 3, 0.2), timeout=300)
        assert check.returncode == 0 and "dataset reused" in check.stdout, check.stdout  # verified sizes
    else:
        assert proc.returncode == 4, err[-3000:]
        assert "unreachable after 3 attempts" in err and up.endpoint in err
        assert not any(k.endswith("_SUCCESS") for k in keys)  # partial shards, never a committed dataset
        train = subprocess.run(_nlpjobs("train", "-q", "-c", str(job)), capture_output=True, text=True,
                               env=_env(up, 3, 0.2), timeout=300)
        assert train.returncode == 3 and "incomplete (no _SUCCESS marker)" in train.stderr, train.stderr


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "left-down"])
def test_server_stopped_during_checkpoint_upload(up: SeaweedServer, tmp_path: Path, restart: bool) -> None:
    name = f"ckpt-{'restart' if restart else 'down'}"
    job = _ner_job(tmp_path, name, data={"max_train_examples": 32, "max_eval_examples": 8},
                   train={"max_steps": 4, "batch_size": 4, "save_every": "2", "eval_every": "never"})
    prep = subprocess.run(_nlpjobs("preprocess", "-c", str(job)), capture_output=True, text=True,
                          env=_env(up, 3, 0.2), timeout=300)
    assert prep.returncode == 0, prep.stderr
    retries, backoff = (8, 0.5) if restart else (3, 0.2)
    proc = subprocess.Popen(_nlpjobs("train", "-q", "-c", str(job)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(up, retries, backoff))
    ckpt = f"{name}/runs/{name}/checkpoints/step-00000002/"
    seen = _freeze_when(proc, up, ckpt, "the checkpoint upload")
    assert not any(k.endswith("_COMMITTED") for k in seen), "froze too late: already committed"
    up.stop(timeout=1)
    os.kill(proc.pid, signal.SIGCONT)
    if restart:
        time.sleep(3)
        up.start()
    out, err = proc.communicate(timeout=300)
    if not restart:
        up.start()
    runs = f"{name}/runs/{name}/"
    if restart:
        assert proc.returncode == 0, err[-3000:]
        assert "retry" in err
        keys = _keys(up, runs)
        assert f"{runs}checkpoints/step-00000004/_COMMITTED" in keys and f"{runs}model/_SUCCESS" in keys
    else:
        assert proc.returncode == 4, err[-3000:]
        assert "unreachable after 3 attempts" in err
        keys = _keys(up, runs)
        assert not any(k.endswith(("_COMMITTED", "_SUCCESS")) for k in keys)  # the half upload does not count
        again = subprocess.run(_nlpjobs("train", "-q", "-c", str(job)), capture_output=True, text=True,
                               env=_env(up, 3, 0.2), timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resumed" not in again.stdout  # nothing committed to resume from: a fresh start
        assert f"{runs}model/_SUCCESS" in _keys(up, runs)


@pytest.mark.parametrize(("case", "message"), [
    ("wrong-secret", "access denied"),
    ("unknown-key", "access denied"),
    ("missing-bucket", "bucket does not exist"),
])
def test_credentials_and_bucket(up: SeaweedServer, tmp_path: Path, case: str, message: str) -> None:
    storage_root = f"s3://nlpjobs-no-such-bucket-{os.getpid()}/x" if case == "missing-bucket" else f"s3://{BUCKET}/{case}"
    job = job_file(tmp_path, "jobs/local/ner.yaml", storage_root, data={"max_train_examples": 16, "max_eval_examples": 8})
    extra = {"wrong-secret": {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
             "unknown-key": {"AWS_ACCESS_KEY_ID": "nobody"}}.get(case, {})
    proc = subprocess.run(_nlpjobs("preprocess", "-c", str(job)), capture_output=True, text=True, timeout=300,
                          env=_env(up, 3, 0.2, **extra))
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if case != "missing-bucket":
        assert _keys(up, f"{case}/") == []


def test_full_scratch_disk(up: SeaweedServer, tmp_path: Path) -> None:
    """NLPJOBS_CACHE on a 2 MiB tmpfs (a private mount namespace): staging the shards runs out of space."""
    if not shutil.which("unshare"):
        pytest.fail("util-linux `unshare` is required for the full-disk test")
    cache = tmp_path / "small-cache"
    cache.mkdir()
    job = _ner_job(tmp_path, "full-disk", data={"max_train_examples": 2000, "max_eval_examples": 200})
    script = 'mount -t tmpfs -o size=2m tmpfs "$NLPJOBS_CACHE" && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh",
                           *_nlpjobs("preprocess", "-c", str(job))], capture_output=True, text=True, timeout=300,
                          env=_env(up, 3, 0.2, NLPJOBS_CACHE=str(cache),
                                   NLPJOBS_PREFETCHED=os.environ["NLPJOBS_CACHE"]))
    assert proc.returncode == 4, proc.stdout + proc.stderr[-3000:]
    assert "no space left" in proc.stderr and "NLPJOBS_CACHE" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(k.endswith("_SUCCESS") for k in _keys(up, "full-disk/"))
