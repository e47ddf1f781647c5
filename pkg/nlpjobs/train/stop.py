"""Graceful stop on SIGTERM (preemption, pod deletion, node drain) and on Ctrl-C (SIGINT).

The handler only sets a flag; training looks at it at safe points and commits a checkpoint before it
exits with code 143 (SIGTERM) or 130 (Ctrl-C; a second Ctrl-C aborts at once, without a checkpoint):

- at the next optimizer step (every process agrees through the loss all-reduce of ``log_every``);
- inside an evaluation, after the current batch (one tiny all-reduce per evaluation batch when there
  are several processes); the interrupted evaluation is recorded as pending and run first on resume;
- while the dataset, the model or a checkpoint is being loaded, before the first step.

The handler is installed when the ``train`` command starts, before the heavy imports, so a SIGTERM that
arrives while the process is still loading is not lost either. ``batch-predict`` uses the same flag between
the parts it commits. DataLoader worker processes leave the
process group (see :func:`worker_options`): a SIGTERM sent to the whole group (what ``torchrun`` sends its
workers) must not kill them under the main process, which would turn a graceful stop into a crash.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
STOP_SIGNALS = set(SIGNAL_NAMES)
TRAINING_STOPS = "at the next safe point with a committed checkpoint"
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
"""The shell's code for a process ended by the signal (128 + its number), also when it stopped gracefully."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM or Ctrl-C; everything up to the committed checkpoint is kept."""

    def __init__(self, step: int, checkpoint_uri: str | None, during: str = "training",
                 signum: int = signal.SIGTERM) -> None:
        by = SIGNAL_NAMES[signal.Signals(signum)]
        if checkpoint_uri:
            text = (f"stopped by {by} during {during} at optimizer step {step}; checkpoint committed at "
                    f"{checkpoint_uri}. Rerun the same command to resume.")
        else:
            text = (f"stopped by {by} during {during}, before optimizer step {step + 1}; nothing new to save "
                    "(a rerun starts from the newest committed checkpoint, if any).")
        super().__init__(text)
        self.step, self.checkpoint_uri, self.during = step, checkpoint_uri, during
        self.exit_code = EXIT_CODES[signal.Signals(signum)]


class EvaluationInterrupted(RuntimeError):
    """SIGTERM arrived during an evaluation; the evaluation was abandoned after the current batch."""


class StopRequest:
    """The stop flag (SIGTERM or Ctrl-C), and the collective checks that make every process stop at the same
    point."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGTERM
        """The signal that asked this process to stop (SIGTERM when it was another process)."""
        self.stops = TRAINING_STOPS
        """Where the caller stops, for the line a stop signal prints."""
        self._previous: dict[int, Any] = {}

    def install(self, stops: str = TRAINING_STOPS) -> None:
        """Catch SIGTERM and SIGINT from now on, with no stop requested yet (main thread only; a no-op elsewhere
        or when already installed). ``stops``: where the caller stops, in words, for the line a signal prints."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        self.requested, self.signum, self.stops = False, signal.SIGTERM, stops
        self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNAL_NAMES}

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # a second Ctrl-C: abort now, without a checkpoint
        if not self.requested:
            self.signum = signum
            again = "; Ctrl-C again aborts at once" if signum == signal.SIGINT else ""
            log.warning("%s received: stopping %s%s", "Ctrl-C" if signum == signal.SIGINT else "SIGTERM",
                        self.stops, again)
        self.requested = True

    def agreed(self, acc: Any, boundary: bool = True) -> bool:
        """Whether any process was asked to stop. With several processes this is a collective: call it
        at the same point on every process; ``boundary=False`` skips it (no communication)."""
        if acc.num_processes == 1:
            return self.requested
        if not boundary:
            return False
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)


_CURRENT = StopRequest()


def current() -> StopRequest:
    """The process-wide stop request (installed by the ``train`` command, or by the engine)."""
    return _CURRENT


def worker_options(num_workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for ``num_workers`` worker processes that a group-wide SIGTERM cannot kill.

    Each worker moves to its own process group first thing (:func:`detach_worker`). Until then it shares the
    main process's group, and PyTorch's worker handler dies on a SIGTERM that its parent did not send; a stop
    that arrives while an evaluation forks its workers would kill them. So, where workers are forked, the
    fork happens with SIGTERM and SIGINT blocked: the child holds such a signal pending, drops it once it
    has left the group, and the main process receives its own copy as usual.
    """
    if not num_workers:
        return {"num_workers": 0}
    options: dict[str, Any] = {"num_workers": num_workers, "worker_init_fn": detach_worker}
    # The start method the loader would use; asked without fixing it (get_start_method() would).
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if method == "fork":
        options["multiprocessing_context"] = _ShieldedForkContext()
    return options



class _ShieldedForkProcess(multiprocessing.context.ForkProcess):
    """A forked process that starts with SIGTERM and SIGINT blocked (the parent's mask is restored at once)."""

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _ShieldedForkContext(multiprocessing.context.ForkContext):
    Process = _ShieldedForkProcess  # type: ignore[assignment]


def detach_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker in its own process group outlives a group-wide SIGTERM;
    the main process still ends it (the loader's shutdown, or its watchdog when the main process dies).
    A worker forked with the stop signals blocked drops those it got while still in the group (a terminal's
    Ctrl-C reaches its whole foreground group too), then unblocks them."""
    os.setpgid(0, 0)
    blocked = STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, set())
    if blocked:
        while signal.sigtimedwait(blocked, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
