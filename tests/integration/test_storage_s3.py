"""nlpjobs.storage and nlpjobs.data.shards against a real S3 server (SeaweedFS, tests/s3server.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import datasets
import pytest

from nlpjobs import paths, storage
from nlpjobs.data import shards
from nlpjobs.data.shards import DatasetError
from nlpjobs.storage import StorageError
from s3server import SeaweedServer

pytestmark = pytest.mark.s3


# -- plain storage operations -------------------------------------------------------------------


def test_bytes_json_exists_size(s3_env: str) -> None:
    blob = storage.join(s3_env, "a", "blob.bin")
    payload = bytes(range(256)) * 40
    assert not storage.exists(blob)
    storage.write_bytes(blob, payload)
    assert storage.exists(blob)
    assert storage.read_bytes(blob) == payload
    assert storage.size(blob) == len(payload)

    doc = storage.join(s3_env, "meta.json")
    obj = {"task": "ner", "rows": 3, "nested": {"labels": ["O", "B-PER"]}, "ratio": 0.5}
    storage.write_json(doc, obj)
    assert storage.read_json(doc) == obj

    storage.write_bytes(storage.join(s3_env, "empty"), b"")
    assert storage.size(storage.join(s3_env, "empty")) == 0
    assert storage.read_bytes(storage.join(s3_env, "empty")) == b""

    storage.write_bytes(storage.join(s3_env, "bad.json"), b"{not json")
    with pytest.raises(StorageError, match="corrupted"):
        storage.read_json(storage.join(s3_env, "bad.json"))

    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(s3_env, "missing.bin"))


def test_listdir(s3_env: str) -> None:
    for rel in ("x.txt", "y.txt", "sub/z.txt", "sub/deeper/w.txt"):
        storage.write_bytes(storage.join(s3_env, rel), rel.encode())
    assert storage.listdir(s3_env) == ["sub", "x.txt", "y.txt"]
    assert storage.listdir(s3_env + "/") == ["sub", "x.txt", "y.txt"]
    assert storage.listdir(storage.join(s3_env, "sub")) == ["deeper", "z.txt"]
    assert storage.listdir(storage.join(s3_env, "nothing-here")) == []
    assert storage.exists(storage.join(s3_env, "sub"))  # a prefix counts as existing


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"a": 1}',
        "weights.bin": bytes(range(256)) * 1000,
        "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        "tokenizer/special/map.json": b"{}",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_upload_download_tree(s3_env: str, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    dst = storage.join(s3_env, "model")
    storage.upload(tmp_path / "src", dst)
    assert storage.listdir(dst) == ["config.json", "empty.txt", "tokenizer", "weights.bin"]
    assert storage.size(storage.join(dst, "weights.bin")) == len(files["weights.bin"])

    out = storage.download(dst, tmp_path / "back")
    assert out == tmp_path / "back"
    assert _read_tree(out) == files

    # single files both ways
    storage.upload(tmp_path / "src" / "config.json", storage.join(s3_env, "single.json"))
    got = storage.download(storage.join(s3_env, "single.json"), tmp_path / "one" / "c.json")
    assert got.read_bytes() == files["config.json"]


def test_download_file(s3_env: str, tmp_path: Path) -> None:
    """One object to a local file: streamed in 1 MiB pieces, an existing file replaced, a missing object
    FileNotFoundError (the shard loader turns it into 'corrupted ... missing')."""
    payload = bytes(range(251)) * 12_000  # 3 MB: several pieces of the stream
    obj = storage.join(s3_env, "shard-00000.arrow")
    storage.write_bytes(obj, payload)
    target = tmp_path / "mirror" / "shard.arrow"
    target.parent.mkdir()
    target.write_bytes(b"stale and longer " * 300_000)
    assert storage.download_file(obj, target) == target
    assert target.read_bytes() == payload
    with pytest.raises(FileNotFoundError):
        storage.download_file(storage.join(s3_env, "no-such-shard.arrow"), tmp_path / "x")
    local = tmp_path / "local.bin"
    local.write_bytes(payload[:1000])
    assert storage.download_file(f"file://{local}", tmp_path / "copy" / "c.bin").read_bytes() == payload[:1000]


def test_copy_tree_and_remove(s3_env: str, tmp_path: Path) -> None:
    files = _make_tree(tmp_path / "src")
    src, dst = storage.join(s3_env, "src"), storage.join(s3_env, "dst")
    storage.upload(tmp_path / "src", src)
    storage.copy_tree(src, dst)
    assert _read_tree(storage.download(dst, tmp_path / "copied")) == files
    assert storage.exists(storage.join(src, "weights.bin"))  # copy, not move

    storage.remove(storage.join(dst, "config.json"))  # one object
    assert not storage.exists(storage.join(dst, "config.json"))
    assert storage.exists(storage.join(dst, "weights.bin"))

    storage.remove(dst)  # a whole prefix
    assert not storage.exists(dst)
    assert storage.listdir(dst) == []
    assert storage.listdir(s3_env) == ["src"]
    storage.remove(dst)  # missing is fine
    storage.remove(storage.join(s3_env, "never-existed.bin"))


# -- sharded datasets ---------------------------------------------------------------------------


@pytest.fixture(params=["s3", "file"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage root on the real S3 server or on local disk (file://)."""
    if request.param == "s3":
        return request.getfixturevalue("s3_env")
    return "file://" + str(tmp_path / "store")


def _token_dataset(rows: int, seed: int) -> datasets.Dataset:
    input_ids, masks, labels = [], [], []
    for i in range(rows):
        n = 3 + (i * 7 + seed) % 11
        ids = [101] + [1000 + (i * 31 + j * 17 + seed) % 5000 for j in range(n - 2)] + [102]
        input_ids.append(ids)
        masks.append([1] * n)
        labels.append([-100] + [(j + i) % 9 for j in range(n - 2)] + [-100])
    return datasets.Dataset.from_dict({"input_ids": input_ids, "attention_mask": masks, "labels": labels})


def _write_small(uri: str, num_shards: int = 3) -> tuple[dict[str, datasets.Dataset], shards.Manifest]:
    splits = {"train": _token_dataset(23, seed=1), "validation": _token_dataset(5, seed=2)}
    key = paths.cache_key({"task": "test", "nonce": uuid.uuid4().hex})
    manifest = shards.write_dataset(uri, splits, num_shards=num_shards,
                                    manifest={"task": "test", "cache_key": key})
    return splits, manifest


def test_dataset_round_trip(root: str) -> None:
    uri = storage.join(root, "datasets", "test", "key1")
    splits, written = _write_small(uri)
    assert storage.exists(storage.join(uri, shards.SUCCESS))
    assert storage.exists(storage.join(uri, shards.MANIFEST))

    manifest = shards.open_dataset(uri)
    assert manifest.data == written.data
    for name, ds in splits.items():
        info = manifest.splits[name]
        assert manifest.rows(name) == len(ds)
        assert info["tokens"] == sum(len(m) for m in ds["attention_mask"])
        assert info["columns"] == ["input_ids", "attention_mask", "labels"]
        assert sum(s["rows"] for s in info["shards"]) == len(ds)
        assert len(info["shards"]) == min(3, len(ds))
        for shard in info["shards"]:
            assert storage.size(storage.join(uri, shard["file"])) == shard["bytes"]

        loaded = shards.load_split(manifest, name)
        assert len(loaded) == len(ds)
        assert loaded.to_dict() == ds.to_dict()
        assert loaded[0]["input_ids"][0] == 101

    if root.startswith("s3://"):  # remote shards are mirrored under NLPJOBS_CACHE, never ~/.cache
        mirror = shards.local_mirror(manifest)
        assert mirror.is_relative_to(storage.cache_dir())
        for shard in manifest.splits["train"]["shards"]:
            assert (mirror / shard["file"]).stat().st_size == shard["bytes"]
        assert not mirror.is_relative_to(Path.home() / ".cache")

    # rewriting the same prefix replaces it: new data, and the old shards are gone
    splits2, _ = _write_small(uri, num_shards=2)
    again = shards.open_dataset(uri)
    assert len(again.splits["train"]["shards"]) == 2
    assert shards.load_split(again, "train").to_dict() == splits2["train"].to_dict()
    old_files = {s["file"] for info in manifest.splits.values() for s in info["shards"]}
    new_files = {s["file"] for info in again.splits.values() for s in info["shards"]}
    for rel in old_files - new_files:
        assert not storage.exists(storage.join(uri, rel)), rel


def test_dataset_incomplete(root: str) -> None:
    uri = storage.join(root, "ds")
    _write_small(uri)
    storage.remove(storage.join(uri, shards.SUCCESS))
    with pytest.raises(DatasetError, match="incomplete"):
        shards.open_dataset(uri)
    with pytest.raises(DatasetError, match="no dataset"):
        shards.open_dataset(storage.join(root, "never-written"))


def test_dataset_shard_deleted(root: str) -> None:
    uri = storage.join(root, "ds")
    _, manifest = _write_small(uri)
    storage.remove(storage.join(uri, manifest.splits["train"]["shards"][1]["file"]))
    with pytest.raises(DatasetError, match="corrupted") as info:
        shards.open_dataset(uri)
    assert "missing" in str(info.value)


def test_dataset_shard_truncated(root: str) -> None:
    uri = storage.join(root, "ds")
    _, manifest = _write_small(uri)
    shard_uri = storage.join(uri, manifest.splits["validation"]["shards"][0]["file"])
    storage.write_bytes(shard_uri, storage.read_bytes(shard_uri)[:-100])
    with pytest.raises(DatasetError, match="corrupted"):
        shards.open_dataset(uri)
    unverified = shards.open_dataset(uri, verify=False)  # the loader checks sizes on its own
    with pytest.raises(DatasetError, match="corrupted"):
        shards.load_split(unverified, "validation")


# -- errors that must be clear ------------------------------------------------------------------


def test_wrong_credentials(s3_env: str, monkeypatch: pytest.MonkeyPatch, fast_storage_retries: None) -> None:
    obj = storage.join(s3_env, "secret.txt")
    storage.write_bytes(obj, b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage.reset()
    for op in (lambda: storage.read_bytes(obj), lambda: storage.write_bytes(obj, b"y"),
               lambda: storage.exists(obj), lambda: storage.listdir(s3_env)):
        with pytest.raises(StorageError, match="access denied"):
            op()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    storage.reset()
    with pytest.raises(StorageError, match="access denied"):
        storage.read_bytes(obj)


def test_missing_bucket(s3_env: str, fast_storage_retries: None) -> None:
    bucket = f"nlpjobs-missing-{uuid.uuid4().hex[:8]}"
    obj = f"s3://{bucket}/some/key.txt"
    for op in (lambda: storage.write_bytes(obj, b"x"), lambda: storage.read_bytes(obj)):
        with pytest.raises(StorageError, match="bucket") as info:
            op()
        assert bucket in str(info.value)


def test_server_down_then_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  fast_storage_retries: None) -> None:
    """A separate server, so the shared one stays up: stop -> bounded failure; restart -> recovery."""
    server = SeaweedServer(tmp_path / "weed")
    server.start()
    try:
        server.create_bucket("restart-test")
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        storage.reset()
        obj = "s3://restart-test/state/data.bin"
        payload = b"survives a restart" * 100
        storage.write_bytes(obj, payload)

        server.stop(timeout=1)
        t0 = time.monotonic()
        with pytest.raises(StorageError) as info:
            storage.read_bytes(obj)
        elapsed = time.monotonic() - t0
        assert server.endpoint in str(info.value)
        assert "unreachable" in str(info.value)
        assert elapsed < 15, f"failing took {elapsed:.1f}s"

        with pytest.raises(StorageError, match="unreachable"):
            storage.download_file(obj, tmp_path / "copy.bin")

        server.restart()
        assert storage.read_bytes(obj) == payload  # same cached filesystem, data persisted
        assert storage.download_file(obj, tmp_path / "copy.bin").read_bytes() == payload
        storage.write_bytes(obj + ".2", b"after")
        assert storage.listdir("s3://restart-test/state") == ["data.bin", "data.bin.2"]
    finally:
        server.stop(timeout=1)
        storage.reset()
