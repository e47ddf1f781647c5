"""Multi-node launch from the pod environment: a static-rendezvous torchrun.

An Indexed Job gives each pod ``JOB_COMPLETION_INDEX``; the chart adds ``NLPJOBS_NNODES``,
``NLPJOBS_NPROC_PER_NODE``, ``NLPJOBS_MASTER_ADDR`` (``<job>-0.<headless service>``) and
``NLPJOBS_MASTER_PORT``. Ranks > 0 first wait, with a bounded timeout and a log line every few
seconds, until the master's port answers; then torchrun's agent runs in this process (the pod's main
process), so SIGTERM reaches it; it forwards the signal to the workers and gives them
``NLPJOBS_SHUTDOWN_TIMEOUT`` seconds (the chart sets the pod's grace period minus a margin) to commit a
checkpoint before it kills them. Rank 0's static rendezvous waits for its peers ``NLPJOBS_RDZV_TIMEOUT``
seconds, as ranks > 0 wait for it.

The pod exits with its workers' meaningful exit code, not torchrun's 1: a code of the classes that must not be
retried (invalid configuration, bad data, failed overfit check, non-finite loss) wins over any other, then the
first worker failure's code; a worker killed by a signal counts as 128 + the signal, as a shell reports it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

NOT_RETRIABLE = (2, 3, 7, 8)
"""Exit codes no restart can fix: invalid configuration, bad data, failed overfit check, non-finite loss."""
LAUNCH_FAILED = 5


class LaunchError(RuntimeError):
    """The pod environment does not describe a launch, or the master never came up."""


@dataclass
class LaunchPlan:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    rdzv_timeout_s: int
    shutdown_timeout_s: int = 30

    def torchrun_argv(self, command: list[str]) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run",
                f"--nnodes={self.nnodes}", f"--nproc_per_node={self.nproc_per_node}",
                f"--node_rank={self.node_rank}", f"--master_addr={self.master_addr}",
                f"--master_port={self.master_port}", "--rdzv_backend=static",
                f"--rdzv_conf=timeout={self.rdzv_timeout_s}", "--max_restarts=0",
                f"--shutdown-timeout={self.shutdown_timeout_s}",
                "-m", "nlpjobs", *command]


def _int_env(env: dict[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise LaunchError(f"{name} is not set; the chart sets it on training pods")
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise LaunchError(f"{name}={raw!r} is not an integer") from exc
    if value < 0:
        raise LaunchError(f"{name}={value} must be >= 0")
    return value


def plan_from_env(env: dict[str, str] | None = None) -> LaunchPlan:
    env = dict(os.environ if env is None else env)
    nnodes = _int_env(env, "NLPJOBS_NNODES", 1)
    nproc = _int_env(env, "NLPJOBS_NPROC_PER_NODE", 1)
    rank = _int_env(env, "JOB_COMPLETION_INDEX", 0)
    if nnodes < 1 or nproc < 1:
        raise LaunchError(f"NLPJOBS_NNODES={nnodes} and NLPJOBS_NPROC_PER_NODE={nproc} must be >= 1")
    if rank >= nnodes:
        raise LaunchError(f"JOB_COMPLETION_INDEX={rank} but NLPJOBS_NNODES={nnodes}: the index must be below it")
    master = env.get("NLPJOBS_MASTER_ADDR") or ("127.0.0.1" if nnodes == 1 else "")
    if not master:
        raise LaunchError("NLPJOBS_MASTER_ADDR is not set: with several nodes it must name rank 0's pod "
                          "(<job>-0.<headless service>)")
    return LaunchPlan(nnodes, nproc, rank, master, _int_env(env, "NLPJOBS_MASTER_PORT", 29500),
                      _int_env(env, "NLPJOBS_RDZV_TIMEOUT", 600), _int_env(env, "NLPJOBS_SHUTDOWN_TIMEOUT", 30))


def wait_for_master(plan: LaunchPlan, log=print, interval_s: float = 5.0) -> None:  # noqa: ANN001
    """Block until rank 0's rendezvous port accepts connections, or raise after the timeout."""
    deadline = time.monotonic() + plan.rdzv_timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            with socket.create_connection((plan.master_addr, plan.master_port), timeout=3):
                log(f"[launch] node {plan.node_rank}: master {plan.master_addr}:{plan.master_port} is up")
                return
        except OSError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LaunchError(
                    f"node {plan.node_rank}: master {plan.master_addr}:{plan.master_port} did not answer within "
                    f"{plan.rdzv_timeout_s}s ({exc}); check that pod 0 of the training Job is running and the "
                    "headless Service resolves") from exc
            if attempt == 1 or attempt % 6 == 0:
                log(f"[launch] node {plan.node_rank}: waiting for master {plan.master_addr}:{plan.master_port} "
                    f"({type(exc).__name__}; {left:.0f}s left)")
            time.sleep(min(interval_s, max(left, 0.1)))


def worker_exit_code(failures: Mapping[int, Any], first_rank: int | None = None) -> int:
    """The pod's exit code for failed workers (torch's ``ProcessFailure`` by rank): a non-retriable code if any
    worker has one, else the first failure's (``first_rank``, else the lowest rank); signals as 128 + signal."""
    codes = {rank: (128 - f.exitcode if f.exitcode < 0 else f.exitcode) for rank, f in failures.items()}
    for rank in sorted(codes):
        if codes[rank] in NOT_RETRIABLE:
            return codes[rank]
    if not codes:
        return 1
    code = codes[first_rank] if first_rank in codes else codes[min(codes)]
    return code or 1


def run_torchrun(plan: LaunchPlan, command: list[str], log: Callable[[str], Any] = print) -> int:
    """Run torchrun's agent in this process for ``nlpjobs <command>`` on every local worker; the exit code the
    pod should end with (see the module docstring). Raises LaunchError when the launch itself fails."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if plan.node_rank > 0:
        wait_for_master(plan, log)
    argv = plan.torchrun_argv(command)[3:]  # without `python -m torch.distributed.run`
    log(f"[launch] node {plan.node_rank}/{plan.nnodes}: torchrun {' '.join(argv)}")
    sys.stdout.flush()
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        first_rank, _ = err.get_first_failure()
        code = worker_exit_code(err.failures, first_rank)
        summary = ", ".join(f"rank {rank} exit {worker_exit_code({rank: f})}" for rank, f in sorted(err.failures.items()))
        log(f"[launch] node {plan.node_rank}: workers failed ({summary}); the pod exits {code}")
        return code
    except SignalException as err:
        log(f"[launch] node {plan.node_rank}: stopped by signal {err.sigval}; workers were given "
            f"{plan.shutdown_timeout_s}s to commit a checkpoint")
        return 128 + int(err.sigval)
    except Exception as err:  # noqa: BLE001 - the rendezvous or the agent failed, not a worker
        raise LaunchError(f"node {plan.node_rank}: torchrun could not start the workers: "
                          f"{type(err).__name__}: {err}") from err
    return 0
