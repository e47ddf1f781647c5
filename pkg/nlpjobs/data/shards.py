"""Sharded Arrow datasets on object storage, committed with a manifest and a ``_SUCCESS`` marker.

Layout::

    <root>/datasets/<task>/<cache-key>/manifest.json
                                       _SUCCESS                       (written last)
                                       attempt-<id>/tokenizer/...     (the exact tokenizer used)
                                       attempt-<id>/<split>/shard-00000-of-00002.arrow

Shards are Arrow IPC streams, the format ``datasets`` memory-maps. Each write goes to a fresh
``attempt-<id>/`` prefix; it becomes the dataset only when manifest.json (naming that attempt) and
then ``_SUCCESS`` are written. A prefix without ``_SUCCESS`` does not exist.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from nlpjobs import __version__, storage

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DatasetError(RuntimeError):
    """A dataset prefix that is missing, incomplete or inconsistent with its manifest."""


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}/shard-{index:05d}-of-{total:05d}.arrow"


def _write_arrow(ds: datasets.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = ds.with_format("arrow")[:] if len(ds) else ds.data.table.slice(0, 0)
    if isinstance(table, pa.Table):
        table = table.combine_chunks()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)


def _count_tokens(ds: datasets.Dataset) -> int:
    for column in ("attention_mask", "input_ids"):
        if column in ds.column_names:
            col = ds.data.table.column(column)
            if column == "attention_mask":
                import pyarrow.compute as pc

                return int(pc.sum(pc.list_flatten(col)).as_py() or 0)
            import pyarrow.compute as pc

            return int(pc.sum(pc.list_value_length(col)).as_py() or 0)
    return 0


@dataclass
class Manifest:
    uri: str
    data: dict[str, Any]

    @property
    def splits(self) -> dict[str, Any]:
        return self.data["splits"]

    @property
    def info(self) -> dict[str, Any]:
        return self.data.get("info", {})

    @property
    def tokenizer_uri(self) -> str:
        return storage.join(self.uri, self.data.get("attempt", ""), "tokenizer")

    def rows(self, split: str) -> int:
        return int(self.splits[split]["rows"])


def write_dataset(
    uri: str,
    splits: dict[str, datasets.Dataset],
    *,
    num_shards: int,
    manifest: dict[str, Any],
    tokenizer_dir: Path | None = None,
    scratch: Path | None = None,
) -> Manifest:
    """Write ``splits`` as shards under ``uri`` and commit them (manifest, then ``_SUCCESS``)."""
    for name, ds in splits.items():
        if len(ds) == 0:
            raise DatasetError(f"split {name!r} is empty after preprocessing; nothing would be trained or "
                               "evaluated. Check the source split names and filters (data.max_*_examples).")
    scratch = Path(scratch or storage.cache_dir() / "staging" / uuid.uuid4().hex)
    if scratch.exists():
        shutil.rmtree(scratch)
    split_info: dict[str, Any] = {}
    for name, ds in splits.items():
        n = min(num_shards, len(ds))
        shards = []
        for i in range(n):
            part = ds.shard(num_shards=n, index=i, contiguous=True)
            rel = shard_name(name, i, n)
            _write_arrow(part, scratch / rel)
            shards.append({"file": rel, "rows": len(part), "bytes": (scratch / rel).stat().st_size})
        split_info[name] = {"rows": len(ds), "tokens": _count_tokens(ds), "columns": ds.column_names,
                            "shards": shards}
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, scratch / "tokenizer")
    # Shards go to a fresh attempt prefix; nothing under it counts until manifest.json (which names
    # the attempt) and then _SUCCESS are written at the top. No copy or rename is needed on S3.
    attempt = f"attempt-{uuid.uuid4().hex[:12]}"
    for info in split_info.values():
        for shard in info["shards"]:
            shard["file"] = f"{attempt}/{shard['file']}"
    body = {**manifest, "format": FORMAT_VERSION, "code_version": __version__, "attempt": attempt,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "splits": split_info}

    storage.remove(storage.join(uri, SUCCESS))  # never leave an old marker beside new shards
    storage.upload(scratch, storage.join(uri, attempt))
    result = Manifest(uri, body)
    _verify(result)
    storage.write_json(storage.join(uri, MANIFEST), body)
    storage.write_bytes(storage.join(uri, SUCCESS), b"")
    for name in storage.listdir(uri):  # earlier interrupted attempts
        if name.startswith("attempt-") and name != attempt:
            storage.remove(storage.join(uri, name))
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def _verify(manifest: Manifest) -> None:
    for split, info in manifest.splits.items():
        for shard in info["shards"]:
            shard_uri = storage.join(manifest.uri, shard["file"])
            if not storage.exists(shard_uri):
                raise DatasetError(f"dataset {manifest.uri} is corrupted: split {split!r} shard {shard['file']} "
                                   "listed in manifest.json is missing. Delete the prefix and rerun "
                                   "`nlpjobs preprocess`.")
            got = storage.size(shard_uri)
            if got != shard["bytes"]:
                raise DatasetError(f"dataset {manifest.uri} is corrupted: shard {shard['file']} has {got} bytes, "
                                   f"manifest.json says {shard['bytes']}. Delete the prefix and rerun "
                                   "`nlpjobs preprocess`.")


def open_dataset(uri: str, verify: bool = True) -> Manifest:
    """Open a committed dataset; raise DatasetError when it is absent or incomplete."""
    if not storage.exists(storage.join(uri, SUCCESS)):
        if storage.exists(storage.join(uri, MANIFEST)) or storage.listdir(uri):
            raise DatasetError(f"dataset {uri} is incomplete (no {SUCCESS} marker): an earlier preprocess was "
                               "interrupted. Rerun `nlpjobs preprocess`; it replaces the partial prefix.")
        raise DatasetError(f"no dataset at {uri}. Run `nlpjobs preprocess` with the same config first.")
    try:
        data = storage.read_json(storage.join(uri, MANIFEST))
    except storage.StorageError as exc:
        if "not valid JSON" not in str(exc):
            raise
        raise DatasetError(f"dataset {uri} is corrupted: {exc}. Delete the prefix and rerun `nlpjobs preprocess`.") \
            from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or "splits" not in data:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{uri}/{MANIFEST}: unknown manifest format {found!r}; "
                           "rerun `nlpjobs preprocess` with this version of nlpjobs.")
    manifest = Manifest(uri, data)
    if verify:
        _verify(manifest)
    return manifest


def local_mirror(manifest: Manifest) -> Path:
    return storage.cache_dir() / "datasets" / manifest.data.get("cache_key", "unknown")


DOWNLOAD_THREADS = 8


def _local_copy(manifest: Manifest, shard: dict[str, Any]) -> Path:
    """Where a shard is read from: in place on file://, in the local mirror for remote storage."""
    src = storage.join(manifest.uri, shard["file"])
    if src.startswith("file://") or "://" not in src:
        return Path(storage.resolve(src)[1])
    return local_mirror(manifest) / shard["file"]


def _download_shard(manifest: Manifest, shard: dict[str, Any], local: Path) -> None:
    tmp = local.with_suffix(f".part-{uuid.uuid4().hex[:6]}")
    storage.download_file(storage.join(manifest.uri, shard["file"]), tmp)
    tmp.replace(local)


def load_split(manifest: Manifest, split: str) -> datasets.Dataset:
    """Memory-map one split, mirroring its shards to local disk first when they are remote."""
    if split not in manifest.splits:
        raise DatasetError(f"dataset {manifest.uri} has no split {split!r}; it has {sorted(manifest.splits)}")
    shards = manifest.splits[split]["shards"]
    locals_ = [_local_copy(manifest, shard) for shard in shards]
    remote = "://" in manifest.uri and not manifest.uri.startswith("file://")
    missing = [(shard, local) for shard, local in zip(shards, locals_)
               if remote and (not local.exists() or local.stat().st_size != shard["bytes"])]
    if missing:  # remote shards: several requests in flight, each retried on its own
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(missing))) as pool:
            list(pool.map(lambda item: _download_shard(manifest, *item), missing))
    parts = []
    for shard, local in zip(shards, locals_):
        src = storage.join(manifest.uri, shard["file"])
        if local.stat().st_size != shard["bytes"]:
            raise DatasetError(f"shard {src} has {local.stat().st_size} bytes, manifest.json says {shard['bytes']}; "
                               "the dataset is corrupted. Delete it and rerun `nlpjobs preprocess`.")
        ds = datasets.Dataset.from_file(str(local))
        if len(ds) != shard["rows"]:
            raise DatasetError(f"shard {src} has {len(ds)} rows, manifest.json says {shard['rows']}; "
                               "the dataset is corrupted. Delete it and rerun `nlpjobs preprocess`.")
        parts.append(ds)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_tokenizer(manifest: Manifest) -> Any:
    """The exact tokenizer preprocess used, stored beside the shards."""
    from transformers import AutoTokenizer

    uri = manifest.tokenizer_uri
    if uri.startswith("file://") or "://" not in uri:
        _, path = storage.resolve(uri)
        return AutoTokenizer.from_pretrained(path)
    local = local_mirror(manifest) / "tokenizer"
    if not local.exists():
        tmp = local.with_name(f"tokenizer.part-{uuid.uuid4().hex[:6]}")
        storage.download(uri, tmp)
        tmp.replace(local)
    return AutoTokenizer.from_pretrained(str(local))
