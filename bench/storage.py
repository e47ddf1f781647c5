"""Shard read throughput: the same committed shards read through nlpjobs.storage from a real SeaweedFS S3
server (started here, as the test suite does) and from local disk.

The shards are nlpjobs' own NER training features (jobs/local/ner.yaml), repeated until they reach the
requested size, written with ``shards.write_dataset`` to both places.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import Sizes, load_preset, log, repo_root, short, timed
from bench.records import Sample

BUCKET = "nlpjobs-bench"
MB = 1_000_000


@contextlib.contextmanager
def seaweed(workdir: Path) -> Iterator[Any]:
    """A SeaweedFS server (tests/s3server.py) with bucket ``nlpjobs-bench``; AWS_* point at it meanwhile."""
    from nlpjobs import storage

    tests = repo_root() / "tests"
    if not (tests / "s3server.py").is_file():
        raise RuntimeError(f"{tests / 's3server.py'} not found: the storage figure needs the source checkout")
    sys.path.insert(0, str(tests))
    try:
        from s3server import SeaweedServer
    finally:
        sys.path.remove(str(tests))
    server = SeaweedServer(workdir.resolve())
    server.start()
    saved = {k: os.environ.get(k) for k in (*server.env(), "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                                            "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
    try:
        for k in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(k, None)
        os.environ.update(server.env(), AWS_CONFIG_FILE=str(workdir / "no-aws-config"),
                          AWS_SHARED_CREDENTIALS_FILE=str(workdir / "no-aws-credentials"))
        storage.reset()
        server.create_bucket(BUCKET)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.reset()
        server.stop(timeout=1)  # its data is thrown away: no need to wait out the graceful stop


def build_splits(target_mb: int) -> dict[str, Any]:
    """nlpjobs' NER training features, concatenated with themselves to about ``target_mb`` MB of Arrow."""
    import datasets

    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task

    datasets.disable_progress_bars()
    job = load_preset("ner")
    task = get_task("ner")
    prepared = task.prepare(job, sources.load_raw(job.data, job.train.seed), task.load_tokenizer(job))
    train = prepared.splits["train"].flatten_indices()
    copies = max(1, round(target_mb * MB / max(train.data.nbytes, 1)))
    return {"train": datasets.concatenate_datasets([train] * copies).flatten_indices()}


def evict(*roots: Path) -> None:
    """Drop every file under ``roots`` from the page cache (posix_fadvise DONTNEED: no root needed), so the
    next read comes from the disk."""
    for root in roots:
        for path in [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file()):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _shard_uris(manifest: Any) -> list[tuple[str, int]]:
    from nlpjobs import storage

    return [(storage.join(manifest.uri, s["file"]), int(s["bytes"])) for s in manifest.splits["train"]["shards"]]


def _read_all(manifest: Any) -> int:
    """Read every train shard's bytes through nlpjobs.storage; the bytes read."""
    from nlpjobs import storage

    total = 0
    for uri, size in _shard_uris(manifest):
        data = storage.read_bytes(uri)
        if len(data) != size:
            raise RuntimeError(f"{uri}: read {len(data)} bytes, manifest says {size}")
        total += len(data)
    return total


def _load_split(manifest: Any) -> int:
    """``shards.load_split`` as training runs it (S3: download to the local mirror; then memory-map), then
    one pass over every value of every column, so that the memory-mapped bytes are really read; the rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from nlpjobs.data import shards

    ds = shards.load_split(manifest, "train")
    for column in ds.data.table.columns:
        values = pc.list_flatten(column) if pa.types.is_list(column.type) else column
        pc.sum(values) if pa.types.is_integer(values.type) else pc.count(values)
    return len(ds)


def measure(sizes: Sizes, scratch: Path) -> list[Sample]:
    """MB/s of reading the same shards from S3 and from local disk, ``sizes.repeats`` times."""
    from nlpjobs import storage
    from nlpjobs.data import shards

    figures = ("shard read via storage.read_bytes: S3 vs local disk",
               "train split load (shards.load_split + every column read): S3 vs local disk",
               "shard read via storage.read_bytes, cold page cache: S3 vs local disk",
               "train split load, cold page cache: S3 vs local disk")
    try:
        splits = build_splits(sizes.storage_mb)
    except Exception as exc:  # noqa: BLE001 - a figure that cannot run is reported, not fatal
        return [Sample("ner", f, "MB/s", None, None, True, note=f"not measured: {short(str(exc))}")
                for f in figures]
    num_shards = max(1, sizes.storage_mb // 8)
    local_root = f"file://{scratch / 'storage-local'}"
    manifest_body = {"task": "ner", "cache_key": f"bench-{os.getpid()}", "info": {}}
    local = shards.write_dataset(storage.join(local_root, "ds"), splits, num_shards=num_shards,
                                 manifest=manifest_body)
    total_mb = sum(b for _, b in _shard_uris(local)) / MB
    log(f"storage: {total_mb:.1f} MB in {num_shards} shard(s) of NER features; starting SeaweedFS")
    samples: list[Sample] = []
    try:
        with seaweed(scratch / "seaweed") as server:
            remote = shards.write_dataset(f"s3://{BUCKET}/ds", splits, num_shards=num_shards, manifest=manifest_body)
            log(f"storage: SeaweedFS at {server.endpoint} (started in {server.start_seconds:.1f}s), shards uploaded")
            mirror = shards.local_mirror(remote)
            local_dir = scratch / "storage-local"
            for r in range(sizes.repeats):
                _read_all(remote)  # both copies in the page cache (and the connections open)
                _read_all(local)
                _, t_s3 = timed(lambda: _read_all(remote))
                _, t_local = timed(lambda: _read_all(local))
                shutil.rmtree(mirror, ignore_errors=True)  # a cold mirror: load_split must download
                _, t_s3_load = timed(lambda: _load_split(remote))
                _, t_local_load = timed(lambda: _load_split(local))
                evict(local_dir, server.data_dir)
                _, t_s3_cold = timed(lambda: _read_all(remote))
                evict(local_dir, server.data_dir)
                _, t_local_cold = timed(lambda: _read_all(local))
                shutil.rmtree(mirror, ignore_errors=True)
                evict(local_dir, server.data_dir)
                _, t_s3_load_cold = timed(lambda: _load_split(remote))
                evict(local_dir, server.data_dir)
                _, t_local_load_cold = timed(lambda: _load_split(local))
                log(f"storage repeat {r + 1}/{sizes.repeats}: read_bytes S3 {total_mb / t_s3:,.0f} MB/s, local "
                    f"{total_mb / t_local:,.0f} MB/s; load_split S3 {total_mb / t_s3_load:,.0f} MB/s, local "
                    f"{total_mb / t_local_load:,.0f} MB/s; cold read_bytes S3 {total_mb / t_s3_cold:,.0f} MB/s, "
                    f"local {total_mb / t_local_cold:,.0f} MB/s; cold load_split S3 "
                    f"{total_mb / t_s3_load_cold:,.0f} MB/s, local {total_mb / t_local_load_cold:,.0f} MB/s")
                note = (f"{total_mb:.1f} MB in {num_shards} shards; S3 = local SeaweedFS over loopback; local reads "
                        "hit the page cache (the shards were just written)")
                samples += [
                    Sample("ner", figures[0], "MB/s", total_mb / t_s3, total_mb / t_local, True, note=note),
                    Sample("ner", figures[1], "MB/s", total_mb / t_s3_load, total_mb / t_local_load, True,
                           note="S3: download to the local mirror, verify sizes and rows, memory-map; local: "
                                "verify and memory-map in place"),
                    Sample("ner", figures[2], "MB/s", total_mb / t_s3_cold, total_mb / t_local_cold, True,
                           note="before each read the local shards and SeaweedFS's volume files are dropped from "
                                "the page cache (posix_fadvise DONTNEED), so both read the same disk"),
                    Sample("ner", figures[3], "MB/s", total_mb / t_s3_load_cold, total_mb / t_local_load_cold, True,
                           note="what a fresh training pod does: S3 shards downloaded "
                                f"{shards.DOWNLOAD_THREADS} at a time to an empty local mirror, local shards "
                                "memory-mapped; both from disk (page cache dropped as above), every column read"),
                ]
            shutil.rmtree(mirror, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001
        log(f"storage: not measured: {exc}")
        samples.append(Sample("ner", figures[0], "MB/s", None, None, True, note=f"not measured: {short(str(exc))}"))
    finally:
        shutil.rmtree(scratch / "storage-local", ignore_errors=True)
    return samples
