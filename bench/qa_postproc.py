"""QA post-processing time: nlpjobs' vectorised ``postprocess_predictions`` against the course's per-feature,
per-candidate loop on the same logits, with identical predictions asserted.

Both start where evaluation has the logits: nlpjobs from its eval features dataset (offsets as ``-1``) and
the examples, reading the columns as ``QaTask.evaluate`` does; the course from its own validation features
dataset (offsets as ``None``, built by its ``preprocess_validation_examples``) and the raw examples, reading
them row by row as its ``compute_metrics`` does. The metric call itself (identical for both) is not timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from bench.common import Sizes, load_preset, log, timed_median
from bench.course import course_compute_predictions, course_qa_eval_fn
from bench.records import Sample


def nlpjobs_predictions(start_logits: np.ndarray, end_logits: np.ndarray, features: datasets.Dataset,
                        examples: datasets.Dataset, n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """What ``QaTask.evaluate`` does after collecting the logits: read the columns, post-process."""
    from nlpjobs.tasks.qa import predict_answers

    columns = examples.select_columns(["id", "context"]).with_format("arrow")[:].to_pydict()
    return predict_answers(start_logits, end_logits, features, columns, n_best, max_answer_length)


LOGIT_GAP = 10.0
"""How much lower the random logits are outside the context."""


@dataclass
class QaInputs:
    """Features of both recipes for the same examples, and one pair of random logits for them."""

    examples: datasets.Dataset
    ours: datasets.Dataset
    course: datasets.Dataset
    start: np.ndarray
    end: np.ndarray
    n_best: int
    max_answer_length: int


def build_inputs(n_examples: int, seed: int = 0) -> QaInputs:
    """The SQuAD sample's eval examples (jobs/local/qa.yaml) replicated to ``n_examples`` with distinct ids,
    featurised by nlpjobs and by the course, with standard-normal float32 logits of shape [features, 384]."""
    from bench.preprocess import replicate_qa
    from nlpjobs.data import sources
    from nlpjobs.tasks import get_task, qa_features

    job = load_preset("qa")
    cfg, ecfg = job.preprocess, job.evaluate
    tokenizer = get_task("qa").load_tokenizer(job)
    examples = replicate_qa(sources.load_raw(job.data, job.train.seed)["eval"], n_examples)
    ours = examples.map(lambda b: qa_features.prepare_eval_features(b["id"], b["question"], b["context"], tokenizer,
                                                                    cfg.max_length, cfg.stride),
                        batched=True, remove_columns=examples.column_names)
    course = examples.map(course_qa_eval_fn(tokenizer, cfg.max_length, cfg.stride), batched=True,
                          remove_columns=examples.column_names)
    if ours["example_id"] != course["example_id"]:
        raise RuntimeError("nlpjobs and course QA features disagree on the feature -> example mapping")
    rng = np.random.default_rng(seed)
    shape = (len(ours), cfg.max_length)
    # Like a trained model's: positions outside the context (question, special tokens, padding) score
    # LOGIT_GAP lower, so the top-n_best candidates fall in the context as they do in real evaluation.
    outside = np.asarray(ours["offset_mapping"])[:, :, 0] < 0
    start = (rng.standard_normal(shape, dtype=np.float32) - LOGIT_GAP * outside).astype(np.float32)
    end = (rng.standard_normal(shape, dtype=np.float32) - LOGIT_GAP * outside).astype(np.float32)
    return QaInputs(examples, ours, course, start, end, ecfg.n_best, ecfg.max_answer_length)


def _check(ours: dict[str, str], theirs: list[dict[str, str]]) -> int:
    course = {p["id"]: p["prediction_text"] for p in theirs}
    differ = [k for k in course if ours.get(k) != course[k]]
    if differ or set(ours) != set(course):
        raise AssertionError(f"qa post-processing: nlpjobs and the course differ on {len(differ)} of "
                             f"{len(course)} examples, e.g. {differ[:3]}")
    return len(course)


def measure(sizes: Sizes, scratch: Path) -> list[Sample]:
    """Post-processing time of both on the same logits, ``sizes.repeats`` times, predictions compared.

    Two figures: starting from the feature/example datasets (what evaluation does), and the algorithms
    alone (columns read beforehand: NumPy arrays for nlpjobs, row dicts for the course).
    """
    from nlpjobs.tasks.qa_features import postprocess_predictions

    datasets.disable_progress_bars()
    d = build_inputs(sizes.qa_postproc_examples)
    log(f"qa post-processing: {len(d.examples):,} examples, {len(d.ours):,} features x "
        f"{d.start.shape[1]} positions, n_best {d.n_best}, {sizes.repeats} repeat(s)")
    offsets = np.asarray(d.ours["offset_mapping"])
    ids = list(d.ours["example_id"])
    columns = {"id": list(d.examples["id"]), "context": list(d.examples["context"])}
    course_rows, example_rows = d.course.to_list(), d.examples.to_list()
    note = (f"identical predictions on {len(d.examples):,} examples / {len(d.ours):,} features, checked every "
            f"repeat; random normal logits, {LOGIT_GAP:g} lower outside the context; each time the median of "
            "repeated calls (at least 3, until 0.5 s)")
    samples = []
    for r in range(sizes.repeats):
        ours, t_ours, n_ours = timed_median(lambda: nlpjobs_predictions(d.start, d.end, d.ours, d.examples, d.n_best,
                                                                        d.max_answer_length))
        theirs, t_course, n_course = timed_median(lambda: course_compute_predictions(
            d.start, d.end, d.course, d.examples, d.n_best, d.max_answer_length))
        n = _check(ours, theirs)
        core, t_core, n_core = timed_median(lambda: postprocess_predictions(d.start, d.end, ids, offsets, columns,
                                                                            d.n_best, d.max_answer_length))
        loop, t_loop, n_loop = timed_median(lambda: course_compute_predictions(d.start, d.end, course_rows,
                                                                               example_rows, d.n_best,
                                                                               d.max_answer_length))
        _check(core, loop)
        log(f"qa post-processing repeat {r + 1}/{sizes.repeats} (median of {n_ours}/{n_course}/{n_core}/{n_loop} "
            f"calls): from datasets: nlpjobs {t_ours * 1000:.1f} ms, course {t_course * 1000:.1f} ms; algorithms "
            f"alone: nlpjobs {t_core * 1000:.1f} ms, course {t_loop * 1000:.1f} ms; predictions identical ({n} examples)")
        samples += [
            Sample("qa", "post-processing from datasets (as evaluate) vs course compute_metrics", "ms",
                   t_ours * 1000, t_course * 1000, False,
                   note=note + "; includes reading offsets/ids from the feature dataset (metric call excluded)"),
            Sample("qa", "post-processing algorithm alone vs course loop", "ms", t_core * 1000, t_loop * 1000,
                   False, note="columns read beforehand (NumPy arrays and lists / Python row dicts)"),
        ]
    return samples
