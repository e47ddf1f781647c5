"""The control-plane tier: a real Kubernetes control plane (etcd, kube-apiserver, controller manager,
scheduler), the JobSet and Kueue controllers and kwok's nodes, built from their upstream Go modules by
tests/cluster/build.sh and started here on loopback ports. No kubelet: kwok moves pods through their
phases, and a test makes one fail with a chosen exit code or evicts it.

Fixtures:
- ``cluster`` (session): the running control plane; skipped where it cannot be built (no Go), failed
  instead under ``NLPJOBS_REQUIRE_CLUSTER=1`` (.ci/run sets it).
- ``kube``: a ``kubernetes`` ApiClient for it.
- ``namespace``: a fresh namespace that enforces the restricted Pod Security level, with the storage Secret.
- ``nlpjobs``: runs the real CLI (``python -m nlpjobs``) against the cluster, with the real ``helm``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from controlplane import ControlPlane, build_dir  # noqa: E402
from polling import wait_for  # noqa: E402

from isolation import _isolated_cache  # noqa: E402,F401  (autouse: registered by the import)


def _go_available() -> bool:
    return subprocess.run(["bash", "-c", "command -v go"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    required = os.environ.get("NLPJOBS_REQUIRE_CLUSTER") == "1"
    try:
        build = build_dir(build=True)  # idempotent: reuses the versioned cache (minutes only the first time)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        if required or _go_available():
            pytest.fail(f"the control plane could not be built: {exc} (see tests/cluster/README.md)")
        pytest.skip("control-plane tier: needs Go to build the control plane (make cluster-build)")
    cp = ControlPlane(tmp_path_factory.mktemp("k8s"), build=build)
    started = time.monotonic()
    cp.start(timeout=240)
    print(f"\ncontrol plane up in {time.monotonic() - started:.1f}s ({cp.server})")
    try:
        yield cp
    finally:
        cp.stop(quiet=True)


@pytest.fixture(scope="session")
def kube(cluster: ControlPlane) -> Any:
    from kubernetes import config

    return config.new_client_from_config(str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def helm_path(request: pytest.FixtureRequest) -> Path:
    from nlpjobs.k8s.helm import helm_binary

    cache = request.config.cache
    return helm_binary(tools_dir=cache.mkdir("nlpjobs-tools") if cache is not None else None)


@pytest.fixture
def namespace(kube: Any, request: pytest.FixtureRequest) -> str:
    """A new namespace enforcing the restricted Pod Security level, with the chart's storage Secret."""
    from kubernetes import client

    name = f"t-{request.node.name[5:30].replace('_', '-').strip('-').lower()}-{uuid.uuid4().hex[:5]}"
    core = client.CoreV1Api(kube)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"})))
    wait_for(f"the default ServiceAccount of {name}", lambda: _has_default_sa(core, name))
    core.create_namespaced_secret(name, client.V1Secret(metadata=client.V1ObjectMeta(name="nlpjobs-storage"),
                                                        string_data={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}))
    return name


def _has_default_sa(core: Any, namespace: str) -> bool:
    return any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(namespace).items)


@pytest.fixture
def nlpjobs(cluster: ControlPlane, helm_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``nlpjobs <args>`` as a user runs it against this cluster (its kubeconfig, the real helm)."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "NLPJOBS_HELM": str(helm_path)}

    def run(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        run_env = {**env, "KUBECONFIG": str(kubeconfig)} if kubeconfig else env
        return subprocess.run([sys.executable, "-m", "nlpjobs", *args], capture_output=True, text=True,
                              timeout=300, env=run_env)

    return run
