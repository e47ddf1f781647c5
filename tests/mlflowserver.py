"""A real MLflow tracking server for tests: PyPI's ``mlflow`` in its own virtual environment, on loopback.

The server package pins pyarrow and pandas below what nlpjobs runs with, so it cannot share the project's venv
(which has only the client, ``mlflow-skinny``, from the ``track`` extra). Its venv is built once into the user
cache (``~/.cache/nlpjobs/mlflow-server/<version>``, about 30 s from PyPI) and reused by every fresh clone.

    server = MlflowServer(tmp_path)
    server.start()          # waits for /health
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    ...
    server.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VERSION = "3.17.2"


def server_venv() -> Path:
    """The cached venv holding ``mlflow==VERSION`` (built now when missing or unfinished)."""
    root = Path(os.environ.get("NLPJOBS_MLFLOW_SERVER_CACHE",
                               Path.home() / ".cache" / "nlpjobs" / "mlflow-server")) / VERSION
    if (root / ".installed").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    subprocess.run([str(root / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"mlflow=={VERSION}"],
                   check=True, timeout=900)
    (root / ".installed").write_text(VERSION)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` with a SQLite store and a local artifact root under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        venv = server_venv()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "mlflow.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
             "--default-artifact-root", (self.workdir / "artifacts").as_uri()],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}: "
                                   f"{(self.workdir / 'mlflow.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy in {timeout:.0f} s: "
                           f"{(self.workdir / 'mlflow.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
