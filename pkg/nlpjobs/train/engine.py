"""The shared Accelerate training loop used by every task.

Gradient accumulation with the scheduler sized in optimizer steps, gradient clipping, weight-decay
groups, warmup + linear/cosine schedules, step- or epoch-based evaluation, committed checkpoints
with automatic resume (by optimizer-step index, never by replaying batches), and the final model in
Hugging Face format under the run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sysconfig
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nlpjobs import card as model_card
from nlpjobs import paths, storage
from nlpjobs.config import ConfigError, JobConfig
from nlpjobs.data import location
from nlpjobs.data.shards import load_split, load_tokenizer, open_dataset
from nlpjobs.train import speed
from nlpjobs.train.checkpoint import CheckpointStore
from nlpjobs.train.lease import LeaseHeld, RunLease
from nlpjobs.train.protocol import EvalContext
from nlpjobs.train.protocol import TrainTask as Task
from nlpjobs.train.sampling import EpochSampler, TokenWeight, row_lengths
from nlpjobs.train.stop import EvaluationInterrupted, TrainingInterrupted, worker_options
from nlpjobs.train.stop import current as stop_request
from nlpjobs.train.tracking import Throughput, Tracking, scalars

log = logging.getLogger(__name__)
RESUME_SECTIONS = ("data", "model", "preprocess", "train", "deepspeed")


def batch_order(requested: bool, grouped: bool, task_default: bool) -> str:
    """The train log's line on how batches are drawn (length grouping changes quality as well as speed)."""
    source = "the task's default" if task_default else "train.group_by_length"
    if requested and not grouped:
        return "batches: random rows (every row has the same length: nothing to group)"
    if grouped:
        return f"batches: grouped by length ({source}): less padding; at equal steps the metric can be lower"
    return f"batches: random rows ({source}); train.group_by_length=true cuts padding at some cost in quality"


def grouped_parameters(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay for weight matrices, none for biases and norm weights (ndim < 2)."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: Any, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW over the two weight-decay groups; the fused kernel (one pass over all tensors per step, on CPU
    and GPU) where torch supports it for these parameters, else the multi-tensor one."""
    groups = grouped_parameters(model, cfg.weight_decay)
    kwargs = {"lr": cfg.learning_rate, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:  # e.g. a device or dtype without the kernel
            log.info("fused AdamW unavailable (%s); using the multi-tensor implementation", exc)
    return torch.optim.AdamW(groups, **kwargs)


def model_inputs(task: Task, ds: Any) -> Any:
    keep = [c for c in task.model_columns if c in ds.column_names]
    return ds.select_columns(keep)


@dataclass
class TrainResult:
    run_uri: str
    model_uri: str
    steps: int
    total_steps: int
    resumed_from: int | None
    seconds: float
    final_eval: dict[str, Any]
    history: dict[str, Any] = field(default_factory=dict)
    already_done: bool = False


def make_accelerator(job: JobConfig, training: bool = True, log_with: list[Any] | None = None) -> Any:
    """The Accelerator of a stage: DDP/gloo on CPU, NCCL on GPUs, DeepSpeed when ``deepspeed.enabled``;
    ``log_with``: the experiment trackers (``nlpjobs.train.tracking``).

    Only training uses DeepSpeed; evaluation loads the exported Hugging Face model.
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    timeout = timedelta(seconds=job.train.collective_timeout_s)
    loader_config = DataLoaderConfiguration(even_batches=True)
    if training and job.deepspeed.enabled:
        return Accelerator(mixed_precision=job.train.mixed_precision, dataloader_config=loader_config,
                           deepspeed_plugin=deepspeed_plugin(job), log_with=log_with,
                           kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout, backend=_deepspeed_backend())])
    # cpu=True lets Accelerate pick gloo for torchrun-launched CPU processes (it ignores them otherwise).
    return Accelerator(mixed_precision=job.train.mixed_precision, cpu=not torch.cuda.is_available(),
                       dataloader_config=loader_config, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
                       log_with=log_with)


def skip_cpu_shared_memory_op() -> None:
    """DeepSpeed's CPU communication backend JIT-compiles a shared-memory all-reduce op when it starts (about
    a minute of g++ per process, and a compiler in the image) that only its inference all-reduce uses;
    training's collectives go through torch.distributed (gloo). Mark the op unavailable so it is not built."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def deepspeed_plugin(job: JobConfig) -> Any:
    """Accelerate's DeepSpeed plugin for the job's ZeRO settings (the loop owns optimizer and schedule)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise ConfigError("deepspeed.enabled: the `deepspeed` package is not installed in this environment "
                          f"({err}); install it (`pip install deepspeed`) or set deepspeed.enabled=false") from err
    from accelerate.utils import DeepSpeedPlugin

    if not torch.cuda.is_available():
        skip_cpu_shared_memory_op()
    ds = job.deepspeed
    if ds.offload_optimizer:
        check_cpu_adam_buildable()
    if "LOCAL_RANK" not in os.environ:  # DeepSpeed always initialises torch.distributed: a world of one
        os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT") or str(_free_port()))
    return DeepSpeedPlugin(zero_stage=ds.zero_stage, gradient_accumulation_steps=job.train.grad_accum,
                           gradient_clipping=job.train.max_grad_norm or 0.0,
                           offload_optimizer_device="cpu" if ds.offload_optimizer else "none",
                           offload_param_device="cpu" if ds.offload_params else "none",
                           zero3_save_16bit_model=ds.zero_stage == 3)


def check_cpu_adam_buildable() -> None:
    """Optimizer offload runs DeepSpeed's CPU Adam op: built into the deepspeed install, or compiled when first
    used, which needs a C++ compiler and the Python headers. Say so before training starts, not as a
    compiler error minutes into it (the project's images carry neither)."""
    from deepspeed.git_version_info import installed_ops

    if installed_ops.get("cpu_adam"):
        return
    compiler = os.environ.get("CXX", "c++")
    missing = [] if shutil.which(compiler) else [f"a C++ compiler ({compiler!r} is not on PATH)"]
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        missing.append(f"the Python headers (no Python.h in {sysconfig.get_paths()['include']})")
    if missing:
        raise ConfigError("deepspeed.offload_optimizer: DeepSpeed's CPU Adam op is not built into this deepspeed "
                          f"install and cannot be compiled here: it needs {' and '.join(missing)}. Set "
                          "deepspeed.offload_optimizer=false, or use an environment with g++ and python3-dev "
                          "(or deepspeed installed with DS_BUILD_CPU_ADAM=1).")


def _deepspeed_backend() -> str | None:
    """gloo on CPU (Accelerate would otherwise skip DeepSpeed's initialisation); DeepSpeed's default on GPUs."""
    return None if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_run(job: JobConfig, run_uri: str, is_main: bool) -> bool:
    """Record the job in the run; refuse to resume a run whose recipe changed. True if finished."""
    job_uri = storage.join(run_uri, "job.json")
    fingerprint = {s: job.section_hash(s) for s in RESUME_SECTIONS}
    if storage.exists(job_uri):
        previous = storage.read_json(job_uri)
        changed = [s for s in RESUME_SECTIONS if previous.get("fingerprint", {}).get(s) != fingerprint[s]]
        if changed:
            raise ConfigError(
                f"name: run {job.name!r} already exists at {run_uri} with different {', '.join(changed)} "
                "settings; resuming it would mix two recipes. Choose a new run name (--set name=...) or "
                "delete the run.")
    elif is_main:
        storage.write_json(job_uri, {"fingerprint": fingerprint, "config": job.to_dict()})
    return storage.exists(storage.join(paths.model_uri(job), "_SUCCESS"))


def train(job: JobConfig, task: Task, show_progress: bool = True) -> TrainResult:
    """Train ``job`` (of ``task``) on its committed dataset, resuming from the newest committed checkpoint."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked loader workers; the CLI sets it too
    started = time.time()
    stop = stop_request()
    stop.install()  # the CLI installs it earlier; here for library callers
    try:
        with contextlib.ExitStack() as cleanup:
            return _train(job, task, show_progress, stop, started, cleanup)
    finally:
        stop.restore()


def hold_lease(acc: Any, run_uri: str) -> RunLease | None:
    """Rank 0 takes the run's lease (one trainer per run); every rank raises LeaseHeld when it could not."""
    from accelerate.utils import broadcast_object_list

    lease, refused = None, [None]
    if acc.is_main_process:
        try:
            lease = RunLease(run_uri).acquire()
        except LeaseHeld as exc:
            refused = [str(exc)]
    if acc.num_processes > 1:
        broadcast_object_list(refused)
    if refused[0]:
        raise LeaseHeld(refused[0])
    return lease


def _train(job: JobConfig, task: Task, show_progress: bool, stop: Any, started: float,
           cleanup: contextlib.ExitStack) -> TrainResult:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    cfg = job.train
    run_uri = paths.run_uri(job)
    scratch = storage.cache_dir() / "scratch" / job.name
    tracking = Tracking.for_job(job, run_uri, scratch)
    acc = make_accelerator(job, log_with=tracking.trackers if tracking else None)
    deepspeed = job.deepspeed.enabled
    manifest = open_dataset(location.dataset_uri(job, task))
    if check_run(job, run_uri, acc.is_main_process):
        metrics = storage.read_json(storage.join(run_uri, "metrics.json"))
        return TrainResult(run_uri, paths.model_uri(job), metrics["train"]["steps"], metrics["train"]["steps"],
                           None, 0.0, metrics["train"].get("final_eval", {}), metrics["train"], True)
    lease = hold_lease(acc, run_uri)
    if lease is not None:
        cleanup.callback(lease.release)
    acc.wait_for_everyone()

    tokenizer = load_tokenizer(manifest)
    set_seed(cfg.seed)
    model = task.build_model(job, manifest, tokenizer)
    step_loss = speed.prepare(job, acc, model, task.loss, task.head_batch)
    collate = task.collator(tokenizer, model)
    train_ds = model_inputs(task, load_split(manifest, "train"))
    eval_ds = model_inputs(task, load_split(manifest, "eval"))
    grouped = task.groups_by_length if cfg.group_by_length is None else cfg.group_by_length
    sampler = EpochSampler(len(train_ds), cfg.seed, row_lengths(train_ds) if grouped else None, cfg.batch_size)
    acc.print(batch_order(grouped, sampler.grouped, cfg.group_by_length is None))
    # Grouped batches keep every loss position's weight what a random batch gives it (see TokenWeight).
    token_weight = TokenWeight.for_split(train_ds, cfg.batch_size) if sampler.grouped else None
    # A loader-owned generator: creating an iterator must not draw from the global RNG, or a run
    # resumed mid-epoch would see different dropout masks than the uninterrupted run.
    loader_rng = torch.Generator()
    workers = worker_options(cfg.num_workers)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                          drop_last=False, generator=loader_rng, **workers)
    eval_dl = DataLoader(eval_ds, batch_size=job.evaluate.batch_size, collate_fn=collate, **workers)
    optimizer = make_optimizer(model, cfg, fused=not deepspeed)
    model, optimizer, train_dl, eval_dl = acc.prepare(model, optimizer, train_dl, eval_dl)

    # Sized after prepare(): the loader's length is per process.
    micro_per_epoch = len(train_dl)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    scheduler = get_scheduler(cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    acc.register_for_checkpointing(scheduler)
    eval_every = _interval(cfg.eval_every, steps_per_epoch)
    save_every = _interval(cfg.save_every, steps_per_epoch)

    scratch.mkdir(parents=True, exist_ok=True)
    store = CheckpointStore(run_uri, scratch)
    history: dict[str, Any] = {"train_loss": [], "eval": [], "steps_per_epoch": steps_per_epoch,
                               "total_steps": total_steps, "processes": acc.num_processes,
                               "effective_batch": cfg.batch_size * cfg.grad_accum * acc.num_processes}
    step, resumed_from = 0, store.latest()
    if resumed_from is not None:
        state = store.load(acc, resumed_from)
        step, history = state["step"], state["history"]
        acc.print(f"resumed from committed checkpoint step {step} of {total_steps}")
    if stop.agreed(acc):  # SIGTERM while loading: nothing new to save
        raise TrainingInterrupted(step, None, during="loading", signum=stop.signum)
    if tracking is not None:
        tracking.start(acc)
        cleanup.push(lambda kind, _exc, _tb: tracking.finish(  # type: ignore[union-attr]
            "FINISHED" if kind is None else "KILLED" if issubclass(kind, TrainingInterrupted) else "FAILED"))
    throughput = Throughput(history["effective_batch"], step)
    ctx = EvalContext(acc, job, manifest, tokenizer, show_progress, should_stop=lambda: stop.agreed(acc))

    def run_eval(at: int) -> dict[str, Any]:
        """Evaluate at step ``at``; on SIGTERM during it, commit step ``at`` with the evaluation pending."""
        # The evaluation must not move the training RNG (its loader draws a seed from it): a resumed run
        # that repeats an interrupted evaluation would otherwise see other dropout masks afterwards.
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices):
                metrics = task.evaluate(ctx, model, eval_dl)
        except EvaluationInterrupted:
            history["pending_eval"] = at
            uri = None
            if at > 0:
                checkpoint(at)
                uri = storage.join(store.uri, f"step-{at:08d}")
            bar.close()
            raise TrainingInterrupted(at, uri, during="evaluation", signum=stop.signum) from None
        history.pop("pending_eval", None)
        history["eval"].append({"step": at, **{k: v for k, v in metrics.items() if not isinstance(v, dict)}})
        if tracking is not None:
            tracking.log(scalars(metrics, "eval"), at)
        acc.print(f"step {at}/{total_steps} eval: {task.summary(metrics)}")
        model.train()
        return metrics

    def checkpoint(at: int) -> None:
        store.save(acc, at, {"step": at, "history": history}, cfg.keep_checkpoints)
        if tracking is not None:
            tracking.commit()

    bar = tqdm(total=total_steps, initial=step, desc=f"train {job.task}", unit="step",
               disable=not (show_progress and acc.is_main_process))
    final_eval: dict[str, Any] = {}
    if cfg.eval_before_training and step == 0 and not any(e["step"] == 0 for e in history["eval"]):
        history["before_training"] = run_eval(0)
    if history.get("pending_eval") == step and step > 0:  # interrupted by SIGTERM before the checkpoint
        final_eval = run_eval(step)
    model.train()
    loss_sum = torch.zeros((), device=acc.device)
    loss_count = 0
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        loader_rng.manual_seed(cfg.seed * 7919 + epoch)  # worker seeds depend on the epoch only
        skip = done_in_epoch * cfg.grad_accum
        loader = acc.skip_first_batches(train_dl, skip) if skip else train_dl
        # Accelerate's loaders call set_epoch(<their own iteration count>) on the sampler at every __iter__:
        # a loader first iterated after a resume would replay epoch 0's order. Tell it the real epoch.
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        micro = skip
        window = _window(micro, micro_per_epoch, cfg.grad_accum)
        for batch in loader:
            micro += 1
            boundary = micro % cfg.grad_accum == 0 or micro == micro_per_epoch
            sync = contextlib.nullcontext() if boundary else acc.no_sync(model)
            with sync:
                loss = step_loss(model, batch)
                objective = token_weight(loss, batch) if token_weight is not None else loss
                if not bool(torch.isfinite(loss.detach())):  # free on CPU; one scalar copy per micro-batch on GPU
                    raise _nonfinite("loss", float(loss.detach()), task, model, batch, acc, run_uri, step, micro,
                                     sampler, cfg.batch_size, epoch)
                if deepspeed:
                    # DeepSpeed steps (and clips) inside backward at the boundary we tell it, and divides
                    # the loss by grad_accum itself: rescale for a short last window of the epoch.
                    acc.gradient_state._set_sync_gradients(boundary)
                    acc.backward(objective * cfg.grad_accum / window)
                else:
                    acc.backward(objective / window)
            loss_sum += objective.detach()
            loss_count += 1
            if step == 0 and micro == 1 and "initial_loss" not in history:  # one host sync, once per run
                from nlpjobs.train.smoke import initial_loss_check

                history["initial_loss"] = initial_loss_check(task, acc.unwrap_model(model), batch, loss.item(),
                                                             random_init=job.model.name.startswith("scratch:"))
            if not boundary:
                continue
            if cfg.max_grad_norm is not None and not deepspeed:
                norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if norm is not None and not bool(torch.isfinite(norm)):
                    raise _nonfinite("gradient norm", float(norm), task, model, batch, acc, run_uri, step, micro,
                                     sampler, cfg.batch_size, epoch)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            window = _window(micro, micro_per_epoch, cfg.grad_accum)
            if step % cfg.log_every == 0 or step == total_steps:
                mean = acc.reduce(loss_sum / max(loss_count, 1), reduction="mean").item()
                history["train_loss"].append({"step": step, "loss": mean, "lr": scheduler.get_last_lr()[0]})
                if tracking is not None:
                    tracking.log({"train/loss": mean, "train/learning_rate": scheduler.get_last_lr()[0],
                                  "train/samples_per_second": throughput(step)}, step)
                bar.set_postfix(loss=f"{mean:.4f}")
                loss_sum.zero_()
                loss_count = 0
            if eval_every and (step % eval_every == 0 or step == total_steps):
                final_eval = run_eval(step)
            stopping = step < total_steps and stop.agreed(acc, step % cfg.log_every == 0)
            if (save_every and step % save_every == 0) or step == total_steps or stopping:
                checkpoint(step)
            if stopping:
                bar.close()
                raise TrainingInterrupted(step, storage.join(store.uri, f"step-{step:08d}"), signum=stop.signum)
            if step >= total_steps:
                break
    bar.close()
    if not final_eval and eval_every and history["eval"] and history["eval"][-1]["step"] == step:
        final_eval = history["eval"][-1]
    # What trained it goes into metrics.json's train section and the model card (docs/design.md, "The model card").
    record = {**history, "steps": step, "final_eval": final_eval, "environment": model_card.environment(acc)}
    model_out = export_model(acc, model, tokenizer, job, scratch, card=lambda unwrapped: model_card.training_card(
        job, task, manifest, {**record, "seconds": time.time() - started}, unwrapped))
    if acc.is_main_process:
        record["seconds"] = time.time() - started
        write_train_report(run_uri, record, task, job.name)
    acc.wait_for_everyone()
    return TrainResult(run_uri, model_out, step, total_steps, resumed_from, time.time() - started,
                       final_eval, history)


def _nonfinite(what: str, value: float, task: Task, model: Any, batch: Any, acc: Any, run_uri: str, step: int,
               micro: int, sampler: EpochSampler, batch_size: int, epoch: int) -> Exception:
    """The sentinel's error, with the offending batch's rows traced back to training rows."""
    from nlpjobs.train.sentinel import stop

    order = sampler.order().tolist() if sampler.epoch == epoch else []
    batch_index = (micro - 1) * acc.num_processes + acc.process_index  # Accelerate deals batches round-robin
    rows = order[batch_index * batch_size:(batch_index + 1) * batch_size] or None
    return stop(what=what, value=value, task=task, model=acc.unwrap_model(model), batch=batch, run_uri=run_uri,
                step=step, micro=micro, rank=acc.process_index, example_rows=rows)


def _interval(value: str, steps_per_epoch: int) -> int:
    if value == "never":
        return 0
    return steps_per_epoch if value == "epoch" else int(value)


def _window(micro_done: int, micro_per_epoch: int, grad_accum: int) -> int:
    """Micro-batches in the accumulation window starting after ``micro_done`` (the last one may be short)."""
    return min(grad_accum, micro_per_epoch - micro_done) or grad_accum


def export_model(acc: Any, model: Any, tokenizer: Any, job: JobConfig, scratch: Path,
                 card: Callable[[Any], Any] | None = None) -> str:
    """Save the final model + tokenizer in Hugging Face format to <run>/model/ and mark it complete; ``card(model)``
    is its model card (README.md, in the folder before _SUCCESS)."""
    target = paths.model_uri(job)
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(model)
    state_dict = acc.get_state_dict(model)  # collective: gathers ZeRO-3 partitions
    if acc.is_main_process:
        local = scratch / f"model-{uuid.uuid4().hex[:8]}"
        unwrapped.save_pretrained(str(local), state_dict=state_dict, save_function=acc.save)
        tokenizer.save_pretrained(str(local))
        if card is not None:
            try:
                (local / model_card.README).write_text(str(card(unwrapped)), encoding="utf-8")
            except Exception as exc:  # noqa: BLE001 - a card must not cost the trained model; evaluate writes it
                log.warning("model card not written (%s: %s); `nlpjobs evaluate` writes it", type(exc).__name__, exc)
        storage.remove(target)
        storage.upload(local, target)
        storage.write_bytes(storage.join(target, "_SUCCESS"), b"")
        shutil.rmtree(local, ignore_errors=True)
    acc.wait_for_everyone()
    return target


def write_train_report(run_uri: str, record: dict[str, Any], task: Task, run_name: str) -> None:
    from nlpjobs.report import loss_curve_png, update_metrics

    update_metrics(run_uri, "train", record)
    png = loss_curve_png(record, task.headline_metric, task.name, run_name)
    if png:
        storage.write_bytes(storage.join(run_uri, "loss_curve.png"), png)
