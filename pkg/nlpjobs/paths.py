"""Where each stage reads and writes on object storage.

``<storage>/datasets/<task>/<cache key>/`` holds a committed tokenized dataset; ``<storage>/runs/<name>/`` a
run's job record, checkpoints, model, metrics and predictions (docs/design.md, "Storage layout").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from nlpjobs import __version__, storage
from nlpjobs.config import JobConfig


def cache_key(payload: dict[str, Any]) -> str:
    """Hash of everything that determines the tokenized output."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def dataset_key(job: JobConfig, task: Any) -> str:
    """Cache key: task, data source, tokenizer, every preprocessing parameter and the code version."""
    data = dataclasses.asdict(job.data)
    return cache_key({
        "task": job.task,
        "data": data,
        "tokenizer": {"name": job.model.name, "revision": job.model.revision},
        "preprocess": {k: v for k, v in dataclasses.asdict(job.preprocess).items() if k != "num_proc"},
        "seed": job.train.seed if job.data.max_train_examples else None,
        "code": f"{__version__}/{task.name}-{task.preprocess_version}",
    })


def dataset_uri(job: JobConfig, task: Any) -> str:
    return storage.join(job.storage, "datasets", job.task, dataset_key(job, task))


def run_uri(job: JobConfig) -> str:
    return storage.join(job.storage, "runs", job.name)


def model_uri(job: JobConfig) -> str:
    return storage.join(run_uri(job), "model")
