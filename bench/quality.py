"""Quality at full scale: nlpjobs' training beside the course recipe on the same model, data and hyperparameters.

The speed figures train a few dozen steps, where neither engine has learned anything, so they cannot show what a
speed option costs in quality. This figure trains to the end, once per task (``--task``):

- **ner**: all of CoNLL-2003 (14,041 training sentences, the 3,250 validation sentences), MiniLM-L6, the course's
  hyperparameters (AdamW at 2e-5, weight decay 0.01, a linear schedule without warmup, batch 8, 3 epochs;
  gradients clipped at 1.0, the Trainer's default and nlpjobs'). Both engines evaluate after every epoch, as the
  course does (seqeval F1).
- **translation**: the offline preset (``jobs/local/translation.yaml``) at its full size: all 28.6k KDE en→fr
  training pairs, the small Marian built from a config, its schedule (AdamW at 1e-3, 400 warmup steps, batch 32,
  6 epochs, clipping 1.0). The initial weights are saved once and both engines start from them. Every trained
  model is scored by the same evaluator, the course's own: ``Seq2SeqTrainer.evaluate`` with its
  ``compute_metrics`` (sacreBLEU of the greedy outputs, max length 128, against the decoded labels) on the
  preset's 1,000 held-out strings, beside the copy baseline (the sources scored as translations by the same
  metric) and how many distinct outputs each model gave.

The time of a run is its training call (NER: the per-epoch evaluations included). nlpjobs runs with its defaults
and once with the speed option that changes the order of the samples on (``VARIANTS``: length grouping, off by
default for both tasks since this figure measured what it costs), so that cost shows beside the default's.

Usage: ``python -m bench.quality [--task ner|translation] [--variants ...] [--quick]`` (``make quality``). It
writes the task's entry into ``OUT/quality.json`` and rebuilds ``OUT/quality.md`` from every task there (and the
quality section of ``OUT/results.md`` where that file has one). A benchmark, not a test: it prints figures and
never fails on a number.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import load_preset, log
from bench.records import QUALITY_HEADING
from bench.training import COURSE_LR, COURSE_WEIGHT_DECAY

TASKS = ("ner", "translation")
VARIANTS: dict[str, dict[str, list[str]]] = {
    "ner": {"defaults": [], "grouped": ["train.group_by_length=true"]},
    "translation": {"defaults": [], "grouped": ["train.group_by_length=true"]},
}
"""nlpjobs runs per task: name -> overrides on top of the figure's job."""
TITLES = {"ner": "NER: all of CoNLL-2003, the course's hyperparameters",
          "translation": "Translation en→fr: the offline preset at full size"}
METRICS = {"ner": "F1", "translation": "BLEU"}
DIGITS = {"ner": 4, "translation": 2}
COURSE = "course Trainer"

COURSE_EPOCHS = 3
COURSE_BATCH = 8
SEED = 42
"""The Trainer's default seed; nlpjobs trains with the same."""


@dataclass
class QualityRun:
    engine: str
    """'course Trainer' or 'nlpjobs (<variant>)'."""
    overrides: list[str]
    scores: list[float]
    """The task's metric after each epoch (NER) or once, after training (translation)."""
    seconds: float
    steps: int
    distinct: int | None = None
    """Distinct outputs over the evaluated rows (generation tasks)."""

    @property
    def score(self) -> float:
        return self.scores[-1]


# ---- NER ------------------------------------------------------------------------------------------


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


def nlpjobs_train(job: Any, init: str | None = None) -> tuple[Any, float]:
    """``nlpjobs train``: (its TrainResult, seconds); its scratch folder is removed afterwards. ``init``: the
    fingerprint the engine's freshly built model must have (the course's starting weights)."""
    from bench.training import checked_init
    from nlpjobs import storage
    from nlpjobs.stages import train
    from nlpjobs.tasks import get_task

    started = time.perf_counter()
    try:
        with checked_init(type(get_task(job.task)), init), contextlib.redirect_stdout(sys.stderr):
            result = train(job, show_progress=True)
    finally:
        shutil.rmtree(storage.cache_dir() / "scratch" / job.name, ignore_errors=True)
    return result, time.perf_counter() - started


def run_ner_nlpjobs(job: Any, variant: str) -> QualityRun:
    """``nlpjobs train`` on the preprocessed dataset: F1 after each epoch from the run's history."""
    result, seconds = nlpjobs_train(job)
    f1s = [float(e["overall_f1"]) for e in result.history["eval"]]
    return QualityRun(f"nlpjobs ({variant})", VARIANTS["ner"].get(variant, []), f1s, seconds, result.steps)


def run_ner_course(job: Any, manifest: Any, out_dir: Path) -> QualityRun:
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
    return QualityRun(COURSE, [], f1s, seconds, int(output.global_step))


def ner_figure(args: argparse.Namespace, variants: list[str], scratch: Path) -> dict[str, Any]:
    from nlpjobs import stages

    epochs = 1 if args.quick else args.epochs or COURSE_EPOCHS
    train_n, eval_n = (300, 100) if args.quick else (None, None)
    job = ner_job(scratch / "store", train_n, eval_n, epochs)
    manifest = stages.preprocess(job).manifest
    log(f"quality: ner, {manifest.rows('train'):,} train / {manifest.rows('eval'):,} validation sentences, "
        f"{epochs} epoch(s), batch {COURSE_BATCH}, lr {COURSE_LR:g}")
    runs: list[QualityRun] = []
    if not args.no_course:
        runs.append(run_ner_course(job, manifest, scratch / "trainer"))
        log(f"quality: {runs[-1].engine}: F1 {runs[-1].scores} in {runs[-1].seconds:.0f} s")
    for variant in variants:
        job = ner_job(scratch / "store", train_n, eval_n, epochs, VARIANTS["ner"][variant])
        runs.append(run_ner_nlpjobs(dataclasses.replace(job, name=f"quality-{variant}-{uuid.uuid4().hex[:6]}"),
                                    variant))
        log(f"quality: {runs[-1].engine}: F1 {runs[-1].scores} in {runs[-1].seconds:.0f} s")
    scale = "a sample of CoNLL-2003" if args.quick else "all of CoNLL-2003"
    header = (f"NER, {scale} ({manifest.rows('train'):,} train / {manifest.rows('eval'):,} validation sentences), "
              f"MiniLM-L6, lr {COURSE_LR:g}, batch {COURSE_BATCH}, {epochs} epoch(s), no warmup, clipping 1.0, "
              f"seed {SEED}; validation F1 (seqeval) after each epoch; time: the whole training call, the per-epoch "
              "evaluations included.")
    return {"header": header, "runs": runs}


# ---- translation ----------------------------------------------------------------------------------


def translation_job(store: Path, quick: bool, epochs: int | None, overrides: list[str] = ()) -> Any:
    """The offline translation preset at its full size, without in-training evaluation or checkpoints;
    ``epochs``: the preset's when None."""
    small = ["data.max_train_examples=600", "data.max_eval_examples=40", "train.warmup_steps=5"] if quick else []
    length = [f"train.epochs={1 if quick else epochs}"] if quick or epochs else []
    return load_preset("translation", [f"storage=file://{store}", "train.eval_every=never", "train.save_every=never",
                                       "train.eval_before_training=false", *small, *length, *overrides])


def course_bleu(job: Any, manifest: Any, model_dir: Path, out_dir: Path) -> tuple[float, int]:
    """(BLEU, distinct outputs) of a saved model by the one evaluator of this figure: the course's
    ``Seq2SeqTrainer.evaluate`` with its compute_metrics, at the job's generation settings."""
    from bench.generation import run_course

    run = run_course(job, manifest, model_dir, out_dir)
    return run.scores["bleu"], len(set(run.predictions))


def copy_bleu(manifest: Any) -> float:
    """The copy baseline by the same metric: each eval source, decoded as the course decodes, scored as its own
    translation against the decoded label."""
    from bench.generation import course_translation_compute_metrics
    from nlpjobs.data.shards import load_split, load_tokenizer

    tokenizer = load_tokenizer(manifest)
    rows = load_split(manifest, "eval")
    width = max(len(ids) for ids in [*rows["input_ids"], *rows["labels"]])

    def padded(seqs: list[list[int]]) -> Any:
        import numpy as np

        return np.array([list(s) + [-100] * (width - len(s)) for s in seqs])

    sources = padded(rows["input_ids"])
    sources[sources == -100] = tokenizer.pad_token_id
    return course_translation_compute_metrics(tokenizer)((sources, padded(rows["labels"])))["bleu"]


def run_translation_course(job: Any, manifest: Any, init_dir: Path, out_dir: Path) -> QualityRun:
    """The course's Seq2SeqTrainer (chapter 7, section 4) from the shared initial weights, the job's schedule."""
    from bench.training import course_parts
    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import model_inputs

    tokenizer = load_tokenizer(manifest)
    model, collator, trainer_cls, args_cls = course_parts(job, manifest, tokenizer, init_dir)
    cfg = job.train
    args = args_cls(str(out_dir / "trainer"), eval_strategy="no", save_strategy="no", learning_rate=cfg.learning_rate,
                    weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.scheduler, warmup_steps=cfg.warmup_steps,
                    num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                    max_grad_norm=cfg.max_grad_norm or 0.0, seed=cfg.seed, report_to=[], use_cpu=True,
                    logging_strategy="epoch", push_to_hub=False, predict_with_generate=True)
    trainer = trainer_cls(model=model, args=args,
                          train_dataset=model_inputs(get_task(job.task), load_split(manifest, "train")),
                          data_collator=collator, processing_class=tokenizer)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        output = trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(out_dir / "model"))
    bleu, distinct = course_bleu(job, manifest, out_dir / "model", out_dir / "eval")
    return QualityRun(COURSE, [], [bleu], seconds, int(output.global_step), distinct)


def run_translation_nlpjobs(job: Any, manifest: Any, variant: str, init: str, out_dir: Path) -> QualityRun:
    from nlpjobs.stages import fetch_model

    result, seconds = nlpjobs_train(job, init)
    bleu, distinct = course_bleu(job, manifest, fetch_model(job), out_dir)
    return QualityRun(f"nlpjobs ({variant})", VARIANTS["translation"].get(variant, []), [bleu], seconds,
                      result.steps, distinct)


def translation_figure(args: argparse.Namespace, variants: list[str], scratch: Path) -> dict[str, Any]:
    from bench.training import save_initial_model
    from nlpjobs import stages

    job = translation_job(scratch / "store", args.quick, args.epochs)
    manifest = stages.preprocess(job).manifest
    init, model = save_initial_model(job, manifest, scratch / "init")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    copy = copy_bleu(manifest)
    log(f"quality: translation, {manifest.rows('train'):,} train / {manifest.rows('eval'):,} held-out pairs, "
        f"{job.train.epochs:g} epoch(s), batch {job.train.batch_size}, lr {job.train.learning_rate:g}; "
        f"copy baseline BLEU {copy:.2f}")
    runs: list[QualityRun] = []
    if not args.no_course:
        runs.append(run_translation_course(job, manifest, scratch / "init", scratch / "course"))
        log(f"quality: {runs[-1].engine}: BLEU {runs[-1].score:.2f} in {runs[-1].seconds:.0f} s")
    for variant in variants:
        run_job = translation_job(scratch / "store", args.quick, args.epochs, VARIANTS["translation"][variant])
        run_job = dataclasses.replace(run_job, name=f"quality-{variant}-{uuid.uuid4().hex[:6]}")
        runs.append(run_translation_nlpjobs(run_job, manifest, variant, init, scratch / f"eval-{variant}"))
        log(f"quality: {runs[-1].engine}: BLEU {runs[-1].score:.2f} in {runs[-1].seconds:.0f} s")
    cfg = job.train
    preset_epochs = load_preset("translation").train.epochs
    of_preset = f" of the preset's {preset_epochs:g}, the schedule sized to them" if cfg.epochs != preset_epochs else ""
    header = (f"Translation en→fr, the offline preset at full size ({manifest.rows('train'):,} KDE training pairs, "
              f"{manifest.rows('eval'):,} held-out strings), {job.model.name} ({params:.1f}M parameters) from the "
              f"same initial weights, lr {cfg.learning_rate:g}, {cfg.warmup_steps} warmup steps, {cfg.scheduler} "
              f"schedule, batch {cfg.batch_size}, {cfg.epochs:g} epoch(s){of_preset}, clipping {cfg.max_grad_norm}, seed "
              f"{cfg.seed}; BLEU of every model by the course's Seq2SeqTrainer.evaluate and compute_metrics "
              f"(greedy, max length {job.evaluate.generation_max_length}, decoded labels); copy baseline (the "
              f"sources scored as translations, same metric): {copy:.2f}; time: the training call.")
    return {"header": header, "runs": runs, "copy_bleu": copy}


FIGURES: dict[str, Callable[[argparse.Namespace, list[str], Path], dict[str, Any]]] = {
    "ner": ner_figure, "translation": translation_figure}


# ---- the document ---------------------------------------------------------------------------------


def table(runs: list[QualityRun], task: str) -> str:
    """One row per run: the metric (after each epoch where there are several), its difference from the course's,
    distinct outputs (generation), time and speed against the course."""
    metric, digits = METRICS[task], DIGITS[task]
    course = next((r for r in runs if r.engine == COURSE), None)
    epochs = max(len(r.scores) for r in runs)
    distinct = any(r.distinct is not None for r in runs)
    head = (["engine"] + ([f"{metric} epoch {i + 1}" for i in range(epochs)] if epochs > 1 else [])
            + [f"final {metric}", f"Δ {metric} vs course"] + (["distinct outputs"] if distinct else [])
            + ["time", "speed vs course"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in runs:
        cells = [r.engine]
        if epochs > 1:
            cells += [f"{s:.{digits}f}" for s in r.scores] + ["—"] * (epochs - len(r.scores))
        cells += [f"**{r.score:.{digits}f}**", f"{r.score - course.score:+.{digits}f}" if course and r is not course
                  else "—"]
        if distinct:
            cells.append(f"{r.distinct:,}" if r.distinct is not None else "—")
        cells += [f"{r.seconds:,.0f} s", f"{course.seconds / r.seconds:.2f}×" if course and r is not course else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(task: str, entry: dict[str, Any]) -> str:
    """``### <title>``, the run's command line and conditions, the table and the entry's note."""
    runs = [r if isinstance(r, QualityRun) else run_from_json(r) for r in entry["runs"]]
    parts = [f"### {TITLES[task]}", "", entry["header"], "", table(runs, task)]
    if entry.get("note"):
        parts += ["", entry["note"]]
    return "\n".join(parts) + "\n"


def document(entries: dict[str, dict[str, Any]]) -> str:
    """The whole figure (``quality.md`` and the end of ``results.md``): one section per task measured."""
    return "\n".join([QUALITY_HEADING, "", *[section(t, entries[t]) for t in TASKS if t in entries]])


def run_from_json(data: dict[str, Any]) -> QualityRun:
    scores = data.get("scores", data.get("f1_per_epoch"))  # the first figure's entries said f1_per_epoch
    return QualityRun(data["engine"], data["overrides"], scores, data["seconds"], data["steps"], data.get("distinct"))


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    """``quality.json`` by task; the first figure's file (one NER entry at the top level) is read as such."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {"ner": data} if "runs" in data else data


def write(out: Path, task: str, entry: dict[str, Any]) -> str:
    """Store the task's entry beside the others' (replacing its earlier one, note included) and rewrite ``quality.md`` (and ``results.md``'s quality section,
    when it has one) from all of them; the document."""
    out.mkdir(parents=True, exist_ok=True)
    entries = read_entries(out / "quality.json")
    entries[task] = {**entry, "runs": [{**dataclasses.asdict(r), "score": r.score} for r in entry["runs"]]}
    (out / "quality.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    text = document(entries)
    (out / "quality.md").write_text(text)
    results = out / "results.md"
    if results.is_file() and QUALITY_HEADING in (current := results.read_text()):
        results.write_text(current[:current.index(QUALITY_HEADING)] + text)
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=(
        "Train a task at full scale with the course's recipe and with nlpjobs (its defaults and with the speed option "
        "that reorders samples flipped), from the same model and data, and print and write each run's metric and "
        "time (OUT/quality.json, OUT/quality.md). ner: all of CoNLL-2003 with MiniLM-L6 and the course's "
        "hyperparameters, F1 after every epoch (about 45 minutes on 2 cores). translation: the offline KDE preset at "
        "its full size, BLEU by the course's evaluator beside the copy baseline (the preset's 6 epochs take the course "
        "about an hour on 2 cores; --epochs 1 takes the whole figure about 25 minutes)."))
    p.add_argument("--task", choices=TASKS, default="ner", help="Which figure to run (default ner).")
    p.add_argument("--variants", default=None,
                   help="Comma-separated nlpjobs runs: ner: " + ", ".join(VARIANTS["ner"]) + "; translation: "
                        + ", ".join(VARIANTS["translation"]) + " (default: all of the task's).")
    p.add_argument("--no-course", action="store_true", help="Skip the course Trainer's run.")
    p.add_argument("--epochs", type=int, default=None,
                   help="Epochs of every run, the schedule sized to them (default: ner 3, the course's; translation 6, "
                        "the preset's). The course's random batches of KDE strings are mostly padding: its 6 epochs "
                        "take hours on 2 cores, 1 epoch about 25 minutes.")
    p.add_argument("--quick", action="store_true",
                   help="A small sample and 1 epoch: checks the figure runs (a minute or two); the numbers mean "
                        "nothing.")
    p.add_argument("--out", type=Path, default=Path("bench"), help="Directory for quality.json and quality.md.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    known = VARIANTS[args.task]
    variants = [v.strip() for v in (args.variants or ",".join(known)).split(",") if v.strip()]
    unknown = sorted(set(variants) - set(known))
    if unknown:
        raise SystemExit(f"error: --variants: unknown {unknown} for {args.task}; choose from {', '.join(known)}")
    import datasets

    from bench import machine

    datasets.disable_progress_bars()
    machine.steady_allocator()  # as the speed figures: large temporaries reuse heap memory in both engines
    busy = machine.busy_cores() or 0.0
    scratch = (args.out / "out" / f"quality-{uuid.uuid4().hex[:6]}").resolve()
    started = time.time()
    try:
        entry = FIGURES[args.task](args, variants, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    entry["header"] = (f"`{command.strip()}` · {time.strftime('%Y-%m-%d %H:%M')} · {time.time() - started:.0f} s · "
                       f"{machine.cpu_model()}, {machine.usable_cores()} cores, CPU only, other work at the start: "
                       f"{busy:.2f} cores · {entry['header']} Variants: "
                       + "; ".join(f"{name}: {' '.join(known[name]) or 'nlpjobs defaults'}" for name in variants))
    text = write(args.out, args.task, entry)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
