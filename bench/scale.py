"""Scaling of NER preprocessing and training.

Preprocessing: throughput at three data sizes (nlpjobs ``prepare()`` beside the course's map, so a
per-example cost that grows with size shows), and 2 worker processes (``preprocess.num_proc=2``) against 1 at
the largest size.

Training: ``nlpjobs train`` launched as a subprocess with 2 processes (``torchrun --standalone``, DDP over
gloo on CPU, as the CLI documents) against 1 plain process, on the same preprocessed data with the same
per-process batch and steps. Each launch runs the CLI through :func:`metered_cli`, which installs the training
figure's meter in every process: steps 1..N are timed (from the first batch) by an optimizer-step hook and their real tokens counted
by a wrapper around the collator; everything before and after the loop is excluded. The run's own
``metrics.json`` is checked for the processes and steps launched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from bench.common import Sizes, importable_env, log, short, timed
from bench.records import Sample
from bench.training import Meter

TRAIN_FIGURE = "scale: train 2 processes vs 1"
TRAIN_TOKENS_FIGURE = "scale: train real tokens/s, 2 processes vs 1"
TRAIN_STEP_FIGURE = "scale: train time per optimizer step, 2 processes vs 1"
TRAIN_STEPS_CAP = 30
"""Steps per training run: ``sizes.train_steps``, at most this (two launches per repeat stay ~3 minutes)."""
LAUNCH_TIMEOUT_S = 900
METER_ENV = "NLPJOBS_BENCH_METER"
"""Path prefix of the per-process meters a training launch writes (``<prefix>.<rank>.json``)."""


def measure(sizes: Sizes, scratch: Path) -> list[Sample]:
    """Preprocessing at three sizes and num_proc 2 vs 1, then training with 2 processes vs 1."""
    samples = measure_preprocess(sizes, scratch)
    try:
        samples += measure_training(sizes, scratch)
    except Exception as exc:  # noqa: BLE001 - keep the preprocessing figures; say why training is missing
        import traceback

        log(f"scale / train failed: {exc!r}\n{traceback.format_exc()}")
        samples.append(Sample("ner", TRAIN_FIGURE, "—", None, None, True,
                              note=f"not measured: {short(f'{type(exc).__name__}: {exc}')}"))
    return samples


def measure_preprocess(sizes: Sizes, scratch: Path) -> list[Sample]:
    """``sizes.repeats`` repeats over ``sizes.scale_examples`` // 4, // 2 and all of it (training sentences,
    plus a quarter as many eval sentences)."""
    from bench.preprocess import ner_case
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
    return samples


# ---- training: 2 processes vs 1 -------------------------------------------------------------------


def train_command(job_path: Path, name: str, steps: int, processes: int) -> list[str]:
    """``nlpjobs train`` of run ``name`` for ``steps`` steps through :func:`metered_cli`: one plain process, or
    torchrun (standalone rendezvous on a free port) for several, as ``nlpjobs --help`` shows."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
              "--max_restarts=0"] if processes > 1 else [sys.executable]
    return [*launch, "-m", "bench.scale", "train", "-q", "-c", str(job_path), "--set", f"name={name}",
            "--set", f"train.max_steps={steps}"]


def threads_per_process(total: int, processes: int) -> int:
    """torch intra-op threads of each process: the ``total`` shared out, at least one each."""
    return max(1, total // processes)


SYNC_ENV = "NLPJOBS_BENCH_SYNC_AT"
"""The optimizer step whose stamp waits for the GPU (``Meter.sync_at``), for the launched processes."""


def train_devices(gpus: int, processes: int = 2) -> tuple[dict[str, str], str]:
    """(environment additions, description) of the device the 1- and 2-process runs both train on: one GPU per
    process where the machine has ``processes`` GPUs, else the CPU for both (GPUs hidden: two processes cannot
    each have one, and 1 GPU against 2 CPU processes would compare devices, not processes)."""
    if gpus >= processes:
        return {}, "one GPU per process, DDP over NCCL"
    hidden = f" (the machine's {gpus} GPU hidden from both runs: {processes} processes need {processes})" if gpus else ""
    return ({"CUDA_VISIBLE_DEVICES": ""} if gpus else {}), f"the CPU, DDP over gloo{hidden}"


def train_env(threads: int, meter_prefix: Path, base: dict[str, str] | None = None, sync_at: int = 0,
              devices: dict[str, str] | None = None) -> dict[str, str]:
    """The subprocess environment: ``threads`` OpenMP/torch threads per process, where the meters go, the step
    whose stamp waits for the GPU (``sync_at``), ``devices`` (:func:`train_devices`)."""
    return importable_env({**(os.environ if base is None else base), "OMP_NUM_THREADS": str(threads), METER_ENV: str(meter_prefix),
            SYNC_ENV: str(sync_at), "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
            **(devices or {})})


def metered_cli(argv: list[str], task: str = "ner") -> None:
    """The ``nlpjobs`` CLI (:func:`nlpjobs.cli.main`) with the training figure's meter installed: every
    optimizer step stamped, every batch's real tokens and rows counted by a wrapper around ``task``'s
    collator. The meter goes to ``$NLPJOBS_BENCH_METER.<RANK>.json`` when the CLI exits."""
    from unittest import mock

    from bench.training import CountingCollator, Meter, step_clock
    from nlpjobs.cli import main
    from nlpjobs.tasks import get_task

    meter = Meter(sync_at=int(os.environ.get(SYNC_ENV) or 0))
    task_cls = type(get_task(task))
    original = task_cls.collator

    def counting(self: Any, tokenizer: Any, model: Any) -> Any:
        return CountingCollator(original(self, tokenizer, model), meter)

    out = Path(f"{os.environ[METER_ENV]}.{os.environ.get('RANK', '0')}.json")
    try:
        with mock.patch.object(task_cls, "collator", counting), step_clock(meter):
            main(args=argv, prog_name="nlpjobs")
    finally:
        out.write_text(json.dumps(dataclasses.asdict(meter)))


@dataclass(frozen=True)
class TrainReport:
    """What a finished run reports about itself (``metrics.json`` -> ``train``)."""

    processes: int
    steps: int
    seconds: float
    """Seconds of ``train()`` on rank 0: accelerator and process group, data, model, the loop, the final
    checkpoint and the model export (not the interpreter start and the imports before it)."""


def read_report(train: dict[str, Any], processes: int, steps: int) -> TrainReport:
    """The run's train record, checked against what was launched."""
    missing = [k for k in ("steps", "seconds", "processes") if k not in train]
    if missing:
        raise RuntimeError(f"the run's metrics.json train record lacks {missing}")
    report = TrainReport(int(train["processes"]), int(train["steps"]), float(train["seconds"]))
    if report.processes != processes or report.steps != steps:
        raise RuntimeError(f"launched {processes} process(es) for {steps} steps; the run reports "
                           f"{report.processes} process(es) and {report.steps} steps")
    return report


@dataclass(frozen=True)
class Throughput:
    """Steps 1..N of one run, all processes together."""

    tokens_per_s: float
    samples_per_s: float
    step_seconds: float


def combine(meters: list[Meter], steps: int) -> Throughput:
    """Throughput of a run from its processes' meters, over the steps ``Meter.throughput`` times (1..``steps``
    from the first batch when recorded, else 2..``steps``): the real tokens and samples of every process's
    batches of those steps, over the slowest process's time."""
    if not meters:
        raise RuntimeError("no process of the run wrote its meter")
    seconds = max(m.throughput(steps)[2] for m in meters)  # raises when a process stamped too few steps
    if seconds <= 0:
        raise RuntimeError(f"{steps} steps took {seconds} s")
    tokens = sum(m.timed(m.tokens, steps) for m in meters)
    samples = sum(m.timed(m.samples, steps) for m in meters)
    return Throughput(tokens / seconds, samples / seconds, seconds / (steps - max(m.first_timed for m in meters)))


def launch(job: Any, job_path: Path, steps: int, processes: int, threads: int,
           devices: dict[str, str] | None = None) -> Throughput:
    """One training launch on a fresh run name, with ``devices`` (:func:`train_devices`); its throughput. The run
    is deleted afterwards."""
    from nlpjobs import paths, storage

    name = f"bench-scale-{processes}p-{uuid.uuid4().hex[:8]}"
    cmd = train_command(job_path, name, steps, processes)
    run_uri = paths.run_uri(dataclasses.replace(job, name=name))
    prefix = job_path.parent / f"meter-{name}"
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=train_env(threads, prefix, sync_at=steps, devices=devices),
                              timeout=LAUNCH_TIMEOUT_S, check=False)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"`{' '.join(cmd[1:])}` exited {proc.returncode}: " + " | ".join(tail))
        report = read_report(storage.read_json(storage.join(run_uri, "metrics.json"))["train"], processes, steps)
        files = [Path(f"{prefix}.{rank}.json") for rank in range(processes)]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise RuntimeError(f"the run wrote no meter {absent}")
        result = combine([Meter(**json.loads(f.read_text())) for f in files], steps)
    finally:
        storage.remove(run_uri)
        shutil.rmtree(storage.cache_dir() / "scratch" / name, ignore_errors=True)
        for f in job_path.parent.glob(f"{prefix.name}.*.json"):
            f.unlink()
    log(f"scale train: {processes} process(es) x {threads} thread(s): {result.tokens_per_s:,.0f} real tokens/s, "
        f"{result.samples_per_s:.1f} samples/s, {result.step_seconds:.3f}s per step (steps 1..{steps} in "
        f"{result.step_seconds * steps:.1f}s); train() {report.seconds:.1f}s by the run's report, "
        f"{wall:.1f}s launch to exit")
    return result


def measure_training(sizes: Sizes, scratch: Path) -> list[Sample]:
    """``sizes.repeats`` repeats of a run with 1 process and one with 2 (which goes first alternates), each
    ``sizes.train_steps`` steps (at most :data:`TRAIN_STEPS_CAP`); real tokens/s, samples/s and time per
    optimizer step of steps 1..N."""
    import torch
    import yaml

    from bench.training import _preprocessed

    steps = min(sizes.train_steps, TRAIN_STEPS_CAP)
    store = scratch / "scale-train-store"
    job, manifest = _preprocessed(dataclasses.replace(sizes, train_steps=steps), store)
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, eval_before_training=False))
    job_path = scratch / "scale-train-job.yaml"
    job_path.write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))
    batch, rows = job.train.batch_size, manifest.rows("train")
    total_threads = torch.get_num_threads()
    devices, where = train_devices(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    threads = {n: threads_per_process(total_threads, n) for n in (1, 2)}
    log(f"scale: NER training, {rows:,} sentences, per-process batch {batch}, {steps} steps per run (1..{steps} "
        f"timed); 1 process x {threads[1]} torch thread(s) vs 2 x {threads[2]}, on {where}; {sizes.repeats} repeat(s)")
    note = (f"nlpjobs against itself, each run an `nlpjobs train` subprocess: 1 process (OMP_NUM_THREADS="
            f"{threads[1]}) vs 2 (`torchrun --standalone --nproc_per_node=2`, OMP_NUM_THREADS="
            f"{threads[2]} each: the bench's {total_threads} torch threads shared out), both on {where}; same data ({rows:,} "
            f"sentences), per-process batch {batch} and {steps} steps, so 2 processes do twice the samples per "
            f"step: samples/s and real tokens/s compare, time per step does not. Steps 2..{steps} timed by an "
            f"optimizer-step hook in every process and real tokens counted by a wrapper around the collator "
            f"(the training figure's meter, installed by `python -m bench.scale`, which runs the nlpjobs "
            f"CLI); process start, imports, process group, data and model load, step 1, the final checkpoint "
            f"and the model export are excluded")
    samples: list[Sample] = []
    try:
        for r in range(sizes.repeats):
            results = {n: launch(job, job_path, steps, n, threads[n], devices) for n in ((1, 2) if r % 2 == 0 else (2, 1))}
            two, one = results[2], results[1]
            samples += [
                Sample("ner", TRAIN_FIGURE, "samples/s", two.samples_per_s, one.samples_per_s, True, note=note),
                Sample("ner", TRAIN_TOKENS_FIGURE, "tokens/s", two.tokens_per_s, one.tokens_per_s, True),
                Sample("ner", TRAIN_STEP_FIGURE, "s/step", two.step_seconds, one.step_seconds, False,
                       note="a 2-process step does twice the samples of a 1-process step"),
            ]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return samples


if __name__ == "__main__":  # the training launches above: `python -m bench.scale train ...`
    metered_cli(sys.argv[1:])
