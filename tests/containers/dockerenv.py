"""The container tier's own Docker daemon, and the chart's pod specs run as real containers.

No Kubernetes API server can be had here, so a rendered pod is approximated faithfully where it matters
to nlpjobs: the image, command/args and environment exactly as rendered (Secrets resolved from a dict),
the user, a read-only root filesystem with the pod's emptyDir mounts as tmpfs, all capabilities dropped,
no privilege escalation, and for the Indexed training Job its pods' hostnames on a user network (the
headless Service's DNS names become network aliases) plus JOB_COMPLETION_INDEX.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Docker:
    def __init__(self, host: str) -> None:
        self.host = host

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def __call__(self, *args: str, check: bool = True, timeout: float = 900,
                 capture: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["docker", *args], capture_output=capture, text=True, timeout=timeout, env=self.env())
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])}... exited {proc.returncode}:\n"
                               f"{(proc.stdout or '')[-4000:]}\n{(proc.stderr or '')[-4000:]}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["docker", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env())

    def ok(self) -> bool:
        try:
            return self("info", check=False, timeout=20).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def remove_stale_workdirs(pattern: str = "/tmp/nlpjobs-dockerd-*") -> list[str]:
    """Data roots of this tier's daemons that no longer run (a killed test session leaves its images behind:
    tens of GB with the CUDA wheels of PyPI's torch). A folder whose dockerd is alive is left alone."""
    import glob

    removed = []
    for folder in glob.glob(pattern):
        pidfile = Path(folder) / "dockerd.pid"
        try:
            if time.time() - Path(folder).stat().st_mtime < 300:
                continue  # just made: its daemon may not have written its pid yet
            os.kill(int(pidfile.read_text().strip()), 0)
            continue  # its daemon runs: another session's
        except (OSError, ValueError):
            pass
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(f"{folder}/")]
        for mount in sorted(mounts, key=len, reverse=True):  # a dead daemon's overlay and exec mounts
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def start_dockerd(workdir: Path) -> tuple[Docker, subprocess.Popen[bytes]]:
    """A private dockerd (own data root, exec root and socket), ready in a few seconds."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise FileNotFoundError("dockerd not found: apt-get install -y docker.io (.ci/run does)")
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "docker.sock"
    log = open(workdir / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([dockerd, "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
                             "-H", f"unix://{sock}", "--pidfile", str(workdir / "dockerd.pid")],
                            stdout=log, stderr=subprocess.STDOUT)
    docker = Docker(f"unix://{sock}")
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited {proc.returncode}: {(workdir / 'dockerd.log').read_text()[-3000:]}")
        if sock.exists() and docker.ok():
            return docker, proc
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("dockerd did not become ready in 60 s")


@dataclass
class Pod:
    """One rendered pod of a Job (optionally one index of an Indexed Job)."""

    job: dict[str, Any]
    index: int | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return self.job["spec"]["template"]["spec"]

    @property
    def name(self) -> str:
        base = self.job["metadata"]["name"]
        return f"{base}-{self.index}" if self.index is not None else base

    def docker_args(self, container: dict[str, Any], network: str, secrets: dict[str, dict[str, str]],
                    extra_env: dict[str, str] | None = None) -> list[str]:
        spec = self.spec
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        args = ["run", "--rm", "--name", f"{self.name}-{container['name']}", "--network", network,
                "--hostname", self.name]
        if user is not None:
            args += ["--user", f"{user}:{group if group is not None else user}"]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if "ALL" in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", "ALL"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        subdomain = spec.get("subdomain")
        if subdomain:  # the headless Service's per-pod DNS name
            args += ["--network-alias", f"{self.name}.{subdomain}"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" not in volume:
                raise AssertionError(f"unexpected volume type in {volume}")
            args += ["--mount", f"type=tmpfs,dst={mount['mountPath']},tmpfs-mode=1777"]
        env = dict(extra_env or {})
        if self.index is not None:
            env["JOB_COMPLETION_INDEX"] = str(self.index)
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in item.get("valueFrom", {}):
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = secrets[ref["name"]][ref["key"]]
            elif "fieldRef" in item.get("valueFrom", {}):
                env[item["name"]] = {"metadata.name": self.name}.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        if container.get("command"):
            args += ["--entrypoint", container["command"][0]]
        args.append(container["image"])
        args += list(container.get("command", [])[1:]) + list(container.get("args", []))
        return args


def jobs_by_stage(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Jobs the run's JobSet creates, by stage, as the JobSet controller makes them: named
    ``<jobset>-<stage>-0``, their pods in the JobSet's subdomain (its headless Service) when DNS hostnames are on."""
    import copy

    [jobset] = [d for d in manifests if d and d["kind"] == "JobSet"]
    name = jobset["metadata"]["name"]
    network = jobset["spec"].get("network", {})
    jobs = {}
    for replicated in jobset["spec"]["replicatedJobs"]:
        template = copy.deepcopy(replicated["template"])
        if network.get("enableDNSHostnames"):
            template["spec"]["template"]["spec"]["subdomain"] = network.get("subdomain") or name
        jobs[replicated["name"]] = {"apiVersion": "batch/v1", "kind": "Job",
                                    "metadata": {"name": f"{name}-{replicated['name']}-0", **template.get("metadata", {})},
                                    "spec": template["spec"]}
    return jobs
