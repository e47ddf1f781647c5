"""The stages behind the CLI: preprocess, predict (train/evaluate live in nlpjobs.train.engine)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nlpjobs import paths, storage
from nlpjobs.config import JobConfig
from nlpjobs.data import shards, sources
from nlpjobs.tasks import get_task


@dataclass
class PreprocessResult:
    uri: str
    manifest: shards.Manifest
    reused: bool
    seconds: float


@contextlib.contextmanager
def tokenizer_threads(enabled: bool) -> Iterator[None]:
    """The fast tokenizer's own threads (Rust, one per core) while preprocessing in one process: the CLI
    turns them off at start so that training's DataLoader workers can fork quietly; the variable is
    restored afterwards (still set, so a later fork stays silent and safe)."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if enabled:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def preprocess(job: JobConfig) -> PreprocessResult:
    """Tokenize the raw data into committed shards, or reuse them when the cache key matches."""
    started = time.time()
    task = get_task(job.task)
    uri = paths.dataset_uri(job, task)
    if storage.exists(storage.join(uri, shards.SUCCESS)):
        return PreprocessResult(uri, shards.open_dataset(uri), True, time.time() - started)
    storage.probe_writable(job.storage)  # credentials, bucket and reachability before the tokenization
    tokenizer = task.load_tokenizer(job)
    raw = sources.load_raw(job.data, job.train.seed)
    # datasets.map workers (num_proc > 1) fork: the tokenizer must not have started threads before that.
    with tokenizer_threads(job.preprocess.num_proc == 1):
        prepared = task.prepare(job, raw, tokenizer)
    if prepared.tokenizer is not None:  # trained on the raw data by prepare()
        tokenizer = prepared.tokenizer
    tok_dir = storage.cache_dir() / "staging" / f"tokenizer-{uuid.uuid4().hex[:8]}"
    tokenizer.save_pretrained(str(tok_dir))
    manifest = {
        "task": job.task,
        "cache_key": uri.rsplit("/", 1)[-1],
        "source": dataclasses.asdict(job.data),
        "tokenizer": {"name": job.model.name, "revision": job.model.revision,
                      "class": type(tokenizer).__name__, "vocab_size": len(tokenizer)},
        "params": dataclasses.asdict(job.preprocess),
        "raw_rows": {split: len(ds) for split, ds in raw.items()},
        "info": prepared.info,
    }
    try:
        written = shards.write_dataset(uri, prepared.splits, num_shards=job.preprocess.num_shards,
                                       manifest=manifest, tokenizer_dir=tok_dir)
    finally:
        shutil.rmtree(tok_dir, ignore_errors=True)
    return PreprocessResult(uri, written, False, time.time() - started)


def predict(job: JobConfig, inputs: list[Any]) -> tuple[list[Any], str]:
    """Run the trained model through the task's pipeline; write predictions.jsonl to the run."""
    from nlpjobs.train.engine import fetch_model

    task = get_task(job.task)
    model_dir = fetch_model(job)
    outputs = task.predict(str(model_dir), inputs)
    uri = storage.join(paths.run_uri(job), "predictions.jsonl")
    lines = [json.dumps({"input": x, "output": y}, default=float) for x, y in zip(inputs, outputs)]
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode())
    return outputs, uri
