"""Launch from the pod environment: parsing, the bounded wait for the master, the torchrun command."""

from __future__ import annotations

import socket
import time

import pytest

from nlpjobs.train.launch import LaunchError, plan_from_env, wait_for_master


def test_plan_from_indexed_job_env() -> None:
    plan = plan_from_env({"JOB_COMPLETION_INDEX": "1", "NLPJOBS_NNODES": "2", "NLPJOBS_NPROC_PER_NODE": "8",
                          "NLPJOBS_MASTER_ADDR": "clm-train-0.clm-train", "NLPJOBS_MASTER_PORT": "29400",
                          "NLPJOBS_SHUTDOWN_TIMEOUT": "105"})
    argv = plan.torchrun_argv(["train", "-c", "jobs/clm.yaml"])
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=8", "--node_rank=1", "--master_addr=clm-train-0.clm-train",
            "--master_port=29400", "--rdzv_backend=static", "--max_restarts=0", "--shutdown-timeout=105"} <= set(argv)
    assert argv[-5:] == ["-m", "nlpjobs", "train", "-c", "jobs/clm.yaml"]


def test_single_node_defaults() -> None:
    plan = plan_from_env({})
    assert (plan.nnodes, plan.nproc_per_node, plan.node_rank, plan.master_addr) == (1, 1, 0, "127.0.0.1")
    assert plan.shutdown_timeout_s == 30  # torchrun's own default


@pytest.mark.parametrize(("env", "message"), [
    ({"NLPJOBS_NNODES": "2", "JOB_COMPLETION_INDEX": "1"}, "NLPJOBS_MASTER_ADDR is not set"),
    ({"NLPJOBS_NNODES": "2", "JOB_COMPLETION_INDEX": "2", "NLPJOBS_MASTER_ADDR": "m"}, "must be below it"),
    ({"NLPJOBS_NNODES": "two"}, "NLPJOBS_NNODES='two' is not an integer"),
    ({"NLPJOBS_NPROC_PER_NODE": "0"}, "must be >= 1"),
])
def test_bad_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        plan_from_env(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wait_for_master_is_bounded_and_logs() -> None:
    port = _free_port()
    plan = plan_from_env({"NLPJOBS_NNODES": "2", "JOB_COMPLETION_INDEX": "1", "NLPJOBS_MASTER_ADDR": "127.0.0.1",
                          "NLPJOBS_MASTER_PORT": str(port), "NLPJOBS_RDZV_TIMEOUT": "1"})
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(LaunchError, match="did not answer within 1s"):
        wait_for_master(plan, log=lines.append, interval_s=0.2)
    assert time.monotonic() - started < 5
    assert lines and "waiting for master 127.0.0.1" in lines[0]


def test_wait_for_master_returns_when_port_answers() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        plan = plan_from_env({"NLPJOBS_NNODES": "2", "JOB_COMPLETION_INDEX": "1", "NLPJOBS_MASTER_ADDR": "127.0.0.1",
                              "NLPJOBS_MASTER_PORT": str(server.getsockname()[1])})
        lines: list[str] = []
        wait_for_master(plan, log=lines.append)
    assert "is up" in lines[-1]
