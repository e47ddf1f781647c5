"""Shared fixtures. Keep this generic: task-specific fixtures belong next to their tests.

- ``_isolated_cache`` (autouse, session): NLPJOBS_CACHE -> a session tmp dir, never ~/.cache.
- ``fast_storage_retries``: storage.RETRIES/BACKOFF_S small, for tests that expect failures.
- ``s3_server`` (session): one real SeaweedFS server with bucket ``nlpjobs-test``.
- ``s3_env``: AWS_* variables pointing at it, storage caches reset; yields a unique s3:// root.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/s3server.py is importable as `s3server`

from isolation import _isolated_cache  # noqa: E402,F401  (autouse: registered by the import)
from s3server import SeaweedServer  # noqa: E402

S3_BUCKET = "nlpjobs-test"


@pytest.fixture
def fast_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few, short storage retries (storage reads NLPJOBS_STORAGE_* at import time: patch the module)."""
    from nlpjobs import storage

    monkeypatch.setenv("NLPJOBS_STORAGE_RETRIES", "3")
    monkeypatch.setenv("NLPJOBS_STORAGE_BACKOFF_S", "0.05")
    monkeypatch.setattr(storage, "RETRIES", 3)
    monkeypatch.setattr(storage, "BACKOFF_S", 0.05)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS server for the whole session, with the bucket ``nlpjobs-test``."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket(S3_BUCKET)
        yield server
    finally:
        server.stop(timeout=1)  # data is thrown away: no need to wait out the ~15 s graceful stop


@pytest.fixture
def s3_env(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """AWS_* env for ``s3_server`` (storage caches reset); yields ``s3://nlpjobs-test/<unique prefix>``."""
    from nlpjobs import storage

    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # no ~/.aws config or credentials files may override what the server expects
    monkeypatch.setenv("AWS_CONFIG_FILE", str(s3_server.workdir / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(s3_server.workdir / "no-aws-credentials"))
    storage.reset()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:60]
    yield f"s3://{S3_BUCKET}/{slug}-{uuid.uuid4().hex[:8]}"
    storage.reset()


#: Test files that take minutes (end-to-end runs, multi-process training), slowest file first. With
#: `--dist loadfile --no-loadscope-reorder` (the Makefile) each worker takes whole files in collection order
#: (xdist would otherwise start the files with the most tests first): starting these first keeps one of
#: them from starting last and running alone while the other worker idles.
SLOW_FILES_FIRST = ("test_pipeline.py", "test_storage_outage.py", "test_kill_resume.py", "test_mlm_e2e.py",
                    "test_batch_predict_e2e.py", "test_clm_e2e.py", "test_deepspeed.py",
                    "test_seq2seq_e2e.py")  # ~540 s ... ~120 s per file


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the slow files first (a stable sort: the order inside each file is kept)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FILES_FIRST.index(name) if name in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

    items.sort(key=rank)
