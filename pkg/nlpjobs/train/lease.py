"""One trainer per run: a lease on object storage, ``<run>/lease.json``.

Two ``train`` processes on one run name (a second terminal, a CI job and a pod, a resubmission while the old
pod still runs) would both write checkpoints into the run, and each resume would read the other's. The
lease makes the second one stop with a clear error instead. It holds an owner (host, process, a random id)
and a heartbeat that the holder renews every ``ttl / 3`` seconds from a background thread. A lease whose
heartbeat is older than ``ttl`` is stale: its holder died (a SIGKILLed or preempted pod), and a new trainer
takes it over. A newer one is watched until it is either renewed (its holder lives: the new trainer stops)
or stale. The holder releases it on exit, also after SIGTERM. Object stores have no compare-and-swap here, so taking a lease
writes it and reads it back after a short pause: of two trainers racing, the one whose write was
overwritten sees the other's owner and stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from nlpjobs import storage

log = logging.getLogger(__name__)
LEASE = "lease.json"
TTL_S = float(os.environ.get("NLPJOBS_LEASE_TTL_S") or 60)
"""Seconds after its last heartbeat a lease is stale (a holder renews it every TTL_S / 3 seconds)."""
SETTLE_S = 1.0
"""Pause between writing a lease and reading it back, longer than a competing writer's read-write gap."""


class LeaseHeld(RuntimeError):
    """Another live trainer holds the run's lease."""


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex}


class RunLease:
    """The lease of the run at ``run_uri``; ``acquire()`` then ``release()`` (or use it as a context manager)."""

    def __init__(self, run_uri: str, ttl_s: float | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, settle_s: float = SETTLE_S) -> None:
        self.uri = storage.join(run_uri, LEASE)
        self.ttl_s, self.clock, self.sleep, self.settle_s = ttl_s or TTL_S, clock, sleep, settle_s
        self.owner = _owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        if not storage.exists(self.uri):
            return None
        try:
            return json.loads(storage.read_bytes(self.uri))
        except (ValueError, FileNotFoundError):  # half-written by a store without atomic puts, or just released
            return None

    def _write(self) -> None:
        storage.write_bytes(self.uri, json.dumps({**self.owner, "heartbeat": self.clock(),
                                                   "ttl_s": self.ttl_s}).encode())

    def acquire(self) -> RunLease:
        """Take the lease; raise LeaseHeld if a live trainer holds it. A lease held by someone else is watched
        until it is renewed (its holder is alive) or goes stale (its holder died: taken over), which takes at
        most ``ttl`` seconds: a pod restarted after its predecessor was killed waits, and then trains."""
        while True:
            current = self._read()
            if current is None or current.get("id") == self.owner["id"]:
                break
            age = self.clock() - float(current.get("heartbeat", 0))
            holder = f"{current.get('host')} (pid {current.get('pid')})"
            if age >= self.ttl_s:
                log.warning("taking over the stale lease of %s from %s (last renewed %.0fs ago)", self.uri, holder, age)
                break
            wait = min(self.ttl_s - age, self.ttl_s / 3 + self.settle_s)
            log.warning("the lease %s is held by %s, last renewed %.0fs ago: watching it for %.0fs", self.uri, holder,
                        age, wait)
            self.sleep(wait)
            again = self._read()
            if again is not None and again.get("id") == current.get("id") and \
                    again.get("heartbeat") != current.get("heartbeat"):
                raise LeaseHeld(f"run {self._run_name()!r} is being trained by {holder}, which renews its lease "
                                f"{self.uri}: two trainers would overwrite each other's checkpoints. Wait for it to "
                                "finish, stop it, or choose another run name (--set name=...)")
        self._write()
        self.sleep(self.settle_s)
        after = self._read()
        if after is None or after.get("id") != self.owner["id"]:
            holder = f"{after.get('host')} (pid {after.get('pid')})" if after else "another trainer"
            raise LeaseHeld(f"run {self._run_name()!r}: {holder} took its lease at the same moment; only one trainer "
                            "may write a run: stop one of them, or choose another run name")
        self._thread = threading.Thread(target=self._renew, name="nlpjobs-lease", daemon=True)
        self._thread.start()
        return self

    def _run_name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 2)[-2]

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("could not renew the lease %s: %s", self.uri, exc)

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        current = self._read()
        if current is not None and current.get("id") == self.owner["id"]:
            storage.remove(self.uri)

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
