"""file:// storage writes: replaced whole, never seen half-written (a multi-process run's ranks read what
rank 0 writes, e.g. the run's job.json, while it writes it)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from nlpjobs import storage


def test_a_failed_write_leaves_the_old_object_and_no_temporary_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"file://{tmp_path}/run/job.json"
    storage.write_json(uri, {"v": 1})

    def refuse(src: object, dst: object) -> None:
        raise PermissionError("read-only volume")

    monkeypatch.setattr(storage.os, "replace", refuse)
    with pytest.raises(storage.StorageError):
        storage.write_json(uri, {"v": 2})
    assert storage.read_json(uri) == {"v": 1}  # not truncated, not half-written
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["job.json"]


def test_readers_never_see_a_partial_file_while_it_is_rewritten(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/metrics.json"
    docs = [{"rows": list(range(n))} for n in (20_000, 40_000)]
    storage.write_json(uri, docs[0])
    done, errors = threading.Event(), []

    def writer() -> None:
        for i in range(60):
            storage.write_json(uri, docs[i % 2])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads < 10:
        try:
            assert storage.read_json(uri) in docs
        except (storage.StorageError, AssertionError) as exc:  # a truncated read
            errors.append(exc)
        reads += 1
    thread.join()
    assert not errors, f"{len(errors)} of {reads} reads saw a partial file: {errors[0]}"
    assert json.loads((tmp_path / "metrics.json").read_text()) == docs[1]


def test_a_local_permission_error_names_the_directory_not_aws_credentials(tmp_path: Path) -> None:
    """The classification itself: runs as root too (where a chmod'ed directory is writable anyway)."""
    target = tmp_path / "store/runs/x/job.json"
    denied = PermissionError(13, "Permission denied", str(tmp_path / "store/runs"))
    text = storage.explain(denied, "writing", f"file://{target}")
    assert text.startswith(f"permission denied writing {target}: check the owner and mode of the directory "
                           f"{tmp_path}")
    assert f"uid {os.geteuid()}" in text and "AWS" not in text
    assert storage.explain(denied, "writing", str(target)).startswith("permission denied writing")  # a plain path


def test_s3_access_denied_still_points_at_the_credentials() -> None:
    text = storage.explain(PermissionError("Access Denied"), "writing", "s3://bucket/run/job.json")
    assert "access denied" in text and "AWS_ACCESS_KEY_ID" in text and "owner and mode" not in text


def test_a_refused_local_write_is_a_storage_error_about_the_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(storage.os, "replace", refuse)
    with pytest.raises(storage.StorageError, match=r"permission denied writing .*/run/job.json: check the owner "
                                                   r"and mode of the directory .*/run \(the process runs as uid"):
        storage.write_json(f"file://{tmp_path}/run/job.json", {"v": 1})


def test_a_store_under_a_regular_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(storage.StorageError, match=r"afile is a file, not a directory"):
        storage.probe_writable(f"file://{tmp_path}/afile/store")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 directory: permissions are not enforced")
def test_an_unwritable_local_store_says_permission_denied(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o500)
    try:
        with pytest.raises(storage.StorageError) as exc:
            storage.probe_writable(f"file://{store}")
    finally:
        store.chmod(0o700)
    assert f"permission denied writing {store}/.nlpjobs-probe-" in str(exc.value)
    assert f"owner and mode of the directory {store} (the process runs as uid {os.geteuid()}" in str(exc.value)
    assert "AWS" not in str(exc.value)
