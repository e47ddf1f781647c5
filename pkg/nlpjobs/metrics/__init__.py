"""Project metrics as local ``evaluate`` modules that load offline.

Each metric lives in ``<dir>/<dir>.py`` next to this file. ``evaluate.load(<absolute dir path>)``
finds the script whose name equals the directory name, copies it into evaluate's modules cache
(``HF_MODULES_CACHE``) and imports it from there, with no Hub access. Because the script is copied
alone, the scripts use absolute imports only (their library imports are checked to be installed).

``load_metric`` caches one module instance per name and process (``functools.cache``, an unbounded
lru_cache; ``load_metric.cache_clear()`` resets it). ``EvaluationModule`` keeps ``add``/``add_batch``
state, so callers sharing it must call ``metric.compute(predictions=..., references=...)`` in one go
(that adds, computes and resets in a single call) and must not share it across threads.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import evaluate

__all__ = ["METRIC_DIRS", "load_metric", "metric_path"]

_HERE = Path(__file__).resolve().parent

#: Public metric name -> directory (under this package) holding ``<dir>/<dir>.py``.
METRIC_DIRS: dict[str, str] = {
    "seqeval": "seqeval_metric",
    "squad": "squad_v1",
    "squad_v2": "squad_v2",
    "sacrebleu": "sacrebleu_metric",
    "rouge": "rouge_metric",
}


def metric_path(name: str) -> Path:
    """Absolute directory of the local evaluate module for ``name``; ValueError for unknown names."""
    try:
        dirname = METRIC_DIRS[name]
    except KeyError:
        raise ValueError(f"Unknown metric {name!r}; expected one of {sorted(METRIC_DIRS)}") from None
    return _HERE / dirname


@cache
def load_metric(name: str, seed: int | None = None) -> evaluate.EvaluationModule:
    """Load the local evaluate module for ``name`` (seqeval, squad, squad_v2, sacrebleu, rouge), offline.

    Cached per process (and seed): use ``compute(predictions=..., references=...)`` directly, not
    ``add_batch``. The module keeps its inputs in memory (no Arrow cache files or locks on disk).
    ``seed``: NumPy's global seed while ``compute`` runs (ROUGE's bootstrap draws from it); None lets
    evaluate take one from the global generator's state at load time, i.e. a different one per process
    unless the process seeded NumPy.
    """
    extra = {} if seed is None else {"seed": seed}
    return evaluate.load(str(metric_path(name)), keep_in_memory=True, **extra)
