"""Quality at full scale: nlpjobs' training beside the course recipe on the same model, data and hyperparameters.

The speed figures train a few dozen steps, where neither engine has learned anything, so they cannot show what a
speed option costs in quality. This figure trains to the end. NER: all of CoNLL-2003 (14,041 training sentences,
the 3,250 validation sentences), MiniLM-L6, the course's hyperparameters (AdamW at 2e-5, weight decay 0.01, a
linear schedule without warmup, batch 8, 3 epochs; gradients clipped at 1.0, the Trainer's default and nlpjobs').
Both engines evaluate after every epoch, as the course does; the time of a run is its training call, those
evaluations included. nlpjobs runs with its defaults and once more with each speed option that changes the order
of the samples switched on (``VARIANTS``: for NER, length grouping is off by default), so the quality a speed
option costs shows beside the default's.

Usage: ``python -m bench.quality [--variants defaults,grouped] [--quick]`` (``make quality``); one run of each
takes about 15 minutes on 2 CPU cores. It writes ``OUT/quality.json`` and ``OUT/quality.md``; ``make bench``
copies the latter into ``results.md``. A benchmark, not a test: it prints figures and never fails on a number.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import load_preset, log
from bench.training import COURSE_LR, COURSE_WEIGHT_DECAY

VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "grouped": ["train.group_by_length=true"],
}
"""nlpjobs runs: name -> overrides on top of the course's hyperparameters."""

COURSE_EPOCHS = 3
COURSE_BATCH = 8
SEED = 42
"""The Trainer's default seed; nlpjobs trains with the same."""


@dataclass
class QualityRun:
    engine: str
    """'course Trainer' or 'nlpjobs (<variant>)'."""
    overrides: list[str]
    f1_per_epoch: list[float]
    seconds: float
    steps: int

    @property
    def f1(self) -> float:
        return self.f1_per_epoch[-1]


def ner_job(store: Path, train_examples: int | None, eval_examples: int | None, epochs: int,
            overrides: list[str] = ()) -> Any:
    """The NER preset at the course's scale and hyperparameters, evaluated every epoch, no checkpoints."""
    null = "null"
    return load_preset("ner", [
        f"storage=file://{store}", f"data.max_train_examples={train_examples or null}",
        f"data.max_eval_examples={eval_examples or null}", f"train.epochs={epochs}",
        f"train.batch_size={COURSE_BATCH}", f"train.learning_rate={COURSE_LR}",
        f"train.weight_decay={COURSE_WEIGHT_DECAY}", "train.scheduler=linear", "train.warmup_steps=0",
        "train.max_grad_norm=1.0", f"train.seed={SEED}", "train.eval_every=epoch", "train.save_every=never",
        "train.eval_before_training=false", *overrides])


def run_nlpjobs(job: Any, variant: str) -> QualityRun:
    """``nlpjobs train`` on the preprocessed dataset: F1 after each epoch from the run's history."""
    from nlpjobs import storage
    from nlpjobs.stages import train

    job = dataclasses.replace(job, name=f"quality-{variant}-{uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = train(job, show_progress=True)
        seconds = time.perf_counter() - started
        f1s = [float(e["overall_f1"]) for e in result.history["eval"]]
    finally:
        shutil.rmtree(storage.cache_dir() / "scratch" / job.name, ignore_errors=True)
    return QualityRun(f"nlpjobs ({variant})", VARIANTS.get(variant, []), f1s, seconds, result.steps)


def run_course(job: Any, manifest: Any, out_dir: Path) -> QualityRun:
    """The course's NER Trainer (chapter 7, section 2) on the same preprocessed rows, evaluated every epoch."""
    from transformers import Trainer, TrainingArguments

    from bench.training import course_ner_compute_metrics, course_parts
    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import model_inputs

    tokenizer = load_tokenizer(manifest)
    model, collator, _, _ = course_parts(job, manifest, tokenizer, None)
    args = TrainingArguments(str(out_dir), eval_strategy="epoch", save_strategy="no",
                             learning_rate=job.train.learning_rate, num_train_epochs=job.train.epochs,
                             weight_decay=job.train.weight_decay, per_device_train_batch_size=job.train.batch_size,
                             per_device_eval_batch_size=job.evaluate.batch_size, seed=SEED, report_to=[],
                             use_cpu=True, logging_strategy="epoch", push_to_hub=False)
    task = get_task("ner")
    trainer = Trainer(model=model, args=args, train_dataset=model_inputs(task, load_split(manifest, "train")),
                      eval_dataset=model_inputs(task, load_split(manifest, "eval")), data_collator=collator,
                      compute_metrics=course_ner_compute_metrics(manifest.info["label_names"]),
                      processing_class=tokenizer)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        output = trainer.train()
    seconds = time.perf_counter() - started
    f1s = [float(e["eval_f1"]) for e in trainer.state.log_history if "eval_f1" in e]
    return QualityRun("course Trainer", [], f1s, seconds, int(output.global_step))


def markdown(runs: list[QualityRun], header: str) -> str:
    """The figure as a Markdown section: one row per run, F1 after each epoch, time, speed vs the course."""
    course = next((r for r in runs if r.engine == "course Trainer"), None)
    epochs = max(len(r.f1_per_epoch) for r in runs)
    head = ("| engine | " + " | ".join(f"F1 epoch {i + 1}" for i in range(epochs))
            + " | final F1 | Δ F1 vs course | time | speed vs course |")
    lines = ["## Quality at full scale", "", header, "", head, "|---|" + "---:|" * (epochs + 4)]
    for r in runs:
        cells = [f"{f:.4f}" for f in r.f1_per_epoch] + ["—"] * (epochs - len(r.f1_per_epoch))
        delta = f"{r.f1 - course.f1:+.4f}" if course and r is not course else "—"
        speed = f"{course.seconds / r.seconds:.2f}×" if course and r is not course else "—"
        lines.append(f"| {r.engine} | " + " | ".join(cells) + f" | **{r.f1:.4f}** | {delta} | {r.seconds:,.0f} s | "
                     f"{speed} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=(
        "Train NER on all of CoNLL-2003 with MiniLM-L6 and the course's hyperparameters, with the course's Trainer "
        "and with nlpjobs (its defaults and each order-changing speed option on); print and write the F1 after "
        "every epoch and the time of each run (OUT/quality.json, OUT/quality.md)."))
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"Comma-separated nlpjobs runs, from {', '.join(VARIANTS)} (default: all).")
    p.add_argument("--no-course", action="store_true", help="Skip the course Trainer's run.")
    p.add_argument("--epochs", type=int, default=COURSE_EPOCHS, help="Epochs of every run (default 3, the course's).")
    p.add_argument("--quick", action="store_true",
                   help="300 training and 100 validation sentences, 1 epoch: checks the figure runs (a minute or "
                        "two); the numbers mean nothing.")
    p.add_argument("--out", type=Path, default=Path("bench"), help="Directory for quality.json and quality.md.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"error: --variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    import datasets

    from bench import machine
    from nlpjobs import stages

    datasets.disable_progress_bars()
    machine.steady_allocator()  # as the speed figures: large temporaries reuse heap memory in both engines
    busy = machine.busy_cores() or 0.0
    epochs = 1 if args.quick else args.epochs
    train_n, eval_n = (300, 100) if args.quick else (None, None)
    scratch = (args.out / "out" / f"quality-{uuid.uuid4().hex[:6]}").resolve()
    started = time.time()
    runs: list[QualityRun] = []
    try:
        job = ner_job(scratch / "store", train_n, eval_n, epochs)
        manifest = stages.preprocess(job).manifest
        log(f"quality: ner, {manifest.rows('train'):,} train / {manifest.rows('eval'):,} validation sentences, "
            f"{epochs} epoch(s), batch {COURSE_BATCH}, lr {COURSE_LR:g}")
        if not args.no_course:
            runs.append(run_course(job, manifest, scratch / "trainer"))
            log(f"quality: {runs[-1].engine}: F1 {runs[-1].f1_per_epoch} in {runs[-1].seconds:.0f} s")
        for variant in variants:
            runs.append(run_nlpjobs(ner_job(scratch / "store", train_n, eval_n, epochs, VARIANTS[variant]), variant))
            log(f"quality: {runs[-1].engine}: F1 {runs[-1].f1_per_epoch} in {runs[-1].seconds:.0f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    scale = "a sample of CoNLL-2003" if args.quick else "all of CoNLL-2003"
    header = (f"`{command.strip()}` · {time.strftime('%Y-%m-%d %H:%M')} · {time.time() - started:.0f} s · "
              f"{machine.cpu_model()}, {machine.usable_cores()} cores, CPU only, other work at the start: "
              f"{busy:.2f} cores · NER, {scale} ({manifest.rows('train'):,} train / "
              f"{manifest.rows('eval'):,} validation sentences), MiniLM-L6, lr {COURSE_LR:g}, batch {COURSE_BATCH}, "
              f"{epochs} epoch(s), no warmup, clipping 1.0, seed {SEED}; validation F1 (seqeval) after each epoch; "
              "time: the whole training call, the per-epoch evaluations included. Variants: "
              + "; ".join(f"{name}: {' '.join(VARIANTS[name]) or 'nlpjobs defaults'}" for name in variants))
    text = markdown(runs, header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps({"header": header, "runs": [
        {**dataclasses.asdict(r), "f1": r.f1} for r in runs]}, indent=1) + "\n")
    (args.out / "quality.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
