"""Scaling of NER preprocessing: throughput at three data sizes (nlpjobs ``prepare()`` beside the course's map,
so a per-example cost that grows with size shows), and 2 worker processes (``preprocess.num_proc=2``)
against 1 at the largest size. Training with 1 vs 2 processes is not measured here yet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets

from nlpjobs.bench.common import Sizes, log, timed
from nlpjobs.bench.records import Sample


def measure(sizes: Sizes, scratch: Path) -> list[Sample]:
    """``sizes.repeats`` repeats over ``sizes.scale_examples`` // 4, // 2 and all of it (training sentences,
    plus a quarter as many eval sentences)."""
    from nlpjobs.bench.preprocess import ner_case
    from nlpjobs.tasks import get_task

    datasets.disable_caching()
    datasets.disable_progress_bars()
    largest = sizes.scale_examples
    case = ner_case(dataclasses.replace(sizes, ner_train_examples=largest, ner_eval_examples=None), scratch)
    task = get_task("ner")
    train = case.raw["train"]
    steps = [max(1, largest // 4), max(1, largest // 2), len(train)]
    two = dataclasses.replace(case.job, preprocess=dataclasses.replace(case.job.preprocess, num_proc=2))
    log(f"scale: NER preprocessing at {', '.join(f'{n:,}' for n in steps)} training sentences; "
        f"num_proc 2 vs 1 at {steps[-1]:,}; {sizes.repeats} repeat(s)")

    def subset(n: int) -> datasets.DatasetDict:
        """``n`` training sentences and a quarter as many eval sentences."""
        n_eval = min(len(case.raw["eval"]), max(1, n // 4))
        return datasets.DatasetDict({"train": train.select(range(n)), "eval": case.raw["eval"].select(range(n_eval))})

    full = subset(steps[-1])
    total = sum(len(ds) for ds in full.values())
    samples: list[Sample] = []
    for r in range(sizes.repeats):
        for n in steps:
            raw = subset(n)
            count = len(raw["train"]) + len(raw["eval"])
            _, t_ours = timed(lambda raw=raw: task.prepare(case.job, raw, case.tokenizer))
            _, t_course = timed(lambda raw=raw: case.course(raw))
            log(f"scale repeat {r + 1}/{sizes.repeats}: {count:,} examples: prepare() {t_ours:.2f}s, "
                f"course map {t_course:.2f}s")
            samples.append(Sample("ner", f"scale: preprocess {count:,} examples, prepare() vs course map",
                                  "examples/s", count / t_ours, count / t_course, True))
        _, t_one = timed(lambda: task.prepare(case.job, full, case.tokenizer))
        _, t_two = timed(lambda: task.prepare(two, full, case.tokenizer))
        log(f"scale repeat {r + 1}/{sizes.repeats}: {total:,} examples: num_proc 1 {t_one:.2f}s, "
            f"num_proc 2 {t_two:.2f}s")
        samples.append(Sample("ner", f"scale: preprocess {total:,} examples, num_proc 2 vs 1", "examples/s",
                              total / t_two, total / t_one, True,
                              note="nlpjobs against itself: preprocess.num_proc=2 (datasets.map workers) vs 1"))
    samples.append(Sample("ner", "scale: train 2 processes vs 1", "—", None, None, True,
                          note="not measured: not in the benchmark yet (needs a torchrun launch per run)"))
    return samples
