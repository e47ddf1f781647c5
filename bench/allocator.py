"""nlpjobs on tcmalloc (what the CPU images and ``make run`` preload, :mod:`nlpjobs.train.speed.allocator`) against nlpjobs on
the C library's malloc: one task's ``prepare()`` examples/s and training real tokens/s, on the CPU.

An allocator is chosen when a process starts, so each measurement is a fresh worker process
(``python -m bench.allocator``), with and without ``LD_PRELOAD``, alternating which goes first. The
glibc worker keeps malloc's default settings, as ``nlpjobs`` runs them (the other figures fix its thresholds for
both engines, :func:`bench.machine.steady_allocator`). Each worker reports the allocator it found mapped
into itself, and a run on another allocator than the one launched is an error, not a figure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import Sizes, importable_env, log, timed_median
from bench.records import Sample, scores_metric

PREPARE_FIGURE = "allocator: preprocess prepare(), tcmalloc vs glibc malloc"
TRAIN_FIGURE = "allocator: train real tokens/s, tcmalloc vs glibc malloc"
DEFAULT_TASK = "summarization"
"""The task of a run over all tasks: the one furthest from the preprocessing goal."""
WORKER_TIMEOUT_S = 900


def worker_env(preload: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: ``preload`` as the only preloaded library (None: none), the GPUs hidden."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "LD_PRELOAD"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if preload:
        env["LD_PRELOAD"] = preload
    return importable_env(env)


def run_worker(task: str, sizes: Sizes, scratch: Path, preload: str | None) -> dict[str, Any]:
    """One worker process's measurements (:func:`work`), checked to have run on the allocator launched."""
    expected = "tcmalloc" if preload else "glibc malloc"
    argv = [sys.executable, "-m", "bench.allocator", task, str(scratch), json.dumps(dataclasses.asdict(sizes))]
    proc = subprocess.run(argv, env=worker_env(preload), capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {expected} worker exited {proc.returncode}: {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if result["allocator"] != expected:
        raise RuntimeError(f"launched on {expected} (LD_PRELOAD={preload or 'unset'}) but the worker ran on "
                           f"{result['allocator']}")
    return result


def work(task: str, sizes: Sizes, scratch: Path) -> dict[str, Any]:
    """In the worker: ``prepare()`` examples/s on the preprocessing figure's data, then the engine's training
    real tokens/s and eval metric on the training figure's (steps 1..N, as there)."""
    import datasets

    from bench import training
    from bench.preprocess import CASES
    from nlpjobs.tasks import get_task
    from nlpjobs.train.speed.allocator import in_use

    datasets.disable_progress_bars()
    datasets.disable_caching()
    case = CASES[task](sizes, scratch / "prepare")
    examples = sum(len(ds) for ds in case.raw.values())
    prepare = get_task(task).prepare
    prepare(case.job, case.raw, case.tokenizer)  # warm-up, as the preprocessing figure does
    _, seconds, _ = timed_median(lambda: prepare(case.job, case.raw, case.tokenizer), sizes.preprocess_min_seconds)
    store = scratch / "store"
    divisor = training.RECIPES[task].step_divisor
    sizes = dataclasses.replace(sizes, train_steps=max(2, sizes.train_steps // divisor))  # as the training figure
    job, manifest = training._preprocessed(sizes, store, task)
    meter, scores = training.run_engine("nlpjobs", job, manifest, sizes, scratch, store, None, None)
    tokens_per_s = meter.throughput(sizes.train_steps)[0]
    return {"allocator": in_use(), "prepare_examples_per_s": examples / seconds, "train_tokens_per_s": tokens_per_s,
            "scores": scores}


def measure(task: str, sizes: Sizes, scratch: Path) -> list[Sample]:
    """``sizes.repeats`` pairs of workers; without tcmalloc on this machine, a record saying how to install it."""
    from bench.training import RECIPES
    from nlpjobs.train.speed.allocator import INSTALL_HINT, find_tcmalloc

    library = find_tcmalloc()
    if library is None:
        why = f"not measured: tcmalloc is not installed here ({INSTALL_HINT})"
        return [Sample(task, PREPARE_FIGURE, "—", None, None, True, note=why),
                Sample(task, TRAIN_FIGURE, "—", None, None, True, note=why)]
    note = (f"nlpjobs against itself on the CPU, each run a fresh process: LD_PRELOAD={library} (as the CPU images "
            "and make run) vs none (glibc malloc with its default settings)")
    recipe = RECIPES[task]  # the eval metric beside the training figure's, named as there
    samples: list[Sample] = []
    for r in range(sizes.repeats):
        order = [library, None] if r % 2 else [None, library]
        runs: dict[str | None, dict[str, Any]] = {}
        for preload in order:
            folder = Path(tempfile.mkdtemp(prefix="allocator-", dir=scratch))
            try:
                runs[preload] = run_worker(task, sizes, folder, preload)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        fast, plain = runs[library], runs[None]
        log(f"allocator repeat {r + 1}/{sizes.repeats} ({task}): prepare() {fast['prepare_examples_per_s']:,.0f} vs "
            f"{plain['prepare_examples_per_s']:,.0f} examples/s, train {fast['train_tokens_per_s']:,.0f} vs "
            f"{plain['train_tokens_per_s']:,.0f} tokens/s (tcmalloc vs glibc)")
        samples.append(Sample(task, PREPARE_FIGURE, "examples/s", fast["prepare_examples_per_s"],
                              plain["prepare_examples_per_s"], True, note=note))
        samples.append(Sample(task, TRAIN_FIGURE, "tokens/s", fast["train_tokens_per_s"], plain["train_tokens_per_s"],
                              True, metric=scores_metric(recipe.metric, recipe.scores, fast["scores"], plain["scores"]),
                              note=note))
    return samples


if __name__ == "__main__":
    name, folder, given = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps(work(name, Sizes(**given), folder)), flush=True)
