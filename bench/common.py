"""Helpers shared by the figure modules: presets, progress lines, timing, sizes."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def repo_root() -> Path:
    """The source checkout: ``bench/`` sits beside ``jobs/``, ``pkg/`` and ``tests/``."""
    return Path(__file__).resolve().parents[1]


def importable_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the checkout on PYTHONPATH, so that ``python -m bench.<module>`` subprocesses import this
    package wherever they start."""
    root = str(repo_root())
    current = env.get("PYTHONPATH", "")
    if root not in current.split(os.pathsep):
        env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (root, current) if p)}
    return env


def load_preset(task: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The task's offline preset (jobs/local/<task>.yaml) with ``--set``-style overrides."""
    from nlpjobs.jobfile import load_job

    return load_job(repo_root() / "jobs" / "local" / f"{task}.yaml", list(overrides))


def log(message: str) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def short(text: str, limit: int = 300) -> str:
    """The first line of an error, at most ``limit`` characters (the full text goes to the log)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[:limit - 1] + "…"


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall-clock seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def timed_median(fn: Callable[[], T], min_seconds: float = 0.5, max_calls: int = 50,
                 min_calls: int = 3) -> tuple[T, float, int]:
    """``fn()`` called until ``min_seconds`` have passed (at least ``min_calls``, at most ``max_calls`` calls):
    the last result, the median seconds per call and the number of calls. For short figures, where one call
    mostly measures timer, cache and neighbour noise."""
    seconds: list[float] = []
    while len(seconds) < min_calls or (sum(seconds) < min_seconds and len(seconds) < max_calls):
        result, t = timed(fn)
        seconds.append(t)
    return result, statistics.median(seconds), len(seconds)


@dataclass
class Sizes:
    """How much work each figure does; ``quick`` shrinks everything to a smoke run."""

    repeats: int = 3
    ner_train_examples: int | None = None
    """NER training sentences preprocessed (None: the whole CoNLL-2003 train split, 14,041)."""
    ner_eval_examples: int | None = None
    """NER validation sentences preprocessed (None: all 3,250)."""
    qa_examples: int = 400
    """QA examples (the 5 SQuAD sample questions replicated with distinct ids) per split."""
    mlm_reviews: int = 400
    """MLM: IMDb training reviews preprocessed (a quarter as many eval reviews)."""
    translation_pairs: int = 6000
    """Translation: KDE en→fr pairs preprocessed (the eval pairs are carved out of them)."""
    summarization_examples: int = 3000
    """Summarization: Debian descriptions drawn for training (those with a title of >= 3 words are kept), and
    a fifteenth as many eval descriptions (at most the preset's eval_sample, 200)."""
    clm_files: int = 60
    """CLM: training Python files preprocessed (plus the preset's 12 eval files); code tokenizes slowly."""
    qa_postproc_examples: int = 500
    """Examples whose random logits QA post-processing turns into answers."""
    train_steps: int = 40
    """Optimizer steps per training run (the first step is excluded from the throughput)."""
    learning_rate: float | None = None
    """Learning rate of both engines (None: the course's 2e-5)."""
    train_batch_size: int = 8
    """Per-device batch of both engines (the course's Trainer default)."""
    train_examples: int = 2000
    """Training sentences of the training figure's dataset."""
    eval_examples: int = 300
    """Evaluation examples behind the metric reported beside the training throughput."""
    scale_examples: int = 4000
    """Largest of the three NER training sizes of the scale figure (a quarter and half of it are the others)."""
    storage_mb: int = 256
    """Approximate size of the shards read back in the storage figure."""
    generation_examples: int = 200
    """Eval examples generated for and scored by both engines in the seq2seq generation figure."""
    batch_predict_rows: int = 2000
    """CoNLL-2003 training sentences predicted by nlpjobs' batch prediction and by the plain pipeline loop."""
    matmul_size: int = 1024
    preprocess_min_seconds: float = 1.5
    """Each preprocessing implementation runs until this long has passed within a repeat (one call for the
    slower tasks, a few for QA or MLM, whose calls take 0.3-0.5 s on 2 cores); its time is the median call."""

    @classmethod
    def quick(cls) -> Sizes:
        return cls(repeats=1, ner_train_examples=1000, ner_eval_examples=200, qa_examples=50, mlm_reviews=100, translation_pairs=1000,
                   summarization_examples=500, clm_files=12,
                   qa_postproc_examples=100, train_steps=6, train_examples=200, eval_examples=50, storage_mb=8, scale_examples=400,
                   generation_examples=32, matmul_size=512, preprocess_min_seconds=0.0, batch_predict_rows=200)
