"""`nlpjobs submit`: the chart's values from a few flags, then ``helm upgrade --install`` (or ``helm template``)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlpjobs.k8s.helm import CHART_DIR, HelmError, helm_binary, render


@dataclass
class Submission:
    task: str
    release: str
    namespace: str = "default"
    preset: str | None = None
    nodes: int | None = None
    gpus: int | None = None
    processes: int | None = None
    image: str | None = None
    tag: str | None = None
    run_name: str | None = None
    values_files: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    helm_sets: list[str] = field(default_factory=list)
    context: str | None = None
    chart: str | None = None

    def flag_values(self) -> dict[str, Any]:
        """Values set by flags only (so a VALUES file keeps what the flags do not mention)."""
        values: dict[str, Any] = {"task": self.task}
        if self.preset:
            values["preset"] = self.preset
        if self.nodes is not None:
            values["nodes"] = self.nodes
        if self.gpus is not None:
            values["gpu"] = {"enabled": self.gpus > 0}
            if self.gpus > 0:
                values["processesPerNode"] = self.gpus
        if self.processes is not None:
            values["processesPerNode"] = self.processes
        if self.image or self.tag:
            values["image"] = {k: v for k, v in (("repository", self.image), ("tag", self.tag)) if v}
        if self.run_name:
            values["runName"] = self.run_name
        if self.overrides:
            values["overrides"] = list(self.overrides)
        return values

    def chart_dir(self) -> Path:
        return Path(self.chart or os.environ.get("NLPJOBS_CHART") or CHART_DIR)


def _with_flag_file(sub: Submission) -> tuple[tempfile.TemporaryDirectory[str], list[str]]:
    for path in sub.values_files:
        if not Path(path).is_file():
            raise HelmError(f"values file {path!r} does not exist")
    tmp = tempfile.TemporaryDirectory(prefix="nlpjobs-submit-")
    flags = Path(tmp.name) / "flags.yaml"
    flags.write_text(yaml.safe_dump(sub.flag_values(), sort_keys=False))
    return tmp, [*sub.values_files, str(flags)]  # flags last: they win over the files


def manifests(sub: Submission) -> str:
    """The manifests ``submit`` would apply (``helm template``; needs no cluster)."""
    tmp, files = _with_flag_file(sub)
    with tmp:
        return render(files, sub.helm_sets, release=sub.release, namespace=sub.namespace, chart=sub.chart_dir())


def install(sub: Submission, timeout_s: float = 300) -> str:
    """``helm upgrade --install`` the release into the current (or ``sub.context``) cluster."""
    chart = sub.chart_dir()
    if not (chart / "Chart.yaml").is_file():
        raise HelmError(f"{chart} is not a Helm chart (no Chart.yaml); pass --chart or set NLPJOBS_CHART")
    tmp, files = _with_flag_file(sub)
    with tmp:
        cmd = [str(helm_binary()), "upgrade", "--install", sub.release, str(chart), "--namespace", sub.namespace]
        if sub.context:
            cmd += ["--kube-context", sub.context]
        for path in files:
            cmd += ["--values", path]
        for item in sub.helm_sets:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise HelmError(f"helm upgrade --install failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
