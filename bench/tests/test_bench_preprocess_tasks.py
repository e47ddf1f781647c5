"""The preprocessing cases of mlm, translation, summarization and clm (bench.preprocess): on a small
slice of each offline preset, the course's map functions and nlpjobs' prepare() give the same model inputs,
and ``compare`` notices an altered course output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest

from bench.common import Sizes
from bench.course import course_mlm_fns
from bench.preprocess import CASES
from nlpjobs.tasks.mlm import group_flat

TASKS = ("mlm", "translation", "summarization", "clm")
SMALL = Sizes(repeats=1, mlm_reviews=12, translation_pairs=300, summarization_examples=150, clm_files=4)


@pytest.fixture(scope="module", autouse=True)
def no_datasets_cache() -> Iterator[None]:
    """Map results are recomputed, never written next to the offline corpora."""
    enabled = datasets.is_caching_enabled()
    datasets.disable_caching()
    yield
    if enabled:
        datasets.enable_caching()


def _bump_first_token(ds: datasets.Dataset) -> datasets.Dataset:
    """``ds`` with the last input id of its first row changed."""
    def bump(row: dict[str, Any], i: int) -> dict[str, Any]:
        ids = list(row["input_ids"])
        if i == 0:
            ids[-1] += 1
        return {"input_ids": ids}

    return ds.map(bump, with_indices=True)


@pytest.mark.parametrize("task_name", TASKS)
def test_course_and_prepare_give_the_same_model_inputs(task_name: str, tmp_path: Path) -> None:
    from nlpjobs.tasks import get_task

    case = CASES[task_name](SMALL, tmp_path)
    prepared = get_task(task_name).prepare(case.job, case.raw, case.tokenizer)
    theirs = case.course(case.raw)
    assert set(theirs) == {"train", "eval"} and all(len(ds) > 0 for ds in theirs.values())
    assert case.compare(prepared, theirs) is None
    assert case.note and case.examples > 0

    altered = {**theirs, "eval": _bump_first_token(theirs["eval"])}
    difference = case.compare(prepared, altered)
    assert difference is not None and difference.startswith("eval")
    shorter = {**theirs, "train": theirs["train"].select(range(len(theirs["train"]) - 1))}
    assert case.compare(prepared, shorter) is not None


def test_course_group_texts_matches_nlpjobs() -> None:
    _, course_group = course_mlm_fns(tokenizer=None, chunk_size=4)
    batch = {"input_ids": [[101, 5, 6, 102], [101, 7, 102]], "attention_mask": [[1, 1, 1, 1], [1, 1, 1]],
             "word_ids": [[None, 0, 1, None], [None, 0, None]]}
    ours = group_flat(np.array([101, 5, 6, 102, 101, 7, 102], np.int32), 4, batch["word_ids"])
    assert course_group(batch) == {k: v if k == "word_ids" else v.tolist() for k, v in ours.items()}
    assert ours["input_ids"].tolist() == [[101, 5, 6, 102]] == ours["labels"].tolist()  # remainder dropped
