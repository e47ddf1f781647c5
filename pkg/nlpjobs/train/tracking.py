"""Experiment tracking through Accelerate's trackers: TensorBoard and MLflow, named in the job's ``track``.

Only rank 0 logs (Accelerate's trackers act on the main process). What is logged: the resolved job config
once per run, and at every ``train.log_every`` step the training loss, learning rate and throughput, plus
every evaluation's metrics, all against the optimizer step.

A resumed run continues the same curves without logging a step twice:
- TensorBoard writes event files in the node's scratch folder; they are uploaded to
  ``<run>/tracking/tensorboard/`` right after each checkpoint commit, so the copy on object storage always ends
  at a committed step. A resumed run starts from that copy and replays from the committed step, and the events
  a killed process wrote after it (never uploaded, or left in a local scratch folder) are dropped.
- MLflow logs live to its server. The run's id is kept in ``<run>/tracking/mlflow.json``; a resumed run
  reopens that MLflow run and skips each metric up to the last step the server already holds (the replayed
  steps recompute the same values).
The evaluate stage adds its metrics (``evaluate/<metric>``, at the trained step) to the same TensorBoard folder
(one event file of its own, replaced when evaluation runs again) and the same MLflow run.
Nothing here imports tensorboard or mlflow unless the job names them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from nlpjobs import storage
from nlpjobs.config import ConfigError, JobConfig

log = logging.getLogger(__name__)
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""The module each tracker needs (`pip install nlpjobs[track]` installs tensorboard and mlflow-skinny)."""


class TrackingError(RuntimeError):
    """A tracker named in the job could not start (e.g. the MLflow server is unreachable or refuses the run)."""


def tracking_uri(run_uri: str) -> str:
    return storage.join(run_uri, "tracking")


def check_available(job: JobConfig) -> None:
    """Every tracker the job names can run here: its package is installed (looked up, not imported) and MLflow
    has a server to talk to. ConfigError otherwise, before any training."""
    for name in job.track:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"track: {name} is not installed in this environment; install it with "
                              f"`pip install 'nlpjobs[track]'` (or `pip install {PACKAGES[name]}`), or remove "
                              f"{name} from track")
    if "mlflow" in job.track and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("track: mlflow needs MLFLOW_TRACKING_URI in the environment (e.g. http://mlflow:5000, or "
                          "file:./mlruns for a local folder); set it (the chart's tracking.mlflow.uri does) or "
                          "remove mlflow from track")


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested job config as ``section.key`` scalars (what TensorBoard's hparams and MLflow's params take)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = "null" if value is None else value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric entries of ``metrics`` as ``<prefix>/<name>`` (nested reports and texts are left out)."""
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracking:
    """The trackers of one training run: created before the Accelerator (``trackers`` is its ``log_with``),
    started once the resume point is known, synced after each checkpoint commit, finished at the end."""

    def __init__(self, job: JobConfig, run_uri: str, scratch: Path) -> None:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        self.job = job
        self.uri = tracking_uri(run_uri)
        self.tensorboard_dir = scratch / "tensorboard"
        self.trackers: list[Any] = []
        self.mlflow_run_id: str | None = None
        self.logged_until: dict[str, int] = {}  # MLflow: metric -> last step the server holds
        self.is_main = False
        self.failed: set[str] = set()  # trackers that failed to log (warned once)
        names = list(dict.fromkeys(job.track))
        if "tensorboard" in names:
            self.trackers.append(TensorBoardTracker(job.name, str(self.tensorboard_dir)))
        if "mlflow" in names:
            record = storage.join(self.uri, "mlflow.json")
            self.mlflow_run_id = storage.read_json(record)["run_id"] if storage.exists(record) else None
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"nlpjobs-{job.task}"
            self.trackers.append(MLflowTracker(experiment_name=experiment, run_id=self.mlflow_run_id,
                                               run_name=job.name, tags={"nlpjobs.run": job.name,
                                                                        "nlpjobs.task": job.task}))

    @classmethod
    def for_job(cls, job: JobConfig, run_uri: str, scratch: Path) -> Tracking | None:
        if not job.track:
            return None
        check_available(job)
        return cls(job, run_uri, scratch)

    def _tracker(self, name: str) -> Any | None:
        return next((t for t in self.trackers if t.name == name), None)

    def start(self, acc: Any) -> None:
        """Start every tracker on rank 0: TensorBoard from the committed copy of its events, MLflow in the run's
        MLflow run (created now, or reopened); the job config is recorded once per run."""
        self.is_main = acc.is_main_process
        if not self.is_main:
            return
        board = self._tracker("tensorboard")
        fresh_board = True
        if board is not None:
            local = self.tensorboard_dir / self.job.name
            shutil.rmtree(local, ignore_errors=True)  # a killed process's events past the last commit
            committed = storage.join(self.uri, "tensorboard")
            if storage.exists(committed) and storage.listdir(committed):
                storage.download(committed, local)
                fresh_board = False
        try:
            acc.init_trackers(self.job.name)
        except Exception as exc:  # noqa: BLE001 - the server's client raises many kinds; one message for all
            where = f" at MLFLOW_TRACKING_URI={os.environ.get('MLFLOW_TRACKING_URI')}" if "mlflow" in self.job.track else ""
            raise TrackingError(f"the trackers {', '.join(self.job.track)} could not start{where}: "
                                f"{type(exc).__name__}: {str(exc)[:300]}; check the server and its credentials, or "
                                "remove the tracker from track (the run resumes where it stopped)") from exc
        config = flat_config(self.job.to_dict())
        if board is not None and fresh_board:
            board.store_init_configuration(config)
        flow = self._tracker("mlflow")
        if flow is not None:
            run_id = flow.active_run.info.run_id
            if self.mlflow_run_id is None:
                storage.write_json(storage.join(self.uri, "mlflow.json"),
                                   {"run_id": run_id, "experiment_id": flow.active_run.info.experiment_id,
                                    "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")})
                flow.store_init_configuration(config)
            else:
                self.logged_until = mlflow_last_steps(run_id)
            self.mlflow_run_id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        """Log ``values`` at ``step`` to every tracker (rank 0; MLflow skips what its server already holds)."""
        if not self.is_main or not values:
            return
        for tracker in self.trackers:
            if tracker.name == "mlflow":
                values = {k: v for k, v in values.items() if step > self.logged_until.get(k, -1)}
                if not values:
                    continue
            try:
                tracker.log(values, step=step)
            except Exception as exc:  # noqa: BLE001 - an unreachable tracking server must not stop training
                if tracker.name not in self.failed:
                    log.warning("%s: logging step %d failed (%s); training goes on, later steps are still sent",
                                tracker.name, step, exc)
                self.failed.add(tracker.name)

    def commit(self) -> None:
        """After a checkpoint commit: the TensorBoard events so far, flushed and uploaded under the run."""
        board = self._tracker("tensorboard") if self.is_main else None
        if board is None:
            return
        board.writer.flush()
        storage.upload(self.tensorboard_dir / self.job.name, storage.join(self.uri, "tensorboard"))

    def finish(self, status: str) -> None:
        """Close every tracker; MLflow's run ends with ``status`` (FINISHED, KILLED when stopped to resume
        later, FAILED)."""
        if not self.is_main:
            return
        for tracker in self.trackers:
            try:
                if tracker.name == "mlflow":
                    import mlflow

                    mlflow.end_run(status=status)
                else:
                    tracker.finish()
            except Exception as exc:  # noqa: BLE001 - a tracker that cannot close must not hide the run's outcome
                log.warning("closing the %s tracker failed: %s", tracker.name, exc)


def where(job: JobConfig, run_uri: str) -> list[str]:
    """Where the run's trackers put its curves, for the end-of-stage summary (reads only the run's records)."""
    lines = []
    if "tensorboard" in job.track:
        lines.append(f"tensorboard: {storage.join(tracking_uri(run_uri), 'tensorboard')}")
    record = storage.join(tracking_uri(run_uri), "mlflow.json")
    if "mlflow" in job.track and storage.exists(record):
        info = storage.read_json(record)
        server = (info.get("tracking_uri") or "").rstrip("/")
        link = (f"{server}/#/experiments/{info['experiment_id']}/runs/{info['run_id']}"
                if server.startswith("http") else f"run {info['run_id']} in {server}")
        lines.append(f"mlflow: {link}")
    return lines


class Throughput:
    """Training samples per second between two logged steps."""

    def __init__(self, samples_per_step: int, step: int) -> None:
        self.samples_per_step = samples_per_step
        self.step, self.time = step, time.perf_counter()

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) * self.samples_per_step / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return rate


def mlflow_last_steps(run_id: str) -> dict[str, int]:
    """For each metric of an MLflow run, the last step its server holds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1) for key in keys}


EVALUATION_EVENTS = "events.out.tfevents.evaluate"
"""The evaluate stage's event file under <run>/tracking/tensorboard/ (one name: a repeated evaluation replaces it)."""


def record_evaluation(job: JobConfig, run_uri: str, metrics: dict[str, Any], step: int, scratch: Path) -> None:
    """The evaluate stage's metrics, as ``evaluate/<name>`` at the trained ``step``, in the run's trackers
    (rank 0 only: the caller's). MLflow keeps the first value logged at a step."""
    if not job.track:
        return
    try:
        check_available(job)
        _record_evaluation(job, run_uri, scalars(metrics, "evaluate"), step, scratch)
    except Exception as exc:  # noqa: BLE001 - metrics.json has them; a tracker outage must not fail evaluation
        log.warning("tracking: the evaluation metrics were not recorded (%s): %s", type(exc).__name__, exc)


def _record_evaluation(job: JobConfig, run_uri: str, values: dict[str, float], step: int, scratch: Path) -> None:
    uri = tracking_uri(run_uri)
    if "tensorboard" in job.track:
        from torch.utils.tensorboard import SummaryWriter

        local = scratch / "evaluate-events"
        shutil.rmtree(local, ignore_errors=True)
        writer = SummaryWriter(str(local))
        for key, value in values.items():
            writer.add_scalar(key, value, step)
        writer.close()
        events = next(local.glob("events.out.tfevents.*"))
        storage.upload(events, storage.join(uri, "tensorboard", EVALUATION_EVENTS))
        shutil.rmtree(local, ignore_errors=True)
    record = storage.join(uri, "mlflow.json")
    if "mlflow" in job.track and storage.exists(record):
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        run_id = storage.read_json(record)["run_id"]
        held = mlflow_last_steps(run_id)
        now = int(time.time() * 1000)
        fresh = [Metric(key, value, now, step) for key, value in values.items() if held.get(key, -1) < step]
        if fresh:
            MlflowClient().log_batch(run_id, metrics=fresh)
