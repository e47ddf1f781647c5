#!/usr/bin/env python3
"""A kubelet-less Kubernetes control plane for the nlpjobs tests.

Runs the real upstream binaries built by ``tests/cluster/build.sh`` as host
processes bound to 127.0.0.1:

    etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
    JobSet controller manager, Kueue controller manager, kwok (fake nodes/pods)

Usage (CLI)::

    python tests/cluster/controlplane.py up     [--dir DIR] [--no-nodes] [--timeout S]
    python tests/cluster/controlplane.py status [--dir DIR]
    python tests/cluster/controlplane.py down   [--dir DIR] [--purge]

Usage (Python)::

    from controlplane import ControlPlane
    with ControlPlane(tmp_path / "k8s") as cp:      # start() ... stop()
        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
        cp.create_node("extra-gpu", gpus=8, labels={...}, taints=[...])
        pod_meta = ControlPlane.pod_exit_metadata(3)  # make a pod exit with code 3

Only the Python standard library and PyYAML are needed (a tiny REST client
with the admin client certificate talks to the API server); tests are free to
use the ``kubernetes`` client with ``cp.kubeconfig``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"
LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"          # kwok hands out pod IPs from here
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"

# kwok manages only nodes carrying this annotation (a real kubelet-backed node
# would never be touched).
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")

# Label/annotation keys of kwok's upstream chaos stage "pod-container-running-failed"
KWOK_FAIL_LABEL = "pod-container-running-failed.stage.kwok.x-k8s.io"
KWOK_FAIL_PREFIX = "pod-container-running-failed.stage.kwok.x-k8s.io/"
KWOK_COMPLETE_PREFIX = "pod-complete.stage.kwok.x-k8s.io/"

TERMINATE_PREFIX = "nlpjobs-pod-terminate.stage.kwok.x-k8s.io/"
TERMINATE_TEMPLATE = """\
{{ $now := Now }}
{{ $annotations := or .metadata.annotations dict }}
{{ $exitCode := or ( index $annotations "PREFIXexit-code" ) 143 }}
conditions:
- lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: PodCompleted
  type: Ready
- lastProbeTime: null
  lastTransitionTime: {{ $now | Quote }}
  status: "False"
  reason: PodCompleted
  type: ContainersReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {{ $exitCode }}
      reason: Error
      message: terminated on pod deletion (kwok)
      finishedAt: {{ $now | Quote }}
      startedAt: {{ $now | Quote }}
{{ end }}
phase: Failed
"""

# Upstream kwok stage sets applied by default (stages/<kind>/<set>/*.yaml).
DEFAULT_STAGE_SETS = (
    "node/fast",                    # node-initialize: node becomes Ready at once
    "node/heartbeat-with-lease",    # status heartbeat; kwok also renews the node Lease
    "node/chaos",                   # opt-in by label node-not-ready.stage.kwok.x-k8s.io=true
    "pod/general",                  # create -> (init) -> ready -> complete (Job pods) ; delete
    "pod/chaos",                    # opt-in by label: container fails with a chosen exit code
)

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
              "jobset", "kueue", "kwok")


def cache_root() -> Path:
    """Where build.sh keeps the built control plane: $NLPJOBS_CLUSTER_CACHE, else the user cache (not
    $NLPJOBS_CACHE, which the tests and .ci/run point at throwaway folders)."""
    return Path(os.environ.get("NLPJOBS_CLUSTER_CACHE") or Path.home() / ".cache" / "nlpjobs" / "cluster")


def default_dir() -> Path:
    return cache_root() / "run"


def build_dir(build: bool = False) -> Path:
    """The versioned build output dir of build.sh (runs the build if asked)."""
    if build:
        subprocess.run(["bash", str(BUILD_SH)], check=True)
    out = subprocess.run(["bash", str(BUILD_SH), "--print-dir"], check=True,
                         capture_output=True, text=True).stdout.strip()
    return Path(out)


class ControlPlaneError(RuntimeError):
    pass


class ApiError(ControlPlaneError):
    def __init__(self, method: str, path: str, status: int, body: str):
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
            msg = json.loads(body).get("message", body)
        except ValueError:
            self.reason, msg = "", body
        super().__init__(f"{method} {path} -> {status}: {msg}")


# --------------------------------------------------------------------------- REST
class Client:
    """Minimal Kubernetes REST client (admin client cert). Thread-safe."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path):
        u = urllib.parse.urlparse(server)
        self.host, self.port = u.hostname, u.port
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(cert), str(key))
        self._disc: dict[str, dict[str, tuple[str, bool]]] = {}
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: Any = None, *, query: dict | None = None,
                content_type: str = "application/json", timeout: float = 30,
                raw: bool = False) -> Any:
        if query:
            path = path + "?" + urllib.parse.urlencode(query)
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)
        try:
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        if resp.status >= 300:
            raise ApiError(method, path, resp.status, text)
        if raw:
            return text
        return json.loads(text) if text else None

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw)

    # ---- discovery -> resource paths
    def _resources(self, api_version: str, refresh: bool = False) -> dict[str, tuple[str, bool]]:
        with self._lock:
            if api_version in self._disc and not refresh:
                return self._disc[api_version]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            lst = self.get(base)
        except ApiError as e:
            if e.status == 404:
                return {}
            raise
        res = {r["kind"]: (r["name"], r["namespaced"]) for r in lst["resources"] if "/" not in r["name"]}
        with self._lock:
            self._disc[api_version] = res
        return res

    def path_for(self, api_version: str, kind: str, namespace: str | None = None,
                 name: str | None = None) -> str:
        res = self._resources(api_version)
        if kind not in res:
            res = self._resources(api_version, refresh=True)
        if kind not in res:
            raise ControlPlaneError(f"unknown kind {api_version}/{kind}")
        plural, namespaced = res[kind]
        p = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            p += f"/namespaces/{namespace or 'default'}"
        p += f"/{plural}"
        if name:
            p += f"/{name}"
        return p

    def _obj_path(self, obj: dict, with_name: bool = True) -> str:
        md = obj.get("metadata", {})
        return self.path_for(obj["apiVersion"], obj["kind"], md.get("namespace"),
                             md.get("name") if with_name else None)

    def apply(self, obj: dict, field_manager: str = "nlpjobs-controlplane") -> dict:
        """Server-side apply (create or update)."""
        return self.request("PATCH", self._obj_path(obj), obj,
                            query={"fieldManager": field_manager, "force": "true"},
                            content_type="application/apply-patch+yaml")

    def create(self, obj: dict, dry_run: bool = False) -> dict:
        q = {"dryRun": "All"} if dry_run else None
        return self.request("POST", self._obj_path(obj, with_name=False), obj, query=q)

    def read(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict:
        return self.get(self.path_for(api_version, kind, namespace, name))

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self.request("DELETE", self.path_for(api_version, kind, namespace, name))
        except ApiError as e:
            if e.status != 404:
                raise


# --------------------------------------------------------------------------- PKI
def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {r.stderr}")


def make_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin client cert, webhook serving cert, front-proxy CA + client
    cert (aggregation layer / requestheader authn), SA keys. All ECDSA P-256."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca, cn in (("ca", "nlpjobs-test-ca"), ("front-proxy-ca", "nlpjobs-test-front-proxy-ca")):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "3650",
                 "-subj", f"/CN={cn}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d)

    def leaf(name: str, subj: str, sans: str | None, eku: str, ca: str = "ca") -> None:
        ext = ["keyUsage=critical,digitalSignature,keyEncipherment", f"extendedKeyUsage={eku}",
               "basicConstraints=critical,CA:FALSE"]
        if sans:
            ext.append(f"subjectAltName={sans}")
        (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "3650", "-sha256",
                 "-extfile", f"{name}.ext", cwd=d)
        (d / f"{name}.csr").unlink()
        (d / f"{name}.ext").unlink()

    leaf("apiserver", "/CN=kube-apiserver",
         "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
         "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local", "serverAuth")
    leaf("admin", "/O=system:masters/CN=kubernetes-admin", None, "clientAuth")
    leaf("webhook", "/CN=webhooks.nlpjobs.local", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    leaf("front-proxy-client", "/CN=front-proxy-client", None, "clientAuth", ca="front-proxy-ca")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    # controller-runtime webhook servers read <certDir>/tls.crt + tls.key
    wh = d / "webhook-serving"
    wh.mkdir(exist_ok=True)
    shutil.copy(d / "webhook.crt", wh / "tls.crt")
    shutil.copy(d / "webhook.key", wh / "tls.key")


# Kueue v0.17 (cmd/kueue/main.go) loads a metrics serving cert from this fixed path whenever its
# internal cert management is off -- even with the metrics server disabled -- and exits if it is
# missing. Internal cert management can't be used here (its certs are for <svc>.<ns>.svc, the
# webhooks are reached on 127.0.0.1), so a throwaway self-signed pair is put there once.
KUEUE_METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")


def ensure_kueue_metrics_cert(d: Path = KUEUE_METRICS_CERT_DIR) -> None:
    if (d / "tls.crt").exists() and (d / "tls.key").exists():
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d))
    except OSError as e:
        raise ControlPlaneError(
            f"Kueue v0.17 needs {d}/tls.crt+tls.key (any cert; its metrics server is disabled) and "
            f"{d} can't be created ({e}); create it once, e.g. as root: "
            f"mkdir -p {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
            f"-nodes -days 3650 -subj /CN=kueue-metrics -keyout {d}/tls.key -out {d}/tls.crt") from e
    try:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "3650", "-subj", "/CN=kueue-metrics", "-keyout", "tls.key", "-out", "tls.crt",
                 cwd=tmp)
        os.replace(tmp / "tls.key", d / "tls.key")   # key first: the watcher needs both
        os.replace(tmp / "tls.crt", d / "tls.crt")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
            p = s.getsockname()[1]
            if p not in ports and p + 1 not in ports and p - 1 not in ports:
                ports.append(p)
    finally:
        for s in socks:
            s.close()
    return ports


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, starttime: str | None) -> bool:
    st = _proc_starttime(pid)
    if st is None or (starttime and st != starttime):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- main class
class ControlPlane:
    """A running (or startable) control plane rooted at ``workdir``.

    Layout of ``workdir``: kubeconfig, state.json, pki/, etcd/, config/, logs/<component>.log
    """

    def __init__(self, workdir: str | Path | None = None, *, build: Path | None = None,
                 default_nodes: bool = True, pod_stage_delay_ms: int = 100,
                 pod_stage_jitter_ms: int | None = None, stage_sets: Iterable[str] = DEFAULT_STAGE_SETS,
                 verbosity: int = 1, log: Callable[[str], None] | None = None):
        self.dir = Path(workdir or default_dir()).resolve()
        self._build = Path(build) if build else None
        self.default_nodes = default_nodes
        self.pod_stage_delay_ms = pod_stage_delay_ms
        self.pod_stage_jitter_ms = pod_stage_jitter_ms
        self.stage_sets = tuple(stage_sets)
        self.verbosity = verbosity
        self._log = log or (lambda m: print(f"[controlplane] {m}", file=sys.stderr, flush=True))
        self.procs: dict[str, dict] = {}
        self.ports: dict[str, int] = {}
        self.client: Client | None = None
        self.startup_seconds: float | None = None
        self._popen: dict[str, subprocess.Popen] = {}

    # ---- paths
    @property
    def build(self) -> Path:
        if self._build is None:
            self._build = build_dir()
        return self._build

    @property
    def bin(self) -> Path:
        return self.build / "bin"

    @property
    def manifests(self) -> Path:
        return self.build / "manifests"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    # ---- lifecycle
    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @classmethod
    def attach(cls, workdir: str | Path | None = None) -> ControlPlane:
        """A handle on a control plane started earlier (e.g. by `controlplane.py up`)."""
        cp = cls(workdir)
        st = cp._read_state()
        if st is None:
            raise ControlPlaneError(f"no control plane state in {cp.dir}")
        cp._build = Path(st["build"])
        cp.ports = st["ports"]
        cp.procs = st["procs"]
        cp.startup_seconds = st.get("startup_seconds")
        cp.client = cp._make_client()
        return cp

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self) -> None:
        st = {"dir": str(self.dir), "build": str(self.build), "server": self.server,
              "kubeconfig": str(self.kubeconfig), "ports": self.ports, "procs": self.procs,
              "startup_seconds": self.startup_seconds, "created": time.time()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=2))
        tmp.replace(self.state_file)

    def running(self) -> bool:
        st = self._read_state()
        return bool(st) and all(_alive(p["pid"], p.get("starttime")) for p in st["procs"].values())

    def start(self, timeout: float = 180) -> ControlPlane:
        t0 = time.monotonic()
        deadline = t0 + timeout
        if self.running():
            raise ControlPlaneError(f"a control plane is already running in {self.dir}")
        self.stop(quiet=True)  # leftovers of a crashed run
        missing = [c for c in COMPONENTS if not (self.bin / c).exists()]
        if missing or not (self.build / "_SUCCESS").exists():
            raise ControlPlaneError(f"binaries missing in {self.bin} ({missing}); run tests/cluster/build.sh")
        for sub in ("etcd", "config", "logs", "pki"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        try:
            self._start(deadline)
        except BaseException:
            self._log(f"start failed; logs in {self.logs}")
            self.stop(quiet=True, keep_logs=True)
            raise
        self.startup_seconds = round(time.monotonic() - t0, 2)
        self._write_state()
        self._log(f"control plane up in {self.startup_seconds}s: {self.server} (KUBECONFIG={self.kubeconfig})")
        return self

    def _start(self, deadline: float) -> None:
        t0 = time.monotonic()
        lap = lambda what: self._log(f"{what} (+{time.monotonic() - t0:.1f}s)")  # noqa: E731
        make_pki(self.pki)
        names = ["etcd", "etcd-peer", "apiserver", "kcm", "scheduler",
                 "jobset-webhook", "jobset-health", "kueue-webhook", "kueue-health"]
        self.ports = dict(zip(names, free_ports(len(names))))
        self._write_kubeconfig()
        self.client = self._make_client()
        lap("pki + kubeconfig")

        # etcd and the API server start together (the API server retries etcd)
        self._spawn("etcd", self._etcd_args())
        self._spawn("kube-apiserver", self._apiserver_args())
        self._wait("kube-apiserver /readyz", deadline, self._apiserver_ready, procs=["etcd", "kube-apiserver"])
        lap("kube-apiserver ready")

        self._spawn("kube-controller-manager", self._kcm_args())
        self._spawn("kube-scheduler", self._scheduler_args())
        for ns in ("jobset-system", "kueue-system"):
            self.client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        crds = self._install_addon_manifests()
        self._wait("CRDs established", deadline, lambda: self._crds_established(crds))
        lap("CRDs + webhook configurations installed")

        self._spawn("jobset", self._jobset_args())
        self._spawn("kueue", self._kueue_args())
        self._spawn("kwok", self._kwok_args())
        for st in self.stages():
            self.client.apply(st)
        if self.default_nodes:
            self.create_default_nodes()
        lap("controllers started, stages + nodes created")

        self._wait("kube-controller-manager /healthz", deadline,
                   lambda: self._https_ok(self.ports["kcm"], "/healthz"), procs=["kube-controller-manager"])
        self._wait("kube-scheduler /readyz", deadline,
                   lambda: self._https_ok(self.ports["scheduler"], "/readyz"), procs=["kube-scheduler"])
        self._wait("default service account", deadline, self._default_sa_exists)
        self._wait("jobset /readyz", deadline,
                   lambda: self._http_ok(self.ports["jobset-health"], "/readyz"), procs=["jobset"])
        self._wait("kueue /readyz", deadline,
                   lambda: self._http_ok(self.ports["kueue-health"], "/readyz"), procs=["kueue"])
        self._wait("admission webhooks answering", deadline, self._webhooks_answer, procs=["jobset", "kueue"])
        if self.default_nodes:
            self._wait("kwok nodes Ready", deadline, self._nodes_ready, procs=["kwok"])
        lap("all components ready")

    def stop(self, quiet: bool = False, keep_logs: bool = True, purge: bool = False) -> None:
        """SIGTERM every component (SIGKILL after 10s), then remove state, etcd data, pki, kubeconfig."""
        st = self._read_state()
        procs = dict(self.procs)
        if st:
            procs.update(st.get("procs", {}))
        # phases: clients of the API server, then the API server, then etcd (an API server
        # whose etcd is gone hangs in its graceful shutdown)
        phases = [[n for n in procs if n not in ("kube-apiserver", "etcd")], ["kube-apiserver"], ["etcd"]]
        stopped = []
        for phase in phases:
            live = []
            for name in phase:
                p = procs.get(name)
                if p and _alive(p["pid"], p.get("starttime")):
                    try:
                        os.kill(p["pid"], signal.SIGTERM)
                        live.append((name, p))
                    except ProcessLookupError:
                        pass
            end = time.monotonic() + 10
            for name, p in live:
                while _alive(p["pid"], p.get("starttime")) and time.monotonic() < end:
                    self._reap(name)
                    time.sleep(0.02)
                if _alive(p["pid"], p.get("starttime")):
                    if not quiet:
                        self._log(f"{name} (pid {p['pid']}) ignored SIGTERM for 10s, killing")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p["pid"], signal.SIGKILL)
                self._reap(name)
                stopped.append(name)
        for name in list(self._popen):
            self._reap(name, wait=True)
        if stopped and not quiet:
            self._log(f"stopped {', '.join(stopped)}")
        self.procs = {}
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for sub in ("etcd", "pki", "config"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for f in (self.state_file, self.kubeconfig):
            f.unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)

    def _reap(self, name: str, wait: bool = False) -> None:
        p = self._popen.get(name)
        if p is not None:
            try:
                p.wait(timeout=5 if wait else 0)
                self._popen.pop(name, None)
            except subprocess.TimeoutExpired:
                pass

    def status(self) -> dict:
        st = self._read_state() or {}
        out = {"dir": str(self.dir), "running": self.running(), "server": st.get("server"),
               "kubeconfig": st.get("kubeconfig"), "startup_seconds": st.get("startup_seconds"),
               "components": {}}
        for name, p in st.get("procs", {}).items():
            out["components"][name] = {"pid": p["pid"], "alive": _alive(p["pid"], p.get("starttime")),
                                       "log": p["log"]}
        if st and out["running"]:
            try:
                self.ports = st["ports"]
                self._build = Path(st["build"])
                self.client = self.client or self._make_client()
                out["readyz"] = self.client.get("/readyz", raw=True).strip()
                out["nodes"] = [n["metadata"]["name"] for n in self.client.get("/api/v1/nodes")["items"]]
            except Exception as e:  # noqa: BLE001
                out["readyz"] = f"error: {e}"
        return out

    # ---- processes
    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.logs / f"{name}.log"
        binary = str(self.bin / name)
        with open(log, "ab") as f:
            f.write(f"\n=== {time.strftime('%F %T')} {binary} {' '.join(args)}\n".encode())
            f.flush()
            env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "GODEBUG")}
            env["HOME"] = str(self.dir / "config")  # no ~/.kube, ~/.kwok of the user
            p = subprocess.Popen([binary, *args], stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=self.dir, env=env,
                                 start_new_session=True)
        self._popen[name] = p
        self.procs[name] = {"pid": p.pid, "starttime": _proc_starttime(p.pid), "log": str(log)}
        self._write_state()

    def _check_procs(self, names: Iterable[str]) -> None:
        for n in names:
            p = self.procs.get(n)
            if p and not _alive(p["pid"], p.get("starttime")):
                tail = Path(p["log"]).read_text(errors="replace").splitlines()[-25:]
                raise ControlPlaneError(f"{n} exited during start-up; last log lines:\n" + "\n".join(tail))

    def _wait(self, what: str, deadline: float, cond: Callable[[], bool],
              procs: Iterable[str] = (), interval: float = 0.1) -> None:
        last: Exception | None = None
        while True:
            self._check_procs(procs)
            try:
                if cond():
                    return
            except (OSError, ControlPlaneError, ssl.SSLError, http.client.HTTPException) as e:
                last = e
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out waiting for {what}" + (f": {last}" if last else ""))
            time.sleep(interval)

    # ---- component command lines
    def _etcd_args(self) -> list[str]:
        c, p = self.ports["etcd"], self.ports["etcd-peer"]
        return ["--name=nlpjobs", f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls=http://{LOOPBACK}:{c}", f"--advertise-client-urls=http://{LOOPBACK}:{c}",
                f"--listen-peer-urls=http://{LOOPBACK}:{p}", f"--initial-advertise-peer-urls=http://{LOOPBACK}:{p}",
                f"--initial-cluster=nlpjobs=http://{LOOPBACK}:{p}",
                "--unsafe-no-fsync=true", "--log-level=warn", "--quota-backend-bytes=4294967296"]

    def _apiserver_args(self) -> list[str]:
        k = self.pki
        return [f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd']}",
                f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
                f"--secure-port={self.ports['apiserver']}", f"--cert-dir={k}",
                f"--tls-cert-file={k / 'apiserver.crt'}", f"--tls-private-key-file={k / 'apiserver.key'}",
                f"--client-ca-file={k / 'ca.crt'}",
                f"--service-account-key-file={k / 'sa.pub'}",
                f"--service-account-signing-key-file={k / 'sa.key'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--requestheader-client-ca-file={k / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={k / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={k / 'front-proxy-client.key'}",
                "--allow-privileged=true",
                # 127.0.0.1 is not a valid endpoint for the `kubernetes` Service
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--v={self.verbosity}"]

    def _delegated(self, port: int) -> list[str]:
        kc = str(self.kubeconfig)
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                f"--bind-address={LOOPBACK}", f"--secure-port={port}", "--leader-elect=false",
                f"--v={self.verbosity}"]

    def _kcm_args(self) -> list[str]:
        k = self.pki
        return [*self._delegated(self.ports["kcm"]), f"--cert-dir={self.dir / 'config' / 'kcm-certs'}",
                "--controllers=*",
                f"--service-account-private-key-file={k / 'sa.key'}", f"--root-ca-file={k / 'ca.crt'}",
                f"--cluster-signing-cert-file={k / 'ca.crt'}", f"--cluster-signing-key-file={k / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--allocate-node-cidrs=false",
                "--use-service-account-credentials=false"]

    def _scheduler_args(self) -> list[str]:
        return [*self._delegated(self.ports["scheduler"]),
                f"--cert-dir={self.dir / 'config' / 'scheduler-certs'}"]

    def _jobset_args(self) -> list[str]:
        cfg = {"apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
               "leaderElection": {"leaderElect": False},
               "internalCertManagement": {"enable": False},
               "webhook": {"host": LOOPBACK, "port": self.ports["jobset-webhook"],
                           "certDir": str(self.pki / "webhook-serving")},
               "metrics": {"bindAddress": "0"},
               "health": {"healthProbeBindAddress": f"{LOOPBACK}:{self.ports['jobset-health']}"}}
        path = self.dir / "config" / "jobset.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return [f"--kubeconfig={self.kubeconfig}", f"--config={path}"]

    def _kueue_args(self) -> list[str]:
        cfg = {"apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
               "namespace": "kueue-system",
               "manageJobsWithoutQueueName": False,
               "leaderElection": {"leaderElect": False},
               "internalCertManagement": {"enable": False},
               "webhook": {"host": LOOPBACK, "port": self.ports["kueue-webhook"],
                           "certDir": str(self.pki / "webhook-serving")},
               "metrics": {"bindAddress": "0"},
               "health": {"healthProbeBindAddress": f"{LOOPBACK}:{self.ports['kueue-health']}"},
               "clientConnection": {"qps": 100, "burst": 200},
               "integrations": {"frameworks": ["batch/job", "jobset.x-k8s.io/jobset"]},
               # the on-demand visibility API server would need an APIService + a fixed port
               "featureGates": {"VisibilityOnDemand": False}}
        path = self.dir / "config" / "kueue.yaml"
        path.write_text(yaml.safe_dump(cfg))
        ensure_kueue_metrics_cert()
        return [f"--kubeconfig={self.kubeconfig}", f"--config={path}"]

    def _kwok_args(self) -> list[str]:
        key, val = KWOK_NODE_ANNOTATION
        # kwok v0.8 does not default a KwokConfiguration read from a file (parallelism 0 -> its
        # controllers refuse to start), so everything is passed as flags; the empty config file
        # (and HOME, see _spawn) keep a user's ~/.kwok/kwok.yaml out.
        path = self.dir / "config" / "kwok.yaml"
        path.write_text("# empty on purpose: kwok is configured by flags (see controlplane.py)\n")
        return [f"--config={path}", f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={key}={val}",
                "--enable-crds=Stage", "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}", "--node-ip=10.200.0.1"]

    # ---- kubeconfig / client
    def _write_kubeconfig(self) -> None:
        b64 = lambda p: base64.b64encode(p.read_bytes()).decode()  # noqa: E731
        kc = {"apiVersion": "v1", "kind": "Config", "current-context": "nlpjobs",
              "clusters": [{"name": "nlpjobs", "cluster": {
                  "server": self.server, "certificate-authority-data": b64(self.pki / "ca.crt")}}],
              "users": [{"name": "admin", "user": {
                  "client-certificate-data": b64(self.pki / "admin.crt"),
                  "client-key-data": b64(self.pki / "admin.key")}}],
              "contexts": [{"name": "nlpjobs", "context": {"cluster": "nlpjobs", "user": "admin"}}]}
        self.kubeconfig.write_text(yaml.safe_dump(kc))
        self.kubeconfig.chmod(0o600)

    def _make_client(self) -> Client:
        return Client(self.server, self.pki / "ca.crt", self.pki / "admin.crt", self.pki / "admin.key")

    # ---- readiness probes
    def _apiserver_ready(self) -> bool:
        try:
            return self.client.get("/readyz", raw=True, timeout=2).strip() == "ok"
        except ApiError:
            return False

    def _https_ok(self, port: int, path: str) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving certs of kcm/scheduler
        c = http.client.HTTPSConnection(LOOPBACK, port, context=ctx, timeout=2)
        try:
            c.request("GET", path)
            return c.getresponse().status == 200
        finally:
            c.close()

    def _http_ok(self, port: int, path: str) -> bool:
        c = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            c.request("GET", path)
            return c.getresponse().status == 200
        finally:
            c.close()

    def _crds_established(self, names: list[str]) -> bool:
        for n in names:
            crd = self.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}")
            conds = {c["type"]: c["status"] for c in ((crd.get("status") or {}).get("conditions") or [])}
            if conds.get("Established") != "True":
                return False
        return True

    def _default_sa_exists(self) -> bool:
        try:
            self.client.get("/api/v1/namespaces/default/serviceaccounts/default")
            return True
        except ApiError:
            return False

    def _webhooks_answer(self) -> bool:
        """Dry-run objects whose admission goes through the JobSet and Kueue webhooks."""
        job_spec = {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox"}]}}}
        js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
              "metadata": {"name": "webhook-probe", "namespace": "default",
                           "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
              "spec": {"replicatedJobs": [{"name": "w", "template": {"spec": job_spec}}]}}
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "webhook-probe", "namespace": "default",
                            "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
               "spec": job_spec}
        try:
            self.client.create(js, dry_run=True)
            self.client.create(job, dry_run=True)
            return True
        except ApiError as e:
            if e.status >= 500 or "webhook" in str(e):
                return False
            raise

    def _nodes_ready(self) -> bool:
        key, val = KWOK_NODE_ANNOTATION
        for n in self.client.get("/api/v1/nodes")["items"]:
            if n["metadata"].get("annotations", {}).get(key) != val:
                continue
            conds = {c["type"]: c["status"] for c in ((n.get("status") or {}).get("conditions") or [])}
            if conds.get("Ready") != "True":
                return False
        return True

    # ---- add-on manifests
    def _loopback(self, doc: dict, port: int, prefix: str) -> dict | None:
        """envtest-style: point webhook clientConfigs at https://127.0.0.1:<port><path>."""
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()

        def fix(cc: dict) -> None:
            svc = cc.pop("service", None)
            if svc is not None:
                cc["url"] = f"https://{LOOPBACK}:{port}{svc.get('path') or '/'}"
            cc["caBundle"] = ca

        kind = doc.get("kind")
        doc = copy.deepcopy(doc)
        doc["metadata"].pop("annotations", None) if kind != "CustomResourceDefinition" else \
            doc["metadata"].get("annotations", {}).pop("cert-manager.io/inject-ca-from", None)
        if kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            doc["metadata"]["name"] = prefix + doc["metadata"]["name"]
            for wh in doc.get("webhooks", []):
                fix(wh["clientConfig"])
            return doc
        if kind == "CustomResourceDefinition":
            conv = doc.get("spec", {}).get("conversion", {})
            if conv.get("strategy") == "Webhook":
                fix(conv["webhook"]["clientConfig"])
            return doc
        return None  # Services etc. are not needed

    def _install_addon_manifests(self) -> list[str]:
        crds: list[str] = []
        plan = [("jobset", self.ports["jobset-webhook"]), ("kueue", self.ports["kueue-webhook"]),
                ("kwok", 0)]
        objs = []
        for comp, port in plan:
            for fname in ("crds.yaml", "webhooks.yaml"):
                f = self.manifests / comp / fname
                if not f.exists():
                    continue
                for doc in yaml.safe_load_all(f.read_text()):
                    if not doc:
                        continue
                    doc = self._loopback(doc, port, f"{comp}-")
                    if doc is None:
                        continue
                    if doc["kind"] == "CustomResourceDefinition":
                        crds.append(doc["metadata"]["name"])
                    objs.append(doc)
        # CRDs first, then webhook configurations
        objs.sort(key=lambda o: o["kind"] != "CustomResourceDefinition")
        errs: list[BaseException] = []

        def go(o: dict) -> None:
            try:
                try:  # a plain create is much cheaper than server-side apply for the big CRDs
                    self.client.create(o)
                except ApiError as e:
                    if e.status != 409:
                        raise
                    self.client.apply(o)
            except BaseException as e:  # noqa: BLE001
                errs.append(e)
        threads = [threading.Thread(target=go, args=(o,)) for o in objs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errs:
            raise errs[0]
        return crds

    def stages(self) -> list[dict]:
        """The kwok Stage objects applied at start-up (upstream stage sets, pod delays tuned)."""
        out = []
        for s in self.stage_sets:
            for f in sorted((self.manifests / "kwok" / "stages" / s).glob("*.yaml")):
                for st in yaml.safe_load_all(f.read_text()):
                    if not st or st.get("kind") != "Stage":
                        continue
                    spec = st["spec"]
                    delay = spec.get("delay")
                    if spec["resourceRef"]["kind"] == "Pod" and delay is not None:
                        # upstream: a random delay in [1s, 5s] per step; tests want fast pods.
                        # kwok's "jitter" is the *upper bound* of the delay (a jitter below the
                        # delay caps it), so it is dropped unless asked for: then the per-pod
                        # annotation <stage>.stage.kwok.x-k8s.io/delay alone sets the delay.
                        delay["durationMilliseconds"] = self.pod_stage_delay_ms
                        if self.pod_stage_jitter_ms is None:
                            delay.pop("jitterDurationMilliseconds", None)
                        else:
                            delay["jitterDurationMilliseconds"] = self.pod_stage_jitter_ms
                        jf = delay.get("jitterDurationFrom", {}).get("expressionFrom", "")
                        if jf == ".metadata.deletionTimestamp":
                            # pod-delete: don't wait for the grace period (kubelet w/ a fast-exiting container)
                            delay.pop("jitterDurationFrom")
                    out.append(st)
        if "pod/general" in self.stage_sets:
            out.append(self.terminate_stage())
        return out

    def terminate_stage(self) -> dict:
        """Our one addition to kwok's upstream stages: what the kubelet does to a deleted pod.

        kwok v0.8's ``pod-delete`` only removes pods *without* finalizers; a deleted (e.g. evicted)
        Job pod keeps the Job controller's tracking finalizer and, for a Job with a podFailurePolicy,
        is only counted once its phase is terminal. This stage stops the containers (exit code 143,
        or the ``nlpjobs-pod-terminate.stage.kwok.x-k8s.io/exit-code`` annotation) and sets phase
        Failed, keeping conditions such as DisruptionTarget; then the finalizer goes and
        ``pod-delete`` removes the pod.
        """
        prefix = TERMINATE_PREFIX
        return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
                "metadata": {"name": "nlpjobs-pod-terminate"},
                "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                         "selector": {"matchExpressions": [
                             {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
                             {"key": ".metadata.finalizers", "operator": "Exists"},
                             {"key": ".status.phase", "operator": "In", "values": ["Pending", "Running"]}]},
                         "delay": {"durationMilliseconds": self.pod_stage_delay_ms,
                                   "durationFrom": {"expressionFrom": f'.metadata.annotations["{prefix}delay"]'}},
                         "next": {"statusTemplate": TERMINATE_TEMPLATE.replace("PREFIX", prefix)}}}

    # ---- nodes
    def create_node(self, name: str, *, cpu: str | int = "32", memory: str = "128Gi", pods: int = 110,
                    gpus: int = 0, extra_resources: dict | None = None, labels: dict | None = None,
                    taints: list[dict] | None = None, annotations: dict | None = None) -> dict:
        """Create (or update) a kwok-managed fake node with the given capacity."""
        cap = {"cpu": str(cpu), "memory": memory, "pods": str(pods), "ephemeral-storage": "1Ti"}
        if gpus:
            cap["nvidia.com/gpu"] = str(gpus)
        cap.update({k: str(v) for k, v in (extra_resources or {}).items()})
        key, val = KWOK_NODE_ANNOTATION
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name,
                             "annotations": {key: val, "node.alpha.kubernetes.io/ttl": "0",
                                             **(annotations or {})},
                             "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                        "kubernetes.io/arch": "amd64", "type": "kwok",
                                        **(labels or {})}},
                "spec": {"taints": taints or []},
                "status": {"capacity": cap, "allocatable": dict(cap)}}
        try:
            return self.client.create(node)
        except ApiError as e:
            if e.status != 409:
                raise
            return self.client.apply(node)

    def create_cpu_node(self, name: str, **kw) -> dict:
        labels = {"nlpjobs.dev/pool": "cpu", **kw.pop("labels", {})}
        return self.create_node(name, labels=labels, **kw)

    def create_gpu_node(self, name: str, gpus: int = 8, **kw) -> dict:
        labels = {"nlpjobs.dev/pool": "gpu", "nvidia.com/gpu.present": "true",
                  "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": str(gpus),
                  **kw.pop("labels", {})}
        taints = kw.pop("taints", None) or [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        kw.setdefault("cpu", "96")
        kw.setdefault("memory", "1Ti")
        return self.create_node(name, gpus=gpus, labels=labels, taints=taints, **kw)

    def create_default_nodes(self) -> None:
        for i in range(2):
            self.create_cpu_node(f"kwok-cpu-{i}")
        for i in range(2):
            self.create_gpu_node(f"kwok-gpu-{i}")

    def wait_nodes_ready(self, timeout: float = 30) -> None:
        self._wait("kwok nodes Ready", time.monotonic() + timeout, self._nodes_ready)

    # ---- helpers for tests
    @staticmethod
    def pod_exit_metadata(exit_code: int, *, container: str | None = None, reason: str = "Error",
                          message: str = "exited (kwok)", delay: str | None = None) -> dict:
        """labels + annotations that make kwok terminate a pod's container(s) with ``exit_code``.

        Uses kwok's upstream chaos stage ``pod-container-running-failed``: once the pod is
        Running, its container(s) (all, or just ``container``) get
        ``state.terminated.exitCode=exit_code`` and the pod phase becomes Failed.
        The annotation pod-complete.../weight=0 makes that deterministic for Job pods (which
        would otherwise also match the ``pod-complete`` stage). Merge the result into a pod
        (template) ``metadata``.
        """
        ann = {KWOK_FAIL_PREFIX + "exit-code": str(exit_code), KWOK_FAIL_PREFIX + "reason": reason,
               KWOK_FAIL_PREFIX + "message": message, KWOK_COMPLETE_PREFIX + "weight": "0"}
        if container:
            ann[KWOK_FAIL_PREFIX + "container-name"] = container
        if delay:  # e.g. "5s": how long the pod runs before it fails
            ann[KWOK_FAIL_PREFIX + "delay"] = delay
            ann[KWOK_FAIL_PREFIX + "jitter-delay"] = delay
        return {"labels": {KWOK_FAIL_LABEL: "true"}, "annotations": ann}

    @staticmethod
    def pod_runtime_metadata(run_for: str) -> dict:
        """annotations that keep a Job pod Running for ``run_for`` (e.g. "30s") before it succeeds."""
        return {"labels": {}, "annotations": {KWOK_COMPLETE_PREFIX + "delay": run_for,
                                              KWOK_COMPLETE_PREFIX + "jitter-delay": run_for}}


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for c in ("up", "down", "status"):
        p = sub.add_parser(c)
        p.add_argument("--dir", type=Path, default=None, help=f"run dir (default {default_dir()})")
        if c == "up":
            p.add_argument("--no-nodes", action="store_true", help="don't create the default kwok nodes")
            p.add_argument("--timeout", type=float, default=180)
            p.add_argument("--build", action="store_true", help="run build.sh first (idempotent)")
        if c == "down":
            p.add_argument("--purge", action="store_true", help="also delete logs and the run dir")
    a = ap.parse_args(argv)
    if a.cmd == "up":
        b = build_dir(build=a.build)
        cp = ControlPlane(a.dir, build=b, default_nodes=not a.no_nodes)
        if cp.running():
            print(f"already running; export KUBECONFIG={cp.kubeconfig}")
            return 0
        cp.start(timeout=a.timeout)
        print(f"export KUBECONFIG={cp.kubeconfig}")
        return 0
    cp = ControlPlane(a.dir)
    if a.cmd == "down":
        cp.stop(purge=a.purge)
        return 0
    st = cp.status()
    print(json.dumps(st, indent=2))
    return 0 if st["running"] else 1


if __name__ == "__main__":
    sys.exit(main())
