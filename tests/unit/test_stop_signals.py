"""Stop signals: DataLoader workers survive a group-wide SIGTERM or Ctrl-C that arrives while they start (a stop
during evaluation); Ctrl-C asks for a graceful stop, and a second one aborts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The child process is its own session, so the SIGTERM it sends to its group cannot reach pytest.
# The patched torch hook runs inside the first freshly forked worker, after PyTorch installed its worker
# signal handlers and before the worker_init_fn: the moment `torchrun` stopping a rank (SIGTERM) or a
# terminal's Ctrl-C (SIGINT to the foreground group) can hit it.
SCRIPT = textwrap.dedent("""
    import multiprocessing, os, signal
    from torch.utils.data import DataLoader
    from torch.utils.data._utils import signal_handling
    from nlpjobs.train import stop

    stop.current().install()
    original = signal_handling._set_worker_signal_handlers

    def sigterm_to_the_group_while_starting(*args):
        original(*args)
        try:  # once: a second Ctrl-C would rightly abort
            os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.killpg(os.getpgid(0), signal.{signal})

    signal_handling._set_worker_signal_handlers = sigterm_to_the_group_while_starting
    loader = DataLoader(list(range(8)), batch_size=2, **stop.worker_options({workers}))
    print("start method fixed:", multiprocessing.get_start_method(allow_none=True))  # a library may still set it
    for epoch in range(2):  # a second iterator forks new workers, as each evaluation does
        print(sum(int(batch.sum()) for batch in loader), flush=True)
    print("stop requested:", stop.current().requested)
""")


@pytest.mark.parametrize(("workers", "signal"), [(1, "SIGTERM"), (2, "SIGTERM"), (2, "SIGINT")])
def test_a_group_stop_signal_while_workers_start_stops_gracefully_instead_of_killing_them(
        workers: int, signal: str, tmp_path: Path) -> None:
    script = SCRIPT.format(workers=workers, signal=signal, marker=str(tmp_path / "signalled"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["start", "method", "fixed:", "None", "28", "28", "stop", "requested:", "True"], \
        done.stdout + done.stderr[-2000:]
    assert "exited unexpectedly" not in done.stderr
    assert done.stderr.count("received: stopping") == 1, done.stderr  # the main process's; the worker dropped its copy



CTRL_C = textwrap.dedent("""
    import os, signal
    from nlpjobs.train.stop import TrainingInterrupted, current

    stop = current()
    stop.install()
    os.kill(os.getpid(), signal.SIGINT)
    print("requested:", stop.requested, stop.signum == signal.SIGINT, flush=True)
    error = TrainingInterrupted(3, "file:///runs/r/checkpoints/step-00000003", signum=stop.signum)
    print("exit:", error.exit_code, flush=True)
    print(error, flush=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        print("second: aborted", flush=True)
    stop.restore()
    print("restored:", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
""")


def test_ctrl_c_asks_for_a_graceful_stop_with_exit_130_and_a_second_ctrl_c_aborts() -> None:
    done = subprocess.run([sys.executable, "-c", CTRL_C], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "requested: True True" and lines[1] == "exit: 130", done.stdout
    assert lines[2].startswith("stopped by Ctrl-C (SIGINT) during training at optimizer step 3; checkpoint committed")
    assert lines[3:] == ["second: aborted", "restored: True"], done.stdout
    assert "Ctrl-C again aborts at once" in done.stderr  # the first Ctrl-C says what a second one does
