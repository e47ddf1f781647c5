"""Read a run on the cluster through the Kubernetes API (`nlpjobs status` / `nlpjobs logs` / `nlpjobs submit`).

A run is one JobSet (charts/nlpjobs): its stages are replicated jobs started in order, restarted together
on a failure, and, with Kueue, admitted as one workload. This module turns the JobSet, its Kueue Workload,
its Jobs and their pods into states a user can act on, in words. Everything talks to the cluster of the
current kube context (or ``--context``); without one, when the API server does not answer, or when it
refuses a request, :class:`ClusterError` says which and how to fix it: never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

STAGES = ("preprocess", "train", "evaluate", "predict")
STAGE_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
WORKLOAD_VERSIONS = ("v1beta2", "v1beta1")
"""Kueue's Workload API versions, newest first (v1beta2 since Kueue 0.15; older releases serve only v1beta1)."""
VALUES_HASH = "nlpjobs.io/values-sha256"
EXIT_MEANINGS = {
    0: "finished",
    1: "crashed (Python traceback in the logs)",
    2: "invalid configuration",
    3: "bad data",
    4: "object storage (or the Hub when publishing, or a tracking server) unreachable or refused",
    5: "launch/rendezvous or wait timed out",
    6: "cluster or Helm error",
    7: "--overfit-batch smoke test failed",
    8: "non-finite loss or gradient (see <run>/nonfinite/)",
    137: "killed (SIGKILL: out of memory or deadline)",
    143: "stopped by SIGTERM after committing a checkpoint (preempted or deleted); a rerun resumes",
}
_PROGRESS = re.compile(r"(train|evaluate|generate|tokenize)[^|\r\n]*?(\d+)%\|[^|]*\|\s*(\d+)/(\d+)")
_EXIT_CODE = re.compile(r"failed with exit code (\d+)")
T = TypeVar("T")


class ClusterError(RuntimeError):
    """No usable kube context, its API server cannot be reached, or it refused a request."""


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


def call(what: str, request: Callable[[], T], missing: T | None = None, allow_missing: bool = False) -> T:
    """``request()``, with the API server's refusals as a :class:`ClusterError` that says ``what`` was asked
    and what to do; a 404 returns ``missing`` when ``allow_missing``."""
    from kubernetes.client.exceptions import ApiException

    try:
        return request()
    except ApiException as exc:
        if exc.status == 404 and allow_missing:
            return missing  # type: ignore[return-value]
        detail = _api_message(exc)
        if exc.status == 403:
            raise ClusterError(f"the API server refused to {what} (403 Forbidden: {detail}). Your account needs RBAC "
                               "permission for it in this namespace; ask your cluster admin, or use --context.") from None
        if exc.status == 404:
            raise ClusterError(f"cannot {what}: not found ({detail}). Is the JobSet controller installed (the chart "
                               "needs it: charts/nlpjobs/README.md), and is the namespace right (-n)?") from None
        if exc.status == 400 and "waiting to start" in detail:
            raise ClusterError(f"cannot {what}: the container has not started yet ({detail}); "
                               "see `nlpjobs status` for why, and retry when it runs") from None
        raise ClusterError(f"cannot {what}: the API server answered {exc.status} {exc.reason}: {detail}") from None
    except OSError as exc:  # connection reset, timeouts
        raise ClusterError(f"cannot {what}: the API server stopped answering ({exc})") from None


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc.reason).strip()


# ---- states --------------------------------------------------------------------------------------


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
    state: str
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    completions: int = 1
    pods: list[PodState] = field(default_factory=list)
    progress: str = ""


@dataclass
class RunState:
    """A run as its user sees it: ``state`` is one of queued, admitted, running, restarting, failed, complete
    (``missing``: no JobSet), with ``reason`` in words."""

    release: str
    namespace: str
    jobset: str
    state: str
    reason: str = ""
    restarts: int = 0
    counted_restarts: int = 0
    max_restarts: int = 0
    values_hash: str = ""
    queue: str = ""
    stages: list[StageState] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in ("failed", "complete")


def pod_state(pod: Any) -> PodState:
    """A pod's state in human terms: waiting reasons, OOM kills, exit codes with their meaning."""
    labels = pod.metadata.labels or {}
    index = labels.get(INDEX_LABEL)
    status = pod.status
    state = PodState(pod.metadata.name, labels.get(STAGE_LABEL, "?"), int(index) if index is not None else None,
                     status.phase or "Unknown")
    for cs in list(status.container_statuses or []):
        state.restarts += cs.restart_count or 0
        current = cs.state
        if current.waiting and current.waiting.reason not in (None, "PodInitializing", "ContainerCreating"):
            state.detail = f"{cs.name}: {current.waiting.reason}" + (
                f" ({current.waiting.message})" if current.waiting.message else "")
        elif current.terminated and current.terminated.exit_code != 0:
            code = current.terminated.exit_code
            state.exit_code = code
            reason = current.terminated.reason or ""
            meaning = "out of memory (OOMKilled): raise the memory limit or lower the batch size" \
                if reason == "OOMKilled" else EXIT_MEANINGS.get(code, reason or "failed")
            state.detail = f"{cs.name}: exit {code}, {meaning}"
    if status.phase == "Pending" and not state.detail:
        for cond in status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                state.detail = f"unschedulable: {cond.message}"
    for cond in status.conditions or []:
        if cond.type == "DisruptionTarget" and cond.status == "True":
            state.detail = f"disrupted ({cond.reason}: {cond.message})"
    return state


def job_state(job: Any) -> StageState:
    labels = job.metadata.labels or {}
    st = job.status
    conditions = {c.type: c for c in (st.conditions or []) if c.status == "True"}
    if "Complete" in conditions:
        state = "complete"
    elif "Failed" in conditions:
        cond = conditions["Failed"]
        state = f"failed ({cond.reason}: {cond.message})" if cond.message else f"failed ({cond.reason})"
    elif job.spec.suspend:
        state = "suspended"
    elif st.active:
        state = "running"
    else:
        state = "starting"
    return StageState(labels.get(STAGE_LABEL, "?"), state, st.active or 0, st.succeeded or 0, st.failed or 0,
                      job.spec.completions or 1)


def last_progress(log_tail: str) -> str:
    """The newest tqdm progress in a log tail, e.g. 'train 45% (90/200)'."""
    matches = list(_PROGRESS.finditer(log_tail))
    if not matches:
        return ""
    m = matches[-1]
    return f"{m.group(1)} {m.group(2)}% ({m.group(3)}/{m.group(4)})"


def find_jobset(api: Any, release: str, namespace: str) -> dict[str, Any] | None:
    """The JobSet of ``release`` (the chart labels it with the release), or None."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    found = call(f"list JobSets in namespace {namespace!r}", lambda: custom.list_namespaced_custom_object(
        *JOBSET[:2], namespace, JOBSET[2], label_selector=f"{INSTANCE_LABEL}={release}"))
    items = found.get("items", [])
    return items[0] if items else None


def _workload(api: Any, jobset: dict[str, Any], namespace: str) -> dict[str, Any] | None:
    """The Kueue Workload owned by ``jobset``, if Kueue manages it (None where Kueue is not installed)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    uid = jobset["metadata"].get("uid")
    for version in WORKLOAD_VERSIONS:
        found = call(f"list Kueue Workloads in namespace {namespace!r}", lambda v=version: custom.list_namespaced_custom_object(
            "kueue.x-k8s.io", v, namespace, "workloads"), allow_missing=True)
        if found is None:
            continue
        for item in found.get("items", []):
            if any(ref.get("uid") == uid for ref in item["metadata"].get("ownerReferences", [])):
                return item
        return None
    return None


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c.get("type") == kind), None)


def run_status(api: Any, release: str, namespace: str, with_progress: bool = True) -> RunState:
    """The run of ``release``: its JobSet's state and reason, its Kueue admission, and its stages with their
    pods (the newest attempt's), in pipeline order."""
    from kubernetes import client

    jobset = find_jobset(api, release, namespace)
    if jobset is None:
        return RunState(release, namespace, "", "missing")
    meta, spec, st = jobset["metadata"], jobset.get("spec", {}), jobset.get("status", {})
    policy = spec.get("failurePolicy") or {}
    run = RunState(release, namespace, meta["name"], "", restarts=int(st.get("restarts", 0)),
                   counted_restarts=int(st.get("restartsCountTowardsMax", 0)),
                   max_restarts=int(policy.get("maxRestarts", 0)),
                   values_hash=(meta.get("annotations") or {}).get(VALUES_HASH, ""),
                   queue=(meta.get("labels") or {}).get("kueue.x-k8s.io/queue-name", ""))
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    selector = f"{JOBSET_LABEL}={meta['name']}"
    jobs = call("list the run's Jobs", lambda: batch.list_namespaced_job(namespace, label_selector=selector)).items
    pods = call("list the run's pods", lambda: core.list_namespaced_pod(namespace, label_selector=selector)).items
    restart_label = "jobset.sigs.k8s.io/restart-attempt"
    current = str(run.restarts)
    jobs_now = [j for j in jobs if (j.metadata.labels or {}).get(restart_label, current) == current]
    stages = {s.stage: s for s in map(job_state, jobs_now)}
    for pod in pods:
        if (pod.metadata.labels or {}).get(restart_label, current) != current:
            continue  # a pod of the previous attempt, being deleted
        ps = pod_state(pod)
        if ps.stage not in stages:
            continue
        stages[ps.stage].pods.append(ps)
        if with_progress and ps.phase == "Running" and ps.index in (None, 0):
            tail = call("read a pod's log", lambda p=pod, s=ps: core.read_namespaced_pod_log(
                p.metadata.name, namespace, container=s.stage, tail_lines=5), missing="", allow_missing=True)
            stages[ps.stage].progress = last_progress(tail or "")
    enabled = [r["name"] for r in spec.get("replicatedJobs", [])]
    for name in enabled:
        if name not in stages:
            stages[name] = StageState(name, "not started")
    order = {s: i for i, s in enumerate(STAGES)}
    run.stages = sorted(stages.values(), key=lambda s: order.get(s.stage, 99))
    run.state, run.reason = _explain(run, jobset, _workload(api, jobset, namespace) if run.queue else None)
    return run


def _explain(run: RunState, jobset: dict[str, Any], workload: dict[str, Any] | None) -> tuple[str, str]:
    """(state, reason in words) of a run from its JobSet, Workload and stages."""
    completed, failed = _condition(jobset, "Completed"), _condition(jobset, "Failed")
    if completed and completed.get("status") == "True":
        return "complete", "every stage completed"
    if failed and failed.get("status") == "True":
        return "failed", _failure_reason(run, failed)
    suspended = jobset.get("spec", {}).get("suspend")
    if suspended:
        if workload is None:
            return "queued", f"suspended, waiting for Kueue to admit it (LocalQueue {run.queue or '?'})"
        reserved = _condition(workload, "QuotaReserved")
        why = (reserved or {}).get("message") or "waiting for quota"
        return "queued", f"in Kueue LocalQueue {run.queue}: {why}"
    restarting = _condition(jobset, "RestartingJobSet")
    if restarting and restarting.get("status") == "True" and not any(
            p.phase == "Running" for s in run.stages for p in s.pods):
        return "restarting", (f"after a failure, restart {run.counted_restarts} of {run.max_restarts} "
                              f"({run.restarts} in all, disruptions not counted)")
    prefix = (f"restart {run.counted_restarts} of {run.max_restarts} after a failure"
              f"{f' ({run.restarts} in all)' if run.restarts != run.counted_restarts else ''}; "
              if run.restarts else "")
    for stage in run.stages:
        if stage.state == "complete":
            continue
        if stage.state == "not started":
            return "running", f"{prefix}waiting for the previous stage before {stage.stage}"
        running = [p for p in stage.pods if p.phase == "Running"]
        pending = [p for p in stage.pods if p.phase == "Pending"]
        if running:
            progress = f", {stage.progress}" if stage.progress else ""
            return "running", f"{prefix}{stage.stage}: {len(running)} of {stage.completions} pod(s) running{progress}"
        if pending:
            detail = next((p.detail for p in pending if p.detail), "")
            state = "admitted" if workload is not None and not run.restarts else "running"
            return state, f"{prefix}{stage.stage}: pods pending" + (f" ({detail})" if detail else " (being scheduled)")
        return "running", f"{prefix}{stage.stage}: starting"
    return "running", f"{prefix}finishing"


def _failure_reason(run: RunState, failed: dict[str, Any]) -> str:
    """Why a run failed: the JobSet's message, the exit code's meaning and the pod that had it."""
    message = failed.get("message") or failed.get("reason") or "failed"
    # the JobSet names the failed Job; the Job's own condition says which pod exited with which code
    code_match = next(filter(None, (_EXIT_CODE.search(text) for text in [message, *(s.state for s in run.stages)])),
                      None)
    failing = [p for s in run.stages for p in s.pods if p.exit_code not in (None, 0)]
    if code_match:
        code = int(code_match.group(1))
        pod = next((p for p in failing if p.exit_code == code), None)
        where = f" in {pod.name}" if pod else ""
        return (f"{EXIT_MEANINGS.get(code, f'exit {code}')} (exit {code}{where}): not retried, since a restart "
                "cannot fix it; see `nlpjobs logs`")
    if run.max_restarts and run.counted_restarts >= run.max_restarts:
        last = next((p.detail for p in failing if p.detail), "")
        return (f"failed again after {run.counted_restarts} restarts (job.maxRestarts = {run.max_restarts})"
                + (f"; last: {last}" if last else "") + f" [{message}]")
    return message


def format_status(run: RunState) -> str:
    if run.state == "missing":
        return (f"release {run.release!r} has no run in namespace {run.namespace!r}: not submitted yet, or finished "
                "and removed after job.ttlSecondsAfterFinished (check `helm list -n <namespace>`).")
    lines = [f"run {run.release} (JobSet {run.jobset}, namespace {run.namespace}): {run.state}: {run.reason}"]
    for s in run.stages:
        counts = "" if s.state == "not started" else \
            f"  pods {s.active} running, {s.succeeded}/{s.completions} done, {s.failed} failed"
        lines.append(f"  {s.stage:<10} {s.state}{counts}" + (f"  · {s.progress}" if s.progress else ""))
        for p in sorted(s.pods, key=lambda p: (p.index or 0, p.name)):
            if p.detail or p.restarts:
                rank = f"{'node' if s.stage == 'train' else 'pod'} {p.index} " if p.index is not None else ""
                restarts = f", {p.restarts} restarts" if p.restarts else ""
                lines.append(f"      {rank}{p.name}: {p.phase}{restarts}" + (f" · {p.detail}" if p.detail else ""))
    return "\n".join(lines)


def stage_pods(api: Any, release: str, namespace: str, stage: str, index: int | None) -> list[Any]:
    """The pods of one stage of ``release`` (one training node's when ``index``), oldest first."""
    from kubernetes import client

    selector = f"{INSTANCE_LABEL}={release},{STAGE_LABEL}={stage}"
    if index is not None:
        selector += f",{INDEX_LABEL}={index}"
    core = client.CoreV1Api(api)
    pods = call(f"list the {stage} pods", lambda: core.list_namespaced_pod(namespace, label_selector=selector)).items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp)
