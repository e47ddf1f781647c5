"""Where each stage reads and writes on object storage.

``<storage>/runs/<name>/`` holds a run's job record, checkpoints, model, metrics and predictions; a committed
tokenized dataset is ``<storage>/datasets/<task>/<cache key>/`` (``nlpjobs.data.location``, which also reads
the inputs the key follows) (docs/design.md, "Storage layout").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nlpjobs import storage
from nlpjobs.config import JobConfig


def cache_key(payload: dict[str, Any]) -> str:
    """Hash of everything that determines the tokenized output."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def run_uri(job: JobConfig) -> str:
    return storage.join(job.storage, "runs", job.name)


def model_uri(job: JobConfig) -> str:
    return storage.join(run_uri(job), "model")
