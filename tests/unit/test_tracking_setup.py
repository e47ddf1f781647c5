"""The `track` setting: checked before training, with messages that say what to install or set."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlpjobs.config import ConfigError
from nlpjobs.jobfile import load_job
from nlpjobs.train.tracking import Throughput, check_available, flat_config, scalars

ROOT = Path(__file__).resolve().parents[2]


def test_track_takes_known_trackers_only() -> None:
    assert load_job(ROOT / "jobs/local/ner.yaml", ["track=[tensorboard, mlflow]"]).track == ["tensorboard", "mlflow"]
    assert load_job(ROOT / "jobs/local/ner.yaml").track == []
    with pytest.raises(ConfigError, match=r"track\[0\]: got 'wandb', allowed values are 'tensorboard', 'mlflow'"):
        load_job(ROOT / "jobs/local/ner.yaml", ["track=[wandb]"])


def test_mlflow_needs_a_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml", ["track=[mlflow]"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="track: mlflow needs MLFLOW_TRACKING_URI"):
        check_available(job)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    check_available(job)


def test_a_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    job = load_job(ROOT / "jobs/local/ner.yaml", ["track=[tensorboard]"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"track: tensorboard is not installed.*nlpjobs\[track\]"):
        check_available(job)


def test_config_is_flattened_to_scalars() -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml", ["track=[tensorboard]"])
    flat = flat_config(job.to_dict())
    assert flat["train.learning_rate"] == job.train.learning_rate
    assert flat["data.max_train_examples"] == 3000
    assert flat["train.max_steps"] == "null"
    assert flat["track"] == '["tensorboard"]'
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_scalars_keep_numbers_only() -> None:
    metrics = {"overall_f1": 0.5, "examples": 16, "per_entity": {"LOC": {}}, "text": "x", "flag": True}
    assert scalars(metrics, "eval") == {"eval/overall_f1": 0.5, "eval/examples": 16.0}


def test_throughput_counts_samples_between_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    import nlpjobs.train.tracking as tracking

    clock = iter([10.0, 12.0, 13.0])
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: next(clock))
    rate = Throughput(samples_per_step=8, step=0)
    assert rate(4) == pytest.approx(16.0)   # 4 steps x 8 samples in 2 s
    assert rate(6) == pytest.approx(16.0)   # 2 steps x 8 samples in 1 s
