"""``python -m bench``: run the figures, write results.json / results.md, print the table."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench.common import Sizes, log, short
from bench.machine import Machine
from bench.records import Sample, aggregate, markdown_table, write_results, write_section

FIGURES = ("preprocess", "qa-postproc", "storage", "train", "scale", "generation", "batch-predict", "allocator")
TASKS = ("ner", "qa", "mlm", "translation", "summarization", "clm")
PREPROCESS_TASKS = ("ner", "qa", "mlm", "translation", "summarization", "clm")
TRAIN_TASKS = ("ner", "qa", "mlm", "translation", "summarization", "clm")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure nlpjobs side by side with the course recipe on the same data, model and machine; "
                    "write OUT/results.json and OUT/results.md (medians of the repeats) and print the table. "
                    "Figures never fail on a slow number; a figure that cannot be measured says why.")
    p.add_argument("--task", choices=("all", *TASKS), default="all",
                   help="Only the figures of this task (default: all tasks). Storage reads NER shards and counts "
                        "as ner; QA post-processing is qa; the allocator figure runs this task (all: "
                        "summarization).")
    p.add_argument("--figures", default=",".join(FIGURES),
                   help=f"Comma-separated figures to run, from {', '.join(FIGURES)} (default: all).")
    p.add_argument("--repeats", type=int, default=None,
                   help="Repeats of every figure; the table shows medians (default 3, --quick: 1).")
    p.add_argument("--quick", action="store_true",
                   help="Tiny sizes and one repeat: checks that every figure runs, in about two minutes; "
                        "the numbers are not meaningful.")
    p.add_argument("--out", type=Path, default=Path("bench"),
                   help="Directory for results.json and results.md (default: bench). Scratch data and the raw "
                        "per-repeat samples go to OUT/out/.")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto",
                   help="Where both engines train and evaluate: auto (default) the first GPU torch sees, else the "
                        "CPU; cpu hides every GPU from the run (CUDA_VISIBLE_DEVICES=''). On a GPU, the course "
                        "recipes that set fp16=True (masked LM, translation, causal LM, QA) train in fp16 mixed "
                        "precision in both engines; everything else, and every CPU run, in fp32 (see --cpu-bf16).")
    p.add_argument("--cpu-bf16", choices=("auto", "no"), default="auto",
                   help="auto (default): on a CPU, also measure the bf16 matmul peak, and where it is at least "
                        "1.5x the fp32 one (AVX512-BF16, AMX) the training figure runs both engines in bf16 "
                        "mixed precision too (the course Trainer's bf16=True, nlpjobs train.mixed_precision=bf16) "
                        "and compares nlpjobs in bf16 with the course in fp32; no: fp32 only (half the training "
                        "figure's time).")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for every figure (default: torch's own choice, one per core).")
    p.add_argument("--train-steps", type=int, default=None,
                   help="Optimizer steps per training run; steps 2..N are timed (default 40, --quick: 6).")
    p.add_argument("--train-examples", type=int, default=None,
                   help="Training sentences of the training figure's dataset (default 2000, --quick: 200).")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Per-device training batch of both engines (default 8, the course Trainer's default).")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Learning rate of both engines in the training figure (default: the course's 2e-5; "
                        "a few dozen steps at 2e-5 leave the eval F1 at 0, e.g. 1e-4 makes it move).")
    p.add_argument("--ner-examples", type=int, default=None,
                   help="CoNLL-2003 training sentences preprocessed (default: the whole split, 14,041; "
                        "--quick: 1000).")
    p.add_argument("--qa-examples", type=int, default=None,
                   help="QA examples per split preprocessed (the 5 SQuAD sample questions replicated; "
                        "default 400, --quick: 50).")
    p.add_argument("--postproc-examples", type=int, default=None,
                   help="Examples whose logits QA post-processing handles (default 500, --quick: 100).")
    p.add_argument("--scale-examples", type=int, default=None,
                   help="Largest NER training size of the scale figure; a quarter and a half of it are the "
                        "other two (default 4000, --quick: 400).")
    p.add_argument("--generation-examples", type=int, default=None,
                   help="Eval examples both engines generate for and score in the seq2seq generation figure "
                        "(default 200, --quick: 32).")
    p.add_argument("--batch-predict-rows", type=int, default=None,
                   help="CoNLL-2003 sentences the batch-prediction figure predicts, with nlpjobs and with the plain "
                        "pipeline loop (default 2000, --quick: 200).")
    p.add_argument("--section", default=None, metavar="TITLE",
                   help="Merge this run into OUT/results.md as its own section '## TITLE' (replaced when it is "
                        "there, else added before the quality section) and its records into OUT/results.json, "
                        "instead of rewriting both: for one figure measured apart from a full run.")
    p.add_argument("--storage-mb", type=int, default=None,
                   help="Approximate MB of shards read in the storage figure (default 64, --quick: 8).")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="Matrix size of the fp32 matmul peak measurement (default 1024, --quick: 512).")
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeats is not None:
        sizes.repeats = args.repeats
    overrides = {"train_steps": args.train_steps, "train_examples": args.train_examples,
                 "train_batch_size": args.batch_size, "ner_train_examples": args.ner_examples,
                 "qa_examples": args.qa_examples, "qa_postproc_examples": args.postproc_examples,
                 "storage_mb": args.storage_mb, "matmul_size": args.matmul_size, "learning_rate": args.learning_rate,
                 "scale_examples": args.scale_examples, "generation_examples": args.generation_examples,
                 "batch_predict_rows": args.batch_predict_rows}
    for key, value in overrides.items():
        if value is not None:
            if value <= 0 or (isinstance(value, int) and value < 1):
                raise SystemExit(f"error: --{key.replace('_', '-')}: must be > 0, got {value}")
            setattr(sizes, key, value)
    if sizes.repeats < 1:
        raise SystemExit("error: --repeats: must be >= 1")
    if sizes.train_steps < 2:
        raise SystemExit("error: --train-steps: must be >= 2 (the first step is not timed)")
    return sizes


def plan(task: str, figures: list[str]) -> list[tuple[str, str]]:
    """(figure, task) pairs to run, in the issue's priority order."""
    wanted = TASKS if task == "all" else (task,)
    out: list[tuple[str, str]] = []
    for figure in figures:
        if figure == "preprocess":
            out += [("preprocess", t) for t in wanted]
        elif figure == "qa-postproc" and "qa" in wanted:
            out.append(("qa-postproc", "qa"))
        elif figure == "storage" and "ner" in wanted:
            out.append(("storage", "ner"))
        elif figure == "train":
            out += [("train", t) for t in wanted]
        elif figure == "scale" and "ner" in wanted:
            out.append(("scale", "ner"))
        elif figure == "generation":
            out += [("generation", t) for t in wanted if t in ("translation", "summarization")]
        elif figure == "batch-predict" and "ner" in wanted:
            out.append(("batch-predict", "ner"))
        elif figure == "allocator":
            from bench.allocator import DEFAULT_TASK

            out.append(("allocator", DEFAULT_TASK if task == "all" else task))
    return out


def not_measured(task: str, figure: str, why: str) -> Sample:
    return Sample(task, figure, "—", None, None, True, note=f"not measured: {short(why)}")



def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    figures = [f.strip() for f in args.figures.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise SystemExit(f"error: --figures: unknown {unknown}; choose from {', '.join(FIGURES)}")
    sizes = sizes_from(args)
    # TOKENIZERS_PARALLELISM stays as the user has it (unset: the fast tokenizer uses every core, as in the
    # course's notebooks); the preprocess stage turns it on for itself where the CLI had turned it off.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.device == "cpu":  # before anything initialises CUDA; the scale figure's subprocesses inherit it
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench import machine
    from nlpjobs.train.speed.allocator import in_use

    current = in_use()  # the allocator the bench process itself was started on
    allocator = (machine.steady_allocator() if current in ("glibc malloc", "unknown")
                 else f"allocator: {current} (preloaded) for every figure but the allocator figure's own workers")
    started = time.time()
    from bench.machine import busy_cores

    busy = busy_cores()
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")  # before any figure's imports may set it
    log(f"measuring the matmul peak on {machine.device()} ({sizes.matmul_size}x{sizes.matmul_size}, "
        f"{torch.get_num_threads()} torch threads)")
    host = machine.describe(sizes.matmul_size, bf16=args.cpu_bf16 == "auto")
    log(f"fp32 peak {host.matmul_gflops:,.1f} GFLOP/s"
        + (f", bf16 {host.matmul_gflops_bf16:,.1f}" if host.matmul_gflops_bf16 else "")
        + f" on {host.accelerator if machine.device() == 'cuda' else host.cpu}, {host.cores} cores")
    scratch = (args.out / "out" / f"scratch-{os.getpid()}").resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    todo = plan(args.task, figures)
    log(f"{len(todo)} figure group(s): {', '.join(f'{f}/{t}' for f, t in todo)}; {sizes.repeats} repeat(s)")
    try:
        for i, (figure, task) in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {figure} / {task}")
            samples += run_figure(figure, task, sizes, scratch, host)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    records = aggregate(samples)
    lines = host.lines()
    if busy is not None:
        lines.append(f"other work at the start: {busy:.2f} of {host.cores} cores busy over 2 s"
                     + (" (figures measured under contention)" if busy > 0.25 * host.cores else ""))
    if allocator:
        lines.append(allocator)
    lines.append("TOKENIZERS_PARALLELISM at the start: " + (parallelism or "unset (the fast tokenizer uses every "
                                                                         "core, for the course as for nlpjobs)"))
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    header = (f"`{command.strip()}` · {time.strftime('%Y-%m-%d %H:%M')} · {sizes.repeats} repeat(s) · "
              f"{time.time() - started:.0f} s")
    if args.section:
        write_section(args.out, records, lines, header, args.section)
    else:
        write_results(args.out, records, lines, header)
    raw = args.out / "out" / "samples.json"
    raw.write_text(json.dumps({"machine": asdict(host), "samples": [asdict(s) for s in samples]}, indent=1) + "\n")
    print("\n".join(["", *lines, "", markdown_table(records), ""]))
    log(f"wrote {args.out / 'results.json'}, {args.out / 'results.md'} (raw samples: {raw})")
    return 0


def run_figure(figure: str, task: str, sizes: Sizes, scratch: Path, host: Machine) -> list[Sample]:
    """One figure group; an exception becomes a 'not measured' record with the reason, never a crash. ``host``:
    the machine, with the matmul peaks MFU is measured against."""
    runners: dict[str, Callable[[], list[Sample]]] = {}
    if figure == "preprocess":
        if task not in PREPROCESS_TASKS:
            return [not_measured(task, "preprocess prepare() vs course map",
                                 f"the course recipe for {task} is not in the benchmark yet")]
        from bench import preprocess

        runners[figure] = lambda: preprocess.measure(task, sizes, scratch)
    elif figure == "qa-postproc":
        from bench import qa_postproc

        runners[figure] = lambda: qa_postproc.measure(sizes, scratch)
    elif figure == "storage":
        from bench import storage

        runners[figure] = lambda: storage.measure(sizes, scratch)
    elif figure == "train":
        if task not in TRAIN_TASKS:
            return [not_measured(task, "train real tokens/s vs course Trainer",
                                 f"the course Trainer recipe for {task} is not in the benchmark yet")]
        from bench import training

        runners[figure] = lambda: training.measure(sizes, scratch, host.peaks(), task)
    elif figure == "scale":
        from bench import scale

        runners[figure] = lambda: scale.measure(sizes, scratch)
    elif figure == "generation":
        from bench import generation

        runners[figure] = lambda: generation.measure(task, sizes, scratch)
    elif figure == "batch-predict":
        from bench import batch_predict

        runners[figure] = lambda: batch_predict.measure(sizes, scratch)
    elif figure == "allocator":
        from bench import allocator

        runners[figure] = lambda: allocator.measure(task, sizes, scratch)
    try:
        return runners[figure]()
    except Exception as exc:  # noqa: BLE001 - report and go on with the other figures
        log(f"{figure} / {task} failed: {exc!r}\n{traceback.format_exc()}")
        return [not_measured(task, figure, f"{type(exc).__name__}: {exc}")]
