"""`nlpjobs doctor`: what this environment can do, and whether a job can start, before any compute is spent.

The environment report covers versions, accelerators, processes, memory and disk; the storage check
writes, reads and deletes a probe object; with a job, the task checks load the committed dataset,
compare label space and lengths with the model, collate one batch and take one forward/backward step
(23).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "evaluate", "deepspeed", "tokenizers", "s3fs", "boto3")


@dataclass
class Check:
    name: str
    ok: bool | None  # None = not applicable / skipped
    detail: str

    def line(self) -> str:
        mark = {True: "ok", False: "FAIL", None: "--"}[self.ok]
        return f"  [{mark:>4}] {self.name}: {self.detail}"


def environment() -> list[tuple[str, str]]:
    import torch

    rows = [("python", f"{platform.python_version()} ({platform.machine()}, {platform.system()})")]
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} -")
    rows.append(("packages", " · ".join(versions)))
    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(f"{torch.cuda.get_device_name(i)} ({free / 2**30:.1f}/{total / 2**30:.1f} GiB free)")
        bf16 = "bf16 yes" if torch.cuda.is_bf16_supported() else "bf16 no"
        rows.append(("accelerator", f"CUDA {torch.version.cuda}, {len(gpus)} GPU(s): {'; '.join(gpus)}; {bf16}; "
                                    f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"))
    else:
        from nlpjobs.train.speed.precision import native_bf16

        native = native_bf16()
        bf16 = (f"bf16 native ({native}): train.mixed_precision=bf16 trains faster than fp32" if native
                else "no native bf16: train in fp32")
        rows.append(("accelerator", f"none: CPU only ({os.cpu_count()} cores, {torch.get_num_threads()} torch "
                                    f"threads); {bf16}"))
    world = os.environ.get("WORLD_SIZE", "1")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    rows.append(("processes", f"WORLD_SIZE={world} RANK={os.environ.get('RANK', '0')} "
                              f"LOCAL_RANK={os.environ.get('LOCAL_RANK', '0')} (backend {backend})"))
    from nlpjobs.train.speed.allocator import report

    rows.append(("allocator", report()))
    mem = _meminfo()
    if mem:
        rows.append(("memory", f"{mem[0] / 2**30:.1f} GiB total, {mem[1] / 2**30:.1f} GiB available"))
    from nlpjobs.storage import cache_dir

    for label, path in (("disk (cache)", cache_dir()), ("disk (tmp)", Path(os.environ.get("TMPDIR", "/tmp")))):
        usage = shutil.disk_usage(path)
        rows.append((label, f"{path}: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"))
    return rows


def _meminfo() -> tuple[int, int] | None:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def storage_check(root: str) -> Check:
    """Write, read back and delete a probe object under ``root``."""
    from nlpjobs import storage

    try:
        seconds = storage.probe_writable(root)
    except Exception as exc:  # StorageError and anything the filesystem raises
        return Check("object storage", False, f"{root}: {exc}")
    return Check("object storage", True, f"{root}: write/read/delete in {seconds:.2f}s")


NEEDS_DATASET = ("model", "columns", "one batch", "forward/backward", "evaluation")
"""The job checks that run on the committed dataset, skipped (and said so) without it."""


def job_checks(job: Any) -> Iterator[Check]:
    """Task checks of ``job``; stops at the first failure that makes the next checks meaningless."""
    import torch

    from nlpjobs.data import location
    from nlpjobs.data.shards import load_split, load_tokenizer, open_dataset
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import model_inputs
    from nlpjobs.train.smoke import first_train_batch, initial_loss_check

    task = get_task(job.task)
    yield Check("config", True, f"task {job.task}, run {job.name!r}, storage {job.storage}")
    uri = location.dataset_uri(job, task)
    try:
        manifest = open_dataset(uri)
    except Exception as exc:
        yield Check("dataset", None, f"not usable yet ({exc}); run `nlpjobs preprocess` first")
        for name in NEEDS_DATASET:
            yield Check(name, None, "skipped: needs the preprocessed dataset")
        return
    rows = {s: manifest.rows(s) for s in manifest.splits}
    yield Check("dataset", True, f"committed at {uri}: " + ", ".join(f"{s} {n} rows" for s, n in rows.items()))
    truncated = manifest.info.get("truncated")
    if truncated:
        yield Check("lengths", True, f"truncated at preprocessing (stated in the manifest): {truncated}")
    tokenizer = load_tokenizer(manifest)
    try:
        model = task.build_model(job, manifest, tokenizer)
    except Exception as exc:
        yield Check("model", False, str(exc))
        return
    n_params = sum(p.numel() for p in model.parameters())
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    yield Check("model", True, f"{type(model).__name__}, {n_params / 1e6:.1f}M parameters"
                + (f", {limit} positions" if limit else ""))
    train = model_inputs(task, load_split(manifest, "train"))
    columns = train.column_names
    yield Check("columns", "input_ids" in columns, ", ".join(columns) + ("" if "input_ids" in columns else
                                                                          "; missing input_ids"))
    if "input_ids" not in columns:
        return
    batch = first_train_batch(task, train, tokenizer, model, job.train.batch_size)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if hasattr(v, "shape"))
    seq = batch["input_ids"].shape[-1]
    too_long = limit is not None and seq > limit
    yield Check("one batch", not too_long, shapes + (f"; sequence {seq} > model limit {limit}" if too_long else ""))
    if too_long:
        return
    model.train()
    loss = task.loss(model, batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    finite = bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)
    sanity = initial_loss_check(task, model, batch, float(loss.detach()), job.model.name.startswith("scratch:"))
    detail = f"loss {float(loss.detach()):.4f}"
    if sanity:
        detail += f" vs random guess {sanity['random_guess']:.4f} ({sanity['ratio']:.2f}x)"
        if sanity["warning"]:
            detail += f"; WARNING {sanity['warning']}"
    detail += f"; {len(grads)} gradients " + ("finite" if finite else "NOT finite")
    yield Check("forward/backward", finite, detail)
    if finite:
        model.zero_grad(set_to_none=True)
        yield evaluation_check(job, task, manifest, tokenizer, model)


def evaluation_check(job: Any, task: Any, manifest: Any, tokenizer: Any, model: Any, examples: int = 8) -> Check:
    """The task's whole evaluation path (forward, gather, post-processing, metric) on the first few
    evaluation rows, so a broken metric shows before hours of training rather than after."""
    from torch.utils.data import DataLoader

    from nlpjobs.data.shards import load_split
    from nlpjobs.tasks.base import EvalContext
    from nlpjobs.train.engine import make_accelerator, model_inputs

    started = time.time()
    rows = model_inputs(task, load_split(manifest, "eval"))
    subset = rows.select(range(min(examples, len(rows))))
    loader = DataLoader(subset, batch_size=min(job.evaluate.batch_size, len(subset)),
                        collate_fn=task.collator(tokenizer, model))
    acc = make_accelerator(job, training=False)
    try:
        metrics = task.evaluate(EvalContext(acc, job, manifest, tokenizer, show_progress=False), model, loader)
    except Exception as exc:  # noqa: BLE001 - any failure of the path is the finding
        return Check("evaluation", False, f"{type(exc).__name__}: {exc}")
    return Check("evaluation", True, f"metric on the first {len(subset)} eval rows: {task.summary(metrics)} "
                                     f"({time.time() - started:.1f}s)")
