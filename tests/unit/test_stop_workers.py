"""DataLoader workers survive a group-wide SIGTERM that arrives while they start (a stop during evaluation)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# The child process is its own session, so the SIGTERM it sends to its group cannot reach pytest.
# The patched torch hook runs inside each freshly forked worker, after PyTorch installed its worker
# signal handlers and before the worker_init_fn: the moment `torchrun` stopping a rank can hit it.
SCRIPT = textwrap.dedent("""
    import multiprocessing, os, signal
    from torch.utils.data import DataLoader
    from torch.utils.data._utils import signal_handling
    from nlpjobs.train import stop

    stop.current().install()
    original = signal_handling._set_worker_signal_handlers

    def sigterm_to_the_group_while_starting(*args):
        original(*args)
        os.killpg(os.getpgid(0), signal.SIGTERM)

    signal_handling._set_worker_signal_handlers = sigterm_to_the_group_while_starting
    loader = DataLoader(list(range(8)), batch_size=2, **stop.worker_options({workers}))
    print("start method fixed:", multiprocessing.get_start_method(allow_none=True))  # a library may still set it
    for epoch in range(2):  # a second iterator forks new workers, as each evaluation does
        print(sum(int(batch.sum()) for batch in loader), flush=True)
    print("stop requested:", stop.current().requested)
""")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_group_sigterm_while_workers_start_stops_gracefully_instead_of_killing_them(workers: int) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(workers=workers)], capture_output=True, text=True,
                          timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["start", "method", "fixed:", "None", "28", "28", "stop", "requested:", "True"], \
        done.stdout + done.stderr[-2000:]
    assert "exited unexpectedly" not in done.stderr

