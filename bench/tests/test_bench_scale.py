"""The scale figure's training part (bench.scale): the launch command for 1 vs 2 processes, the
threads each gets, the run's report check, the throughput of steps 2..N from the processes' meters, and the
metered CLI (with a fake CLI and collator). No training is launched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import scale
from bench.training import Meter


def test_one_process_is_the_plain_cli_two_go_through_torchrun(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    one = scale.train_command(job, "run-a", 30, 1)
    assert one == [sys.executable, "-m", "bench.scale", "train", "-q", "-c", str(job),
                   "--set", "name=run-a", "--set", "train.max_steps=30"]
    two = scale.train_command(job, "run-b", 30, 2)
    cut = two.index("bench.scale")
    assert two[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in two[:cut] and "--nproc_per_node=2" in two[:cut]
    assert two[cut - 1] == "-m" and two[cut + 1:] == [*one[3:7], "--set", "name=run-b", "--set", "train.max_steps=30"]
    with pytest.raises(ValueError):
        scale.train_command(job, "run-c", 30, 0)


def test_threads_are_shared_out_and_set_per_process(tmp_path: Path) -> None:
    assert [scale.threads_per_process(2, n) for n in (1, 2)] == [2, 1]
    assert [scale.threads_per_process(16, n) for n in (1, 2)] == [16, 8]
    assert scale.threads_per_process(1, 2) == 1
    env = scale.train_env(1, tmp_path / "meter", base={"PATH": "/bin", "OMP_NUM_THREADS": "8"})
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == "/bin"
    assert env[scale.METER_ENV] == str(tmp_path / "meter")


def test_both_runs_train_on_one_kind_of_device(tmp_path: Path) -> None:
    """2 processes vs 1: on GPUs only where each process gets one; otherwise the GPU is hidden from both runs
    (else 1 GPU process would be compared with 2 CPU processes)."""
    assert scale.train_devices(0) == ({}, "the CPU, DDP over gloo")
    env, where = scale.train_devices(1)
    assert env == {"CUDA_VISIBLE_DEVICES": ""} and where.startswith("the CPU") and "1 GPU hidden" in where
    assert scale.train_devices(2) == ({}, "one GPU per process, DDP over NCCL")
    launched = scale.train_env(1, tmp_path / "meter", base={"CUDA_VISIBLE_DEVICES": "0"}, sync_at=30, devices=env)
    assert launched["CUDA_VISIBLE_DEVICES"] == "" and launched[scale.SYNC_ENV] == "30"


def test_read_report_checks_processes_and_steps() -> None:
    train = {"steps": 30, "processes": 2, "seconds": 41.5, "train_loss": []}
    assert scale.read_report(train, 2, 30) == scale.TrainReport(2, 30, 41.5)
    with pytest.raises(RuntimeError, match="reports 2 process"):
        scale.read_report(train, 1, 30)
    with pytest.raises(RuntimeError, match="30 steps"):
        scale.read_report(train, 2, 40)
    with pytest.raises(RuntimeError, match="lacks"):
        scale.read_report({"steps": 30, "seconds": 1.0}, 1, 30)


def test_combine_sums_the_processes_work_over_the_slowest_process() -> None:
    # Rank 0: steps 2..4 (3 steps) in 3.0 s; rank 1: in 3.3 s. The first batch and the batch prefetched
    # after the last step are not counted.
    rank0 = Meter(steps=[10.0, 11.0, 12.0, 13.0], tokens=[999, 100, 110, 120, 5], samples=[8, 8, 8, 8, 8])
    rank1 = Meter(steps=[10.1, 11.2, 12.3, 13.4], tokens=[999, 90, 80, 70, 5], samples=[8, 8, 8, 7, 8])
    two = scale.combine([rank0, rank1], 4)
    assert two.tokens_per_s == pytest.approx((330 + 240) / 3.3)
    assert two.samples_per_s == pytest.approx((24 + 23) / 3.3)
    assert two.step_seconds == pytest.approx(1.1)
    one = scale.combine([rank0], 4)
    assert (one.tokens_per_s, one.samples_per_s, one.step_seconds) == pytest.approx((110.0, 8.0, 1.0))
    with pytest.raises(RuntimeError):
        scale.combine([rank0], 5)  # the run stamped only 4 steps
    with pytest.raises(RuntimeError):
        scale.combine([], 4)


def test_metered_cli_meters_steps_and_batches_and_writes_its_rank(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs with the step hook and the counting collator installed; the meter file appears at exit,
    named after the process's RANK, even when the CLI exits through SystemExit."""
    import numpy as np
    import torch

    import nlpjobs.cli
    from nlpjobs.tasks import get_task

    task = get_task("ner")
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    monkeypatch.setattr(type(task), "collator", lambda self, tokenizer, model: lambda features: {
        "input_ids": np.zeros_like(mask), "attention_mask": mask})
    seen: list[list[str]] = []

    def fake_main(args: list[str], prog_name: str) -> None:
        seen.append(args)
        batch = get_task("ner").collator(None, None)([{}, {}])
        assert batch["attention_mask"] is mask
        weight = torch.nn.Parameter(torch.ones(2))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        for _ in range(3):
            weight.sum().backward()
            optimizer.step()
        raise SystemExit(0)

    monkeypatch.setattr(nlpjobs.cli, "main", fake_main)
    monkeypatch.setenv(scale.METER_ENV, str(tmp_path / "meter"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(scale.SYNC_ENV, "3")
    with pytest.raises(SystemExit):
        scale.metered_cli(["train", "-c", "job.yaml"])
    assert seen == [["train", "-c", "job.yaml"]]
    meter = Meter(**json.loads((tmp_path / "meter.1.json").read_text()))
    assert len(meter.steps) == 3 and meter.tokens == [5] and meter.samples == [2] and meter.sync_at == 3
    assert get_task("ner").collator(None, None)([{}])["attention_mask"] is mask  # the patch is undone
