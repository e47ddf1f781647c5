"""Read a release's Jobs and pods through the Kubernetes API (`nlpjobs status` / `nlpjobs logs`).

Everything here talks to the cluster of the current kube context (or ``--context``); without one, or
when its API server does not answer, :class:`ClusterError` says which and how to get one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

STAGES = ("preprocess", "train", "evaluate")
STAGE_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
EXIT_MEANINGS = {
    0: "finished",
    1: "crashed (Python traceback in the logs)",
    2: "invalid configuration",
    3: "bad data",
    4: "object storage unreachable or refused",
    5: "launch/rendezvous or wait timed out",
    6: "cluster or Helm error",
    7: "--overfit-batch smoke test failed",
    8: "non-finite loss or gradient (see <run>/nonfinite/)",
    137: "killed (SIGKILL: out of memory or deadline)",
    143: "stopped by SIGTERM after committing a checkpoint (preempted or deleted); a rerun resumes",
}
_PROGRESS = re.compile(r"(train|evaluate|generate|tokenize)[^|\r\n]*?(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")


class ClusterError(RuntimeError):
    """No usable kube context, or its API server cannot be reached."""


def connect(context: str | None = None, timeout_s: float = 5.0) -> Any:
    """An ``ApiClient`` for ``context`` (default: the current one) after checking the server answers."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config(context=context)
    except (ConfigException, FileNotFoundError, TypeError) as exc:
        try:
            if context is not None:
                raise
            config.load_incluster_config()
        except ConfigException:
            raise ClusterError(
                f"no Kubernetes cluster configured ({exc}). Point KUBECONFIG at your cluster's kubeconfig, "
                "pick one with --context, or start a local one with `make kind-up`.") from exc
    api = client.ApiClient()
    host = api.configuration.host
    try:
        client.VersionApi(api).get_code(_request_timeout=timeout_s)
    except Exception as exc:  # urllib3 connection errors, TLS errors, 401/403
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise ClusterError(f"cannot reach the Kubernetes API server at {host}: {reason}. Check that the cluster "
                           "is running and your kube context/credentials (`kubectl cluster-info`).") from exc
    return api


@dataclass
class PodState:
    name: str
    stage: str
    index: int | None
    phase: str
    detail: str = ""
    exit_code: int | None = None
    restarts: int = 0


@dataclass
class StageState:
    stage: str
    job: str
    state: str
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    completions: int = 1
    pods: list[PodState] = field(default_factory=list)
    progress: str = ""


def pod_state(pod: Any) -> PodState:
    """A pod's state in human terms: waiting reasons, OOM kills, exit codes with their meaning."""
    labels = pod.metadata.labels or {}
    index = labels.get(INDEX_LABEL)
    status = pod.status
    state = PodState(pod.metadata.name, labels.get(STAGE_LABEL, "?"), int(index) if index is not None else None,
                     status.phase or "Unknown")
    statuses = list(status.init_container_statuses or []) + list(status.container_statuses or [])
    for cs in statuses:
        state.restarts += cs.restart_count or 0
        current = cs.state
        if current.waiting and current.waiting.reason not in (None, "PodInitializing"):
            state.detail = f"{cs.name}: {current.waiting.reason}" + (
                f" ({current.waiting.message})" if current.waiting.message else "")
        elif current.terminated and current.terminated.exit_code != 0:
            code = current.terminated.exit_code
            state.exit_code = code
            reason = current.terminated.reason or ""
            meaning = "out of memory (OOMKilled): raise the memory limit or lower the batch size" \
                if reason == "OOMKilled" else EXIT_MEANINGS.get(code, reason or "failed")
            state.detail = f"{cs.name}: exit {code}, {meaning}"
        elif current.running and cs.name.startswith("wait-for-") and not state.detail:
            state.detail = f"waiting for the {cs.name.removeprefix('wait-for-')}'s _SUCCESS marker"
    if status.phase == "Pending" and not state.detail:
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                state.detail = f"unschedulable: {cond.message}"
    return state


def job_state(job: Any) -> StageState:
    labels = job.metadata.labels or {}
    st = job.status
    conditions = {c.type: c for c in (st.conditions or []) if c.status == "True"}
    if "Complete" in conditions:
        state = "Complete"
    elif "Failed" in conditions:
        cond = conditions["Failed"]
        state = f"Failed ({cond.reason}: {cond.message})" if cond.message else f"Failed ({cond.reason})"
    elif job.spec.suspend:
        state = "Suspended (queued, e.g. waiting for Kueue admission)"
    elif st.active:
        state = "Running"
    else:
        state = "Pending"
    return StageState(labels.get(STAGE_LABEL, "?"), job.metadata.name, state, st.active or 0, st.succeeded or 0,
                      st.failed or 0, job.spec.completions or 1)


def last_progress(log_tail: str) -> str:
    """The newest tqdm progress in a log tail, e.g. 'train 45% (90/200)'."""
    matches = list(_PROGRESS.finditer(log_tail))
    if not matches:
        return ""
    m = matches[-1]
    return f"{m.group(1)} {m.group(2)}% ({m.group(3)}/{m.group(4)})"


def release_status(api: Any, release: str, namespace: str) -> list[StageState]:
    """Stages of ``release`` in pipeline order, with their pods and the progress of the running ones."""
    from kubernetes import client

    selector = f"{INSTANCE_LABEL}={release}"
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    stages = {s.stage: s for s in map(job_state, batch.list_namespaced_job(namespace, label_selector=selector).items)}
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        ps = pod_state(pod)
        if ps.stage in stages:
            stages[ps.stage].pods.append(ps)
        if ps.phase == "Running" and (ps.index in (None, 0)) and ps.stage in stages:
            try:
                tail = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=ps.stage, tail_lines=5)
                stages[ps.stage].progress = last_progress(tail)
            except Exception:  # the main container may not have started (init container still waiting)
                pass
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(stages.values(), key=lambda s: order.get(s.stage, 99))


def format_status(release: str, namespace: str, stages: list[StageState]) -> str:
    if not stages:
        return (f"release {release!r} has no Jobs in namespace {namespace!r}: not submitted yet, or finished and "
                "removed after ttlSecondsAfterFinished (check `helm list -n <namespace>`).")
    lines = [f"release {release} (namespace {namespace})"]
    for s in stages:
        counts = f"pods {s.active} running, {s.succeeded}/{s.completions} done, {s.failed} failed"
        lines.append(f"  {s.stage:<10} {s.state:<9} {counts}" + (f"  · {s.progress}" if s.progress else ""))
        for p in sorted(s.pods, key=lambda p: (p.index or 0, p.name)):
            if p.detail or p.restarts:
                rank = f"node {p.index} " if p.index is not None else ""
                restarts = f", {p.restarts} restarts" if p.restarts else ""
                lines.append(f"      {rank}{p.name}: {p.phase}{restarts}" + (f" · {p.detail}" if p.detail else ""))
    return "\n".join(lines)


def stage_pods(api: Any, release: str, namespace: str, stage: str, index: int | None) -> list[Any]:
    from kubernetes import client

    selector = f"{INSTANCE_LABEL}={release},{STAGE_LABEL}={stage}"
    if index is not None:
        selector += f",{INDEX_LABEL}={index}"
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)
