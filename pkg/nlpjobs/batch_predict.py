"""Batch prediction over a whole dataset split: ``nlpjobs batch-predict`` (docs/design.md, "Batch prediction").

The split's rows (predict.dataset.source, by default the job's data source, with the same column mapping as
training) are cut into parts of ``predict.dataset.rows_per_shard`` rows: part p holds rows [p*R, (p+1)*R). Each
part goes through the task's pipeline on the device, ``batch_size`` rows at a time, and is written as one object,
``<run>/predictions/<name>/part-00000.jsonl`` (or ``.parquet``): an S3 PUT, or a file renamed into place, so a part
exists whole or not at all and a rerun skips every part that exists. Worker i of N takes the parts p with
p % N == i (a pod of the chart's Indexed Job: i = JOB_COMPLETION_INDEX); whichever worker sees the last part
committed writes ``manifest.json`` and then ``_SUCCESS``. ``plan.json``, written before the first part, fixes what
the parts are predictions of (the rows, the source and its version, the model): a rerun with other inputs is
refused rather than mixing two datasets or two models in one output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlpjobs import __version__, paths, storage
from nlpjobs.config import ConfigError, JobConfig
from nlpjobs.data import sources
from nlpjobs.tasks import get_task
from nlpjobs.tasks.base import Task, TaskDataError
from nlpjobs.train.stop import EXIT_CODES, SIGNAL_NAMES, StopRequest
from nlpjobs.train.stop import current as stop_request

PLAN, MANIFEST, SUCCESS = "plan.json", "manifest.json", "_SUCCESS"
EXTENSIONS = {"jsonl": "jsonl", "parquet": "parquet"}


@dataclass
class Source:
    """Where the rows come from, as resolved from predict.dataset (falling back on the data section)."""

    source: str
    config_name: str | None
    revision: str | None
    split: str
    columns: dict[str, str]
    max_examples: int | None


@dataclass
class BatchResult:
    """What one worker's ``run`` did."""

    uri: str
    """The output folder: <run>/predictions/<name>/."""
    rows: int
    """Rows of the whole output (every worker's)."""
    parts: int
    """Parts of the whole output."""
    worker_index: int
    workers: int
    mine: int = 0
    """Parts this worker is responsible for."""
    written: int = 0
    """Parts this run predicted and committed."""
    skipped: int = 0
    """Parts of this worker that were already committed (by an earlier run) and left as they were."""
    rows_predicted: int = 0
    seconds: float = 0.0
    """Wall time of this run, loading included."""
    predict_seconds: float = 0.0
    """Time from the first row sent to the model to the last part committed (model and data loading excluded)."""
    load_seconds: float = 0.0
    committed: int = 0
    """Parts of the whole output committed when this run ended (by any worker)."""
    complete: bool = False
    """manifest.json and _SUCCESS are written (by this run, or earlier)."""
    already_complete: bool = False
    """The output was complete before this run started: nothing was done."""
    device: str = ""
    """Where the model ran: cpu or cuda:0 (empty when it was not loaded)."""

    @property
    def rows_per_second(self) -> float:
        return self.rows_predicted / self.predict_seconds if self.predict_seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------------ the plan


def resolve_source(job: JobConfig) -> Source:
    """predict.dataset's source, or the job's data source with its configuration, revision and columns."""
    cfg = job.predict.dataset
    if not cfg.split:
        raise ConfigError("predict.dataset.split: not set; name the split to predict, e.g. --set "
                          f"predict.dataset.split=test (of {cfg.source or job.data.source or 'data.source'}; "
                          "predict.dataset.source reads another dataset)")
    if cfg.source:
        return Source(cfg.source, cfg.config_name, cfg.revision, cfg.split, dict(cfg.columns), cfg.max_examples)
    return Source(job.data.source, cfg.config_name or job.data.config_name, cfg.revision or job.data.revision,
                  cfg.split, dict(cfg.columns or job.data.columns), cfg.max_examples)


def output_uri(job: JobConfig) -> str:
    """<storage>/runs/<name>/predictions/<predict.dataset.name, or the split>."""
    cfg = job.predict.dataset
    return storage.join(paths.run_uri(job), "predictions", cfg.name or cfg.split)


def part_name(index: int, fmt: str) -> str:
    return f"part-{index:05d}.{EXTENSIONS[fmt]}"


def part_ranges(rows: int, rows_per_part: int) -> list[tuple[int, int]]:
    """[first, end) rows of each part: consecutive, ``rows_per_part`` each, the last one shorter."""
    return [(start, min(start + rows_per_part, rows)) for start in range(0, rows, rows_per_part)]


def worker_parts(parts: int, worker_index: int, workers: int) -> list[int]:
    """The parts worker ``worker_index`` of ``workers`` takes: p % workers == worker_index (disjoint, and together
    every part)."""
    check_worker(worker_index, workers)
    return list(range(worker_index, parts, workers))


def check_worker(worker_index: int, workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers: got {workers}, must be >= 1 (the number of pods or processes sharing the parts)")
    if not 0 <= worker_index < workers:
        raise ConfigError(f"--worker-index: got {worker_index}, must be between 0 and {workers - 1} (--workers "
                          f"{workers}); in the chart's pods it is JOB_COMPLETION_INDEX")


def device_index(choice: str) -> int:
    """The pipeline's device for predict.dataset.device: -1 for the CPU, else the first GPU."""
    if choice == "cpu":
        return -1
    import torch

    if torch.cuda.is_available():
        return 0
    if choice == "cuda":
        raise ConfigError("predict.dataset.device: 'cuda', but torch sees no GPU here (CUDA_VISIBLE_DEVICES, the "
                          "driver, a CPU build of torch?); set it to auto or cpu")
    return -1


def model_fingerprint(model_uri: str) -> str:
    """Which export of the model: every file's name, size and modification time (ETag on an object store)."""
    fs, path = storage.resolve(model_uri)
    found = storage.retry(lambda: fs.find(path, detail=True), "listing", model_uri)
    files = sorted((name[len(path):], info.get("size"),
                    str(info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""))
                   for name, info in found.items())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def make_plan(job: JobConfig, src: Source, rows: int, model_uri: str) -> dict[str, Any]:
    """What the output is predictions of; ``fingerprint`` hashes all of it but the creation time."""
    cfg = job.predict.dataset
    plan: dict[str, Any] = {
        "task": job.task, "source": src.source, "config_name": src.config_name, "revision": src.revision,
        "split": src.split, "columns": src.columns, "max_examples": src.max_examples,
        "input": sources.split_fingerprint(src.source, src.split, src.revision), "rows": rows,
        "rows_per_shard": cfg.rows_per_shard, "parts": len(part_ranges(rows, cfg.rows_per_shard)),
        "format": cfg.format, "keep_columns": list(cfg.keep_columns), "model": model_uri,
        "model_fingerprint": model_fingerprint(model_uri), "preprocess": job.section_hash("preprocess"),
        "nlpjobs_version": __version__,
    }
    plan["fingerprint"] = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]
    plan["created"] = time.time()
    return plan


PLAN_WORDS = {"source": "the source", "config_name": "the dataset configuration", "revision": "the revision",
              "split": "the split", "columns": "the column mapping", "max_examples": "max_examples",
              "input": "the split's data (its file or commit)", "rows": "the number of rows",
              "rows_per_shard": "rows_per_shard", "format": "the format", "keep_columns": "keep_columns",
              "model": "the model", "model_fingerprint": "the model (it was trained or exported again)",
              "preprocess": "the preprocess settings", "nlpjobs_version": "the nlpjobs version", "task": "the task"}


def check_plan(uri: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Write ``plan`` as the output's plan.json, or check the one there: predictions of other inputs are refused
    (ConfigError naming what changed). Returns the plan in force (the earlier one, with its creation time)."""
    target = storage.join(uri, PLAN)
    if not storage.exists(target):
        storage.write_json(target, plan)
        return plan
    earlier = storage.read_json(target)
    if earlier.get("fingerprint") == plan["fingerprint"]:
        return earlier
    changed = [PLAN_WORDS.get(k, k) for k in PLAN_WORDS if earlier.get(k) != plan.get(k)] or ["its inputs"]
    raise ConfigError(f"predict.dataset: {uri} holds predictions of other inputs ({', '.join(changed)} changed since "
                      "they were written), which a rerun would mix with these; set predict.dataset.name to write "
                      "elsewhere, or delete that folder to predict again from the start")


def committed_parts(uri: str, fmt: str) -> dict[str, int]:
    """The parts present under ``uri`` (each one written whole), name -> bytes."""
    fs, path = storage.resolve(uri)
    suffix = "." + EXTENSIONS[fmt]

    def _ls() -> list[dict[str, Any]]:
        try:
            if uri.startswith("s3://"):
                return list(fs.ls(path, detail=True, refresh=True))
            return list(fs.ls(path, detail=True))
        except FileNotFoundError:
            return []

    found = storage.retry(_ls, "listing", uri)
    out = {}
    for entry in found:
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("part-") and name.endswith(suffix) and entry.get("type", "file") == "file":
            out[name] = int(entry.get("size") or 0)
    return out


# ---------------------------------------------------------------------------------------------- the parts


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (scores, token ids) as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_part(records: list[dict[str, Any]], fmt: str) -> bytes:
    """One part's bytes. jsonl: one JSON object per row. parquet: ``index`` (int64), then each other field as text
    (a string as is, anything else as JSON text; ``output`` always JSON text)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(records[0]) if records else ["index", "input", "output"]

    def text(key: str, value: Any) -> str:
        if isinstance(value, str) and key != "output":
            return value
        return json.dumps(value, ensure_ascii=False, default=_json_default)

    columns = {n: (pa.array([r[n] for r in records], pa.int64()) if n == "index" else
                   pa.array([text(n, r[n]) for r in records], pa.string())) for n in names}
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def decode_part(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """The rows of a part as written (parquet's ``output`` parsed back from JSON text)."""
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    import pyarrow.parquet as pq

    rows = pq.read_table(io.BytesIO(data)).to_pylist()
    for row in rows:
        row["output"] = json.loads(row["output"])
    return rows


def read_predictions(uri: str) -> Iterator[dict[str, Any]]:
    """Every row of a complete output, in row order (the parts in the order manifest.json lists them)."""
    if not storage.exists(storage.join(uri, SUCCESS)):
        raise ConfigError(f"{uri}: no complete predictions (no _SUCCESS); run `nlpjobs batch-predict` to the end")
    manifest = storage.read_json(storage.join(uri, MANIFEST))
    for part in manifest["parts"]:
        yield from decode_part(storage.read_bytes(storage.join(uri, part["name"])), manifest["format"])


def by_length(inputs: list[Any]) -> list[int]:
    """Positions of ``inputs``, longest first: batches of similar lengths pad less (the outputs go back to row order)."""
    def size(item: Any) -> int:
        if isinstance(item, str):
            return len(item)
        if isinstance(item, dict):
            return sum(len(v) for v in item.values() if isinstance(v, str))
        return 0

    return sorted(range(len(inputs)), key=lambda i: -size(inputs[i]))


def predict_rows(predictor: Callable[[Iterable[Any]], Iterator[Any]], inputs: list[Any],
                 on_row: Callable[[], None] | None = None) -> list[Any]:
    """The outputs of ``inputs`` in their order, predicted longest first."""
    order = by_length(inputs)
    outputs: list[Any] = [None] * len(inputs)
    produced = 0
    for position, output in zip(order, predictor(inputs[i] for i in order)):
        outputs[position] = output
        produced += 1
        if on_row is not None:
            on_row()
    if produced != len(inputs):
        raise RuntimeError(f"the pipeline gave {produced} outputs for {len(inputs)} inputs")
    return outputs


def check_columns(task: Task, ds: Any, keep: list[str], src: Source) -> None:
    """The columns the task reads and the kept ones are in the split (before the model loads)."""
    wanted = list(task.predict_columns)
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        example = f"--set predict.dataset.columns.{missing[0]}=<your column>"
        raise TaskDataError(f"{task.name}: split {src.split!r} of {src.source} lacks the column(s) {missing} batch "
                            f"prediction reads; it has {ds.column_names}. Map yours with predict.dataset.columns, "
                            f"e.g. {example}")
    lost = [c for c in keep if c not in ds.column_names]
    if lost:
        raise ConfigError(f"predict.dataset.keep_columns: {lost} not in split {src.split!r} of {src.source}; it has "
                          f"{ds.column_names}")


def write_manifest(uri: str, plan: dict[str, Any], sizes: dict[str, int], workers: int) -> dict[str, Any]:
    """manifest.json then _SUCCESS: the whole output, part by part (rows, bytes)."""
    fmt = plan["format"]
    parts = [{"name": part_name(i, fmt), "first_row": a, "rows": b - a, "bytes": sizes[part_name(i, fmt)]}
             for i, (a, b) in enumerate(part_ranges(plan["rows"], plan["rows_per_shard"]))]
    now = time.time()
    manifest = {
        "rows": plan["rows"], "parts": parts, "format": fmt, "task": plan["task"],
        "source": {k: plan[k] for k in ("source", "config_name", "revision", "split", "max_examples", "input")},
        "columns": {"mapping": plan["columns"], "kept": plan["keep_columns"],
                    "fields": ["index", "input", "output", *plan["keep_columns"]]},
        "model": plan["model"], "model_fingerprint": plan["model_fingerprint"], "fingerprint": plan["fingerprint"],
        "rows_per_shard": plan["rows_per_shard"], "workers": workers, "created": plan["created"], "completed": now,
        "seconds": round(now - plan["created"], 3),
    }
    storage.write_json(storage.join(uri, MANIFEST), manifest)
    storage.write_bytes(storage.join(uri, SUCCESS), b"")
    if uri.startswith("file://"):  # the temporary file of a part whose writer was killed mid-write, if any
        for leftover in Path(storage.resolve(uri)[1]).glob(".part-*.tmp"):
            leftover.unlink(missing_ok=True)
    return manifest


# ------------------------------------------------------------------------------------------------ the run


class PredictionInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C stopped batch prediction once the part in progress was committed; a rerun predicts
    the parts still missing."""

    def __init__(self, result: BatchResult, signum: int) -> None:
        super().__init__(f"stopped by {SIGNAL_NAMES[signal.Signals(signum)]} after {result.written} part(s) written "
                         f"by this run: {result.committed} of {result.parts} part(s) committed at {result.uri}. "
                         "Rerun the same command to predict the rest.")
        self.result = result
        self.exit_code = EXIT_CODES[signal.Signals(signum)]


def run(job: JobConfig, worker_index: int = 0, workers: int = 1, show_progress: bool = True,
        log: Callable[[str], None] | None = None) -> BatchResult:
    """Predict this worker's uncommitted parts; the worker that sees every part committed writes the manifest.
    SIGTERM or Ctrl-C stops it once the part in progress is committed (:class:`PredictionInterrupted`)."""
    stop = stop_request()
    stop.install("once the part in progress is committed")
    try:
        return _run(job, worker_index, workers, show_progress, log or (lambda message: None), stop)
    finally:
        stop.restore()


def _run(job: JobConfig, worker_index: int, workers: int, show_progress: bool, say: Callable[[str], None],
         stop: StopRequest) -> BatchResult:
    from nlpjobs import stages

    started = time.time()
    check_worker(worker_index, workers)
    cfg = job.predict.dataset
    task = get_task(job.task)
    if not task.predict_columns:
        raise ConfigError(f"task: batch prediction over a dataset is not supported for {job.task}: "
                          f"{task.batch_predict_unsupported}")
    src = resolve_source(job)
    uri = output_uri(job)
    model_uri = paths.model_uri(job)
    if not storage.exists(storage.join(model_uri, SUCCESS)):
        raise ConfigError(f"no trained model at {model_uri}: run `nlpjobs train` with the same config first")
    device = device_index(cfg.device)
    ds = sources.load_split(src.source, src.split, src.config_name, src.revision, src.columns)
    check_columns(task, ds, list(cfg.keep_columns), src)
    rows = min(len(ds), src.max_examples) if src.max_examples else len(ds)
    if rows == 0:
        raise TaskDataError(f"{task.name}: split {src.split!r} of {src.source} has no rows to predict")
    ranges = part_ranges(rows, cfg.rows_per_shard)
    result = BatchResult(uri, rows, len(ranges), worker_index, workers)
    plan = make_plan(job, src, rows, model_uri)
    if storage.exists(storage.join(uri, SUCCESS)):
        check_plan(uri, plan)  # complete, but of these inputs?
        result.committed = result.parts
        result.complete = result.already_complete = True
        result.seconds = time.time() - started
        return result
    plan = check_plan(uri, plan)
    done = committed_parts(uri, cfg.format)
    mine = worker_parts(len(ranges), worker_index, workers)
    todo = [p for p in mine if part_name(p, cfg.format) not in done]
    result.mine, result.skipped = len(mine), len(mine) - len(todo)
    if result.skipped:
        say(f"batch-predict: {result.skipped} of this worker's {len(mine)} part(s) already committed: skipped")
    if todo:
        model_dir = stages.fetch_model(job)
        predictor = task.batch_predictor(str(model_dir), device, cfg.batch_size)
        result.device = "cpu" if device < 0 else f"cuda:{device}"
        result.load_seconds = time.time() - started
        total = sum(ranges[p][1] - ranges[p][0] for p in todo)
        columns = [*task.predict_columns, *(c for c in cfg.keep_columns if c not in task.predict_columns)]
        table = ds.select_columns(columns).with_format("arrow")
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="batch-predict", unit="rows", disable=not show_progress, dynamic_ncols=True)
        predict_started = time.time()
        try:
            for p in todo:
                if stop.requested:
                    result.committed = _committed_count(uri, cfg.format, len(ranges))
                    raise PredictionInterrupted(result, stop.signum)
                first, end = ranges[p]
                values = table[first:end].to_pydict()
                inputs = task.dataset_inputs(job, {c: values[c] for c in task.predict_columns}, first)
                outputs = predict_rows(predictor, inputs, lambda: bar.update(1))
                records = [{"index": first + i, "input": x, "output": y,
                            **{c: values[c][i] for c in cfg.keep_columns}}
                           for i, (x, y) in enumerate(zip(inputs, outputs))]
                storage.write_bytes(storage.join(uri, part_name(p, cfg.format)), encode_part(records, cfg.format))
                result.written += 1
                result.rows_predicted += end - first
                bar.set_postfix_str(f"part {p + 1}/{len(ranges)} committed", refresh=False)
        finally:
            bar.close()
            result.predict_seconds = time.time() - predict_started
    done = committed_parts(uri, cfg.format)
    result.committed = _committed_count(uri, cfg.format, len(ranges), done)
    if result.committed == len(ranges):
        write_manifest(uri, plan, done, workers)
        result.complete = True
    result.seconds = time.time() - started
    return result


def _committed_count(uri: str, fmt: str, parts: int, done: dict[str, int] | None = None) -> int:
    done = committed_parts(uri, fmt) if done is None else done
    return sum(1 for p in range(parts) if part_name(p, fmt) in done)


def summary(result: BatchResult) -> str:
    """The one line the CLI prints at the end."""
    if result.already_complete:
        return (f"batch-predict: already complete: {result.rows:,} rows in {result.parts} part(s) at {result.uri} "
                "(nothing to do)")
    who = f" (worker {result.worker_index} of {result.workers})" if result.workers > 1 else ""
    rate = f", {result.rows_per_second:,.1f} rows/s on {result.device}" if result.rows_predicted else ""
    line = (f"batch-predict{who}: {result.rows_predicted:,} rows predicted in {result.written} part(s) written, "
            f"{result.skipped} skipped (committed before), in {result.seconds:.1f}s{rate}")
    if result.complete:
        return f"{line}; all {result.rows:,} rows in {result.parts} part(s): {result.uri} (manifest.json, _SUCCESS)"
    return (f"{line}; {result.committed} of {result.parts} part(s) committed at {result.uri}: the other workers' "
            "parts are still to come (the last to commit writes manifest.json and _SUCCESS)")


def as_dict(result: BatchResult) -> dict[str, Any]:
    out = dataclasses.asdict(result)
    out["rows_per_second"] = result.rows_per_second
    return out

