"""Where a job's tokenized dataset lives: ``<storage>/datasets/<task>/<cache key>/``.

The cache key hashes everything that determines the tokenized output: the task, the data source and what its
input files are now (for ``files:`` sources, each split file's name, size and modification time or ETag, so
that an edited file is tokenized again instead of reused), the tokenizer, every preprocessing parameter and
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
