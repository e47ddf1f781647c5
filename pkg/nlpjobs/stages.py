"""The four stages of a run, as the CLI and the chart call them: preprocess, train, evaluate, predict.

Each stage resolves the job's task and reads or writes only object storage (``nlpjobs.paths``); the training
loop itself is ``nlpjobs.train.engine``. The one-batch overfit check lives here too: it uses the task's model
and data as training does, and writes nothing.
"""

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlpjobs import card as model_card
from nlpjobs import paths, storage
from nlpjobs.config import ConfigError, JobConfig
from nlpjobs.data import location, shards, sources
from nlpjobs.tasks import get_task

if TYPE_CHECKING:
    from nlpjobs.train.engine import TrainResult
    from nlpjobs.train.smoke import OverfitResult


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
    uri = location.dataset_uri(job, task)
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


PREDICTIONS = "predictions.jsonl"
"""The run's predictions of the job's ``predict.inputs`` (written by ``run`` and by ``predict`` without inputs)."""


def check_inputs(job: JobConfig, inputs: list[Any], names: list[str]) -> None:
    """Every input must fit the task's pipeline: PredictInputError names the first bad one (``names[i]``)
    and what was expected, before any model is loaded."""
    get_task(job.task).check_predict_inputs(inputs, names)


def check_output(target: str) -> str:
    """The URI predictions of ``target`` (a local path, file:// or s3:// URI) go to, checked writable before
    the model loads: its directory is created (or its prefix probed) now, so a bad ``--out`` costs no
    inference. ConfigError for another scheme or a directory target; StorageError when it cannot be written."""
    scheme = target.split("://", 1)[0] if "://" in target else "file"
    if scheme not in ("file", "s3"):
        raise ConfigError(f"--out {target!r}: unknown storage scheme {scheme!r}; give a local path, file://<path> "
                          "or s3://<bucket>/<key>")
    uri = storage.normalize(target)
    if uri.endswith("/") or target.endswith("/") or uri.count("/") < 3:
        raise ConfigError(f"--out {target!r}: names a directory; give a file name, e.g. {target.rstrip('/')}/"
                          "predictions.jsonl")
    if scheme == "file":
        path = Path(storage.resolve(uri)[1])
        if path.is_dir():
            raise ConfigError(f"--out {target!r} is a directory; give a file name, e.g. {path}/predictions.jsonl")
    storage.probe_writable(uri.rsplit("/", 1)[0])
    return uri


def predict(job: JobConfig, inputs: list[Any]) -> list[Any]:
    """The trained model's predictions of ``inputs`` through the task's pipeline; nothing is written.
    PredictInputError names the first input the pipeline cannot take, before the model is fetched."""
    task = get_task(job.task)
    task.check_predict_inputs(inputs)
    model_dir = fetch_model(job)
    return task.predict(str(model_dir), inputs)


def predictions_jsonl(inputs: list[Any], outputs: list[Any]) -> bytes:
    """One JSON object per line: ``{"input": ..., "output": ...}``."""
    lines = [json.dumps({"input": x, "output": y}, ensure_ascii=False, default=float)
             for x, y in zip(inputs, outputs)]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def predict_run(job: JobConfig) -> tuple[list[Any], str]:
    """Predict the job's ``predict.inputs`` and replace the run's predictions.jsonl with them."""
    inputs = list(job.predict.inputs)
    outputs = predict(job, inputs)
    uri = storage.join(paths.run_uri(job), PREDICTIONS)
    storage.write_bytes(uri, predictions_jsonl(inputs, outputs))
    return outputs, uri


def train(job: JobConfig, show_progress: bool = True) -> TrainResult:
    """Train the job's model on its committed dataset, resuming from the newest committed checkpoint."""
    from nlpjobs.train import engine

    return engine.train(job, get_task(job.task), show_progress)


def evaluate(job: JobConfig, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate the trained model of the run on the eval split (distributed when launched so)."""
    from torch.utils.data import DataLoader

    from nlpjobs.report import update_metrics
    from nlpjobs.train.engine import make_accelerator, model_inputs
    from nlpjobs.train.protocol import EvalContext
    from nlpjobs.train.tracking import record_evaluation

    task = get_task(job.task)
    acc = make_accelerator(job, training=False)
    manifest = shards.open_dataset(location.dataset_uri(job, task))
    model_dir = fetch_model(job, download=acc.is_local_main_process)
    acc.wait_for_everyone()
    tokenizer = shards.load_tokenizer(manifest)
    check_same_tokenizer(tokenizer, model_dir, manifest.uri)
    model = task.load_trained(str(model_dir))
    eval_ds = model_inputs(task, shards.load_split(manifest, "eval"))
    eval_dl = DataLoader(eval_ds, batch_size=job.evaluate.batch_size, collate_fn=task.collator(tokenizer, model))
    model, eval_dl = acc.prepare(model, eval_dl)
    metrics = task.evaluate(EvalContext(acc, job, manifest, tokenizer, show_progress), model, eval_dl)
    if acc.is_main_process:
        metrics["inputs"] = evaluation_inputs(job, manifest, len(eval_ds))
        update_metrics(paths.run_uri(job), "evaluate", metrics)
        record_evaluation(job, paths.run_uri(job), metrics, metrics["inputs"].get("trained_steps") or 0,
                          storage.cache_dir() / "scratch" / job.name)
        # The model card's model-index becomes these metrics (docs/design.md, "The model card").
        model_card.write_evaluation_card(job, task, manifest, metrics, acc.unwrap_model(model))
    return metrics


def check_same_tokenizer(tokenizer: Any, model_dir: Path, dataset_uri: str) -> None:
    """The dataset must be tokenized with the tokenizer the run's model was trained with (exported beside it):
    ids of another vocabulary would be scored without a word, and the metrics would mean nothing."""
    from transformers import AutoTokenizer

    trained = AutoTokenizer.from_pretrained(str(model_dir))
    if len(trained) != len(tokenizer) or trained.get_vocab() != tokenizer.get_vocab():
        raise shards.DatasetError(
            f"the dataset at {dataset_uri} was tokenized with another tokenizer ({type(tokenizer).__name__}, "
            f"{len(tokenizer):,} tokens) than the run's model was trained with ({type(trained).__name__}, "
            f"{len(trained):,} tokens, at {model_dir}); evaluate with the job settings the run was trained with "
            "(model.name and the preprocess section decide the dataset), or train a new run on this dataset")


def evaluation_inputs(job: JobConfig, manifest: shards.Manifest, examples: int) -> dict[str, Any]:
    """What produced a run's evaluation metrics: the dataset, its split, the model and its training steps."""
    run = paths.run_uri(job)
    metrics_uri = storage.join(run, "metrics.json")
    trained = storage.read_json(metrics_uri).get("train", {}) if storage.exists(metrics_uri) else {}
    return {"dataset": manifest.uri, "split": job.data.eval_split, "examples": examples,
            "model": paths.model_uri(job), "trained_steps": trained.get("steps")}


def fetch_model(job: JobConfig, download: bool = True) -> Path:
    """Local directory holding the run's trained model (downloaded when remote and ``download``)."""
    uri = paths.model_uri(job)
    if not storage.exists(storage.join(uri, "_SUCCESS")):
        raise ConfigError(f"no trained model at {uri}: run `nlpjobs train` with the same config first")
    if uri.startswith("file://"):
        return Path(storage.resolve(uri)[1])
    local = storage.cache_dir() / "models" / job.name
    if download:
        if local.exists():
            shutil.rmtree(local)
        storage.download(uri, local)
    return local


def overfit(job: JobConfig, steps: int, ratio: float = 0.5, learning_rate: float | None = None,
            batch_size: int | None = None) -> OverfitResult:
    """Train fresh weights on the first training batch for ``steps`` steps; nothing is written anywhere.

    Passes when the last loss is at most ``ratio`` x the first: the model, collator and loss can learn.
    """
    import torch
    from accelerate.utils import set_seed

    from nlpjobs.train.engine import grouped_parameters, model_inputs
    from nlpjobs.train.smoke import OverfitResult, first_train_batch

    task = get_task(job.task)
    manifest = shards.open_dataset(location.dataset_uri(job, task))
    tokenizer = shards.load_tokenizer(manifest)
    set_seed(job.train.seed)
    model = task.build_model(job, manifest, tokenizer)
    train_ds = model_inputs(task, shards.load_split(manifest, "train"))
    batch = first_train_batch(task, train_ds, tokenizer, model, batch_size or job.train.batch_size)
    optimizer = torch.optim.AdamW(grouped_parameters(model, 0.0), lr=learning_rate or job.train.learning_rate)
    model.train()
    result = OverfitResult(ratio_needed=ratio)
    started = time.time()
    for _ in range(steps):
        loss = task.loss(model, batch)
        loss.backward()
        if job.train.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.detach()))
    result.seconds = time.time() - started
    return result
