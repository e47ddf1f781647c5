"""Where a job's tokenized dataset lives: ``<storage>/datasets/<task>/<cache key>/``.

The cache key hashes everything that determines the tokenized output: the task, the data source and what its
inputs are now (for ``files:`` sources, each split file's name, size and modification time or ETag, so that an
edited file is tokenized again instead of reused; for ``hub:`` sources, the commit sha data.revision resolves
to, so that a dataset updated on the Hub is tokenized again), the tokenizer, every preprocessing parameter and
the preprocessing code's version.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nlpjobs import __version__, storage
from nlpjobs.config import JobConfig
from nlpjobs.data.sources import input_fingerprint
from nlpjobs.paths import cache_key


def dataset_key(job: JobConfig, task: Any) -> str:
    """Cache key: task, data source and its inputs, tokenizer, every preprocessing parameter, code version."""
    data = dataclasses.asdict(job.data)
    inputs = input_fingerprint(job.data)
    if "hub_commit" in inputs:  # the commit the revision resolved to replaces it: main at X is X pinned
        del data["revision"]
    return cache_key({
        "task": job.task,
        "data": data,
        **({"inputs": inputs} if inputs else {}),
        "tokenizer": {"name": job.model.name, "revision": job.model.revision},
        "preprocess": {k: v for k, v in dataclasses.asdict(job.preprocess).items() if k != "num_proc"},
        "seed": job.train.seed if job.data.max_train_examples else None,
        "code": f"{__version__}/{task.name}-{task.preprocess_version}",
    })


def dataset_uri(job: JobConfig, task: Any) -> str:
    return storage.join(job.storage, "datasets", job.task, dataset_key(job, task))
