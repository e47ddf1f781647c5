"""`nlpjobs submit`: the chart's values from a few flags, then the run on the cluster (or ``helm template``).

What a submission does depends on the run already there (``plan``):
- none (or one removed after its TTL): ``helm upgrade --install``;
- finished or failed: the old run's objects are removed (``helm uninstall``, waiting until its JobSet is gone)
  and it is installed again: training resumes from the run's last committed checkpoint (same run name);
- queued or running with the same settings: nothing changes; with other settings: refused, unless ``replace``
  (then as for a finished run). A JobSet's stages cannot be changed in place, and an upgrade that only
  patched labels would leave a failed run failed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlpjobs.k8s.cluster import VALUES_HASH
from nlpjobs.k8s.helm import CHART_DIR, HelmError, helm_binary, render

SubmitError = HelmError
"""A submission that cannot go ahead as asked (exit code 6, as Helm's own refusals)."""


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

    def check(self) -> None:
        """Flags that contradict each other."""
        if self.gpus and self.processes is not None and self.processes != self.gpus:
            raise SubmitError(f"--gpus {self.gpus} and --processes {self.processes}: with GPUs each training process "
                              "drives one GPU, so the two must be equal; give only --gpus")

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
        for path in files:
            cmd += ["--values", path]
        for item in sub.helm_sets:
            cmd += ["--set", item]
        proc = _helm(sub, cmd, timeout_s)
    if proc.returncode != 0:
        raise HelmError(f"helm upgrade --install failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def uninstall(sub: Submission, api: Any, jobset: str, timeout_s: float = 300) -> None:
    """``helm uninstall`` the release and wait until its JobSet is gone from the API server."""
    from kubernetes import client

    from nlpjobs.k8s.cluster import JOBSET, call

    proc = _helm(sub, [str(helm_binary()), "uninstall", sub.release, "--namespace", sub.namespace, "--wait",
                       "--timeout", f"{int(timeout_s)}s"], timeout_s + 30)
    if proc.returncode != 0 and "not found" not in proc.stderr:
        raise HelmError(f"helm uninstall {sub.release} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout_s
    while True:
        found = call(f"read JobSet {jobset}", lambda: custom.get_namespaced_custom_object(
            *JOBSET[:2], sub.namespace, JOBSET[2], jobset), allow_missing=True)
        if found is None:
            return
        if time.monotonic() > deadline:
            raise HelmError(f"JobSet {jobset} was not deleted within {timeout_s:.0f}s (finalizers?); check "
                            f"`kubectl -n {sub.namespace} get jobset {jobset} -o yaml`")
        time.sleep(0.5)


def _helm(sub: Submission, cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    if sub.context:
        cmd = [*cmd, "--kube-context", sub.context]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def wanted_hash(rendered: str) -> tuple[str, str]:
    """(JobSet name, values hash) of rendered manifests."""
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "JobSet":
            return doc["metadata"]["name"], doc["metadata"].get("annotations", {}).get(VALUES_HASH, "")
    raise HelmError("the chart rendered no JobSet")


def submit(sub: Submission, api: Any, replace: bool = False) -> str:
    """Submit ``sub`` as the module docstring says; a line that tells the user what happened."""
    from nlpjobs.k8s.cluster import run_status

    name, wanted = wanted_hash(manifests(sub))
    run = run_status(api, sub.release, sub.namespace, with_progress=False)
    if run.state == "missing":
        install(sub)
        return f"submitted {sub.release}: a new run"
    if not run.finished and not replace:
        if run.values_hash == wanted:
            return (f"{sub.release} is already {run.state} with these settings ({run.reason}); nothing changed. "
                    "Pass --replace to restart it.")
        raise SubmitError(f"{sub.release} is {run.state} with other settings ({run.reason}). Wait for it to finish, "
                          "or pass --replace to stop it and start again with the new settings (training resumes "
                          "from its last committed checkpoint when the run name is unchanged).")
    what = {"complete": "finished", "failed": "failed"}.get(run.state, run.state)
    uninstall(sub, api, run.jobset or name)
    install(sub)
    return f"submitted {sub.release}: replaced the {what} run; training resumes from its last committed checkpoint"
