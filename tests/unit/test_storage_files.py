"""file:// storage writes: replaced whole, never seen half-written (a multi-process run's ranks read what
rank 0 writes, e.g. the run's job.json, while it writes it)."""

from __future__ import annotations

import json
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
