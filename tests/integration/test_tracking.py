"""Experiment tracking: TensorBoard event files under the run and a real MLflow tracking server, both across
a SIGKILL and a resume (each logged step exactly once), and nothing imported when no tracker is named."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clitools import cli, job_file
from mlflowserver import MlflowServer

pytestmark = pytest.mark.slow
STEPS, SAVE_EVERY, EVAL_EVERY = 24, 6, 12


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tracking")
    path = job_file(tmp, "jobs/local/ner.yaml", f"file://{tmp / 'store'}", name="tracked",
                    data={"max_train_examples": 64, "max_eval_examples": 16},
                    train={"max_steps": STEPS, "batch_size": 2, "save_every": str(SAVE_EVERY),
                           "eval_every": str(EVAL_EVERY), "log_every": 1, "warmup_steps": 0})
    cli("preprocess", "-c", str(path))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NLPJOBS_", "MLFLOW_")) or k == "NLPJOBS_CACHE"}
    return {**env, "TOKENIZERS_PARALLELISM": "false", "NLPJOBS_LEASE_TTL_S": "4", **extra}


def _committed(run: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*/_COMMITTED"))


def test_tensorboard_and_mlflow_continue_across_a_kill(job: Path, mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    run = job.parent / "store" / "runs" / "tracked"
    cmd = [sys.executable, "-m", "nlpjobs", "train", "-q", "-c", str(job), "--set", "track=[tensorboard, mlflow]"]
    env = _env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _committed(run):  # SIGKILL right after the first checkpoint commit, mid-way to the next one
        assert first.poll() is None, first.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no checkpoint committed in 300 s"
        time.sleep(0.02)
    time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert _committed(run)[-1] < STEPS, "the first run finished before it could be killed"
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed from committed checkpoint step" in resumed.stdout + resumed.stderr

    evaluated = subprocess.run([sys.executable, "-m", "nlpjobs", "evaluate", "-q", "-c", str(job), "--set",
                                "track=[tensorboard, mlflow]"], env=env, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    evaluation = json.loads((run / "metrics.json").read_text())["evaluate"]

    # TensorBoard: the event reader sees every step once, whichever process logged it.
    board = EventMultiplexer().AddRunsFromDirectory(str(run / "tracking" / "tensorboard"))
    board.Reload()
    series: dict[str, list[int]] = {}
    for name, tags in board.Runs().items():
        for tag in tags["scalars"]:
            series.setdefault(tag, []).extend(e.step for e in board.Scalars(name, tag))
    assert sorted(series["train/loss"]) == list(range(1, STEPS + 1))
    assert sorted(series["train/learning_rate"]) == list(range(1, STEPS + 1))
    assert sorted(series["eval/overall_f1"]) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert series["evaluate/overall_f1"] == [STEPS]  # the evaluate stage, at the trained step

    # MLflow: one run named after the run id, read back through the client, each step once, the config as params.
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("nlpjobs-ner")
    runs = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'tracked'")
    assert len(runs) == 1
    flow = runs[0]
    summary = resumed.stdout + resumed.stderr  # the train summary says where the curves are
    assert f"mlflow: {mlflow_server.uri}/#/experiments/{experiment.experiment_id}/runs/{flow.info.run_id}" in summary
    assert f"tensorboard: file://{run}/tracking/tensorboard" in summary
    assert flow.info.status == "FINISHED"
    assert flow.data.params["train.max_steps"] == str(STEPS)
    assert flow.data.params["task"] == "ner"
    losses = client.get_metric_history(flow.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))
    f1 = client.get_metric_history(flow.info.run_id, "eval/overall_f1")
    assert sorted(m.step for m in f1) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert all(m.value > 0 for m in client.get_metric_history(flow.info.run_id, "train/samples_per_second"))
    evaluate_f1 = client.get_metric_history(flow.info.run_id, "evaluate/overall_f1")
    assert [(m.step, m.value) for m in evaluate_f1] == [(STEPS, pytest.approx(evaluation["overall_f1"]))]
    # the curves of both trackers are the training history's
    history = json.loads((run / "metrics.json").read_text())["train"]["train_loss"]
    by_step = {m.step: m.value for m in losses}
    assert all(abs(by_step[p["step"]] - p["loss"]) < 1e-5 for p in history)


def test_no_tracker_needs_no_tracking_package(job: Path) -> None:
    """Without `track`, training runs with tensorboard and mlflow unimportable (as where they are not installed)
    and nlpjobs starts no writer. (DeepSpeed, when installed, tries `import mlflow` itself and carries on
    without it: that is why the packages are blocked here rather than looked for in sys.modules.)"""
    code = ("import sys\nfor name in ('tensorboard', 'tensorboardX', 'mlflow'):\n    sys.modules[name] = None\n"
            "from nlpjobs.cli import main\n"
            "try:\n    main(['train', '-q', '-c', sys.argv[1], '--set', 'name=untracked'])\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('WRITER', 'torch.utils.tensorboard' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(job)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WRITER False" in proc.stdout, proc.stdout[-2000:]
    run = job.parent / "store" / "runs" / "untracked"
    assert (run / "model" / "_SUCCESS").exists()
    assert not (run / "tracking").exists()


def test_an_unreachable_mlflow_server_is_one_error_line(job: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    env = _env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed}", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
               MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    proc = subprocess.run([sys.executable, "-m", "nlpjobs", "train", "-q", "-c", str(job), "--set", "name=offline",
                           "--set", "track=[mlflow]"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: tracking: the trackers mlflow could not start at "
                                                     f"MLFLOW_TRACKING_URI=http://127.0.0.1:{closed}")
    assert "Traceback" not in proc.stderr
