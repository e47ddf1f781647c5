"""Runs of the chart on a live control plane: `nlpjobs submit/status/logs` and the real `helm` against a real API
server, the JobSet and Kueue controllers and the scheduler, with kwok's nodes running the pods.

Each test submits one run into its own namespace (restricted Pod Security enforced). kwok keeps every pod
Running for a few seconds (the ``pod-complete`` stage's delay, set through the chart's ``podAnnotations``)
and then lets it succeed; a test makes a pod fail with a chosen exit code by labelling it for kwok's
``pod-container-running-failed`` stage, or evicts it as a node drain would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane
from polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
STAGE_SECONDS = "6s"  # how long kwok keeps each pod Running before it succeeds
CLI = Callable[..., subprocess.CompletedProcess[str]]


def _values(tmp_path: Path, **extra: Any) -> str:
    """A values file for a run of the offline NER preset whose pods kwok runs for STAGE_SECONDS each."""
    values: dict[str, Any] = {"preset": "local", "storage": {"endpoint": "http://s3.invalid:8333"},
                              "podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": STAGE_SECONDS},
                              "train": {"perProcess": {"cpu": 1, "memoryMi": 1024}},
                              "preprocess": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                              "evaluate": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}}
    for key, value in extra.items():
        node = values
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    path = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _submit(nlpjobs: CLI, namespace: str, values: str, *args: str, release: str = "run",
            expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = nlpjobs("submit", "ner", "--release", release, "-n", namespace, "-f", values, *args)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _jobset(kube: Any, namespace: str, name: str = "run-nlpjobs") -> dict[str, Any] | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        return client.CustomObjectsApi(kube).get_namespaced_custom_object(*JOBSET[:2], namespace, JOBSET[2], name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _condition(obj: dict[str, Any] | None, kind: str) -> bool:
    return bool(obj) and any(c["type"] == kind and c["status"] == "True"
                             for c in obj.get("status", {}).get("conditions", []))


def _pods(kube: Any, namespace: str, stage: str | None = None, phase: str | None = None) -> list[Any]:
    from kubernetes import client

    selector = "app.kubernetes.io/instance" + (f",app.kubernetes.io/component={stage}" if stage else "")
    pods = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in pods if phase is None or (p.status.phase == phase and not p.metadata.deletion_timestamp)]


def _jobs(kube: Any, namespace: str) -> dict[str, Any]:
    from kubernetes import client

    return {j.metadata.name: j for j in client.BatchV1Api(kube).list_namespaced_job(namespace).items}


def _status(nlpjobs: CLI, namespace: str, release: str = "run") -> str:
    proc = nlpjobs("status", release, "-n", namespace)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout


def _fail_pod(kube: Any, namespace: str, pod: Any, code: int) -> None:
    """Make kwok terminate the pod's container with ``code`` (its chaos stage, selected by these labels)."""
    from kubernetes import client

    meta = ControlPlane.pod_exit_metadata(code, container=pod.spec.containers[0].name)
    client.CoreV1Api(kube).patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": meta})


def _running_train_pods(kube: Any, namespace: str, nodes: int) -> list[Any]:
    return wait_for(f"{nodes} running training pods", lambda: (
        lambda pods: pods if len(pods) == nodes else None)(_pods(kube, namespace, "train", "Running")))


def test_a_run_goes_through_its_stages_in_order_under_restricted_pod_security(
        kube: Any, namespace: str, nlpjobs: CLI, tmp_path: Path) -> None:
    proc = _submit(nlpjobs, namespace, _values(tmp_path, nodes=2))
    assert "a new run" in proc.stdout
    # every object was accepted by the API server, with the JobSet controller's webhook and the restricted
    # Pod Security level enforced on the pods the Jobs create
    wait_for("the preprocess pod running", lambda: _pods(kube, namespace, "preprocess", "Running"))
    status = _status(nlpjobs, namespace)
    assert "running: preprocess: 1 of 1 pod(s) running" in status and "train      not started" in status, status
    assert not _pods(kube, namespace, "train") and not _pods(kube, namespace, "evaluate")  # nothing waits holding resources
    wait_for("the run to complete", lambda: _condition(_jobset(kube, namespace), "Completed"), timeout=180)
    jobs = _jobs(kube, namespace)
    assert set(jobs) == {"run-nlpjobs-preprocess-0", "run-nlpjobs-train-0", "run-nlpjobs-evaluate-0"}
    pre, train, ev = (jobs[f"run-nlpjobs-{s}-0"] for s in ("preprocess", "train", "evaluate"))
    assert train.metadata.creation_timestamp >= pre.status.completion_time  # created only once preprocess completed
    assert ev.metadata.creation_timestamp >= train.status.completion_time
    assert train.status.succeeded == 2  # both nodes
    ranks = sorted(p.metadata.labels["batch.kubernetes.io/job-completion-index"] for p in _pods(kube, namespace, "train"))
    assert ranks == ["0", "1"]
    assert "complete: every stage completed" in _status(nlpjobs, namespace)



def test_the_predict_stage_runs_its_indexed_pods_after_evaluate(kube: Any, namespace: str, nlpjobs: CLI,
                                                                 tmp_path: Path) -> None:
    small = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    _submit(nlpjobs, namespace, _values(tmp_path, predict__enabled=True, predict__pods=2, predict__resources=small,
                                        predict__overrides=["predict.dataset.split=validation"]), release="pred")
    wait_for("the run to complete", lambda: _condition(_jobset(kube, namespace, "pred-nlpjobs"), "Completed"),
             timeout=240)
    jobs = _jobs(kube, namespace)
    assert set(jobs) == {f"pred-nlpjobs-{s}-0" for s in ("preprocess", "train", "evaluate", "predict")}
    ev, pred = jobs["pred-nlpjobs-evaluate-0"], jobs["pred-nlpjobs-predict-0"]
    assert pred.metadata.creation_timestamp >= ev.status.completion_time  # after evaluate, as the stages before it
    assert (pred.spec.completion_mode, pred.spec.completions, pred.spec.parallelism) == ("Indexed", 2, 2)
    assert pred.status.succeeded == 2
    pods = _pods(kube, namespace, "predict")
    assert sorted(p.metadata.labels["batch.kubernetes.io/job-completion-index"] for p in pods) == ["0", "1"]
    container = pods[0].spec.containers[0]
    command = " ".join([*(container.command or []), *(container.args or [])])
    assert "batch-predict" in command and "predict.dataset.split=validation" in command, command
    env = {e.name: e.value for e in container.env or []}
    assert env.get("NLPJOBS_PREDICT_WORKERS") == "2", env
    status = _status(nlpjobs, namespace, "pred")
    assert "complete: every stage completed" in status, status
    assert "pods 0 running, 2/2 done, 0 failed" in next(line for line in status.splitlines()
                                                        if line.strip().startswith("predict")), status

def test_a_failed_rank_restarts_the_whole_gang_and_counts(kube: Any, namespace: str, nlpjobs: CLI,
                                                          tmp_path: Path) -> None:
    _submit(nlpjobs, namespace, _values(tmp_path, nodes=2, podAnnotations={
        "pod-complete.stage.kwok.x-k8s.io/delay": "20s"}))
    first = _running_train_pods(kube, namespace, 2)
    rank1 = next(p for p in first if p.metadata.labels["batch.kubernetes.io/job-completion-index"] == "1")
    _fail_pod(kube, namespace, rank1, 1)  # a crash: exit 1
    restarted = wait_for("the JobSet to restart", lambda: (
        lambda js: js if js and js.get("status", {}).get("restarts") == 1 else None)(_jobset(kube, namespace)))
    assert restarted["status"].get("restartsCountTowardsMax") == 1
    status = wait_for("`status` to report the restart", lambda: (
        lambda out: out if "restart 1 of 3" in out else None)(_status(nlpjobs, namespace)))
    assert "run-nlpjobs" in status
    again = _running_train_pods(kube, namespace, 2)  # the whole gang is new, rank 0 included
    assert not {p.metadata.uid for p in again} & {p.metadata.uid for p in first}


def test_a_bad_data_exit_code_fails_the_run_at_once(kube: Any, namespace: str, nlpjobs: CLI, tmp_path: Path) -> None:
    _submit(nlpjobs, namespace, _values(tmp_path, nodes=2, podAnnotations={
        "pod-complete.stage.kwok.x-k8s.io/delay": "30s"}))
    [rank0, _] = sorted(_running_train_pods(kube, namespace, 2),
                        key=lambda p: p.metadata.labels["batch.kubernetes.io/job-completion-index"])
    _fail_pod(kube, namespace, rank0, 3)
    failed = wait_for("the JobSet to fail", lambda: (
        lambda js: js if _condition(js, "Failed") else None)(_jobset(kube, namespace)))
    assert failed["status"].get("restarts", 0) == 0  # not retried
    status = _status(nlpjobs, namespace)
    assert "failed: bad data (exit 3" in status and "not retried" in status, status

    # submitting the failed run again replaces it: a new JobSet, the same run name (so training resumes)
    old_uid = failed["metadata"]["uid"]
    proc = _submit(nlpjobs, namespace, _values(tmp_path, nodes=2))
    assert "replaced the failed run" in proc.stdout
    new = wait_for("the new JobSet", lambda: (lambda js: js if js and js["metadata"]["uid"] != old_uid else None)(
        _jobset(kube, namespace)))
    args = new["spec"]["replicatedJobs"][1]["template"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "name=run" in args
    wait_for("the replacement to complete", lambda: _condition(_jobset(kube, namespace), "Completed"), timeout=180)

    # and a finished one too
    done_uid = _jobset(kube, namespace)["metadata"]["uid"]
    proc = _submit(nlpjobs, namespace, _values(tmp_path, nodes=2))
    assert "replaced the finished run" in proc.stdout
    assert wait_for("a JobSet", lambda: _jobset(kube, namespace))["metadata"]["uid"] != done_uid


def test_a_running_run_is_kept_unless_replaced(kube: Any, namespace: str, nlpjobs: CLI, tmp_path: Path) -> None:
    values = _values(tmp_path, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "60s"})
    _submit(nlpjobs, namespace, values)
    uid = wait_for("the JobSet", lambda: _jobset(kube, namespace))["metadata"]["uid"]
    same = _submit(nlpjobs, namespace, values)
    assert "already running with these settings" in same.stdout
    other = _submit(nlpjobs, namespace, _values(tmp_path, nodes=2), expect=6)
    assert "is running with other settings" in other.stderr and "--replace" in other.stderr
    assert _jobset(kube, namespace)["metadata"]["uid"] == uid  # untouched
    replaced = _submit(nlpjobs, namespace, _values(tmp_path, nodes=2), "--replace")
    assert "replaced the running run" in replaced.stdout
    new = wait_for("the replacement", lambda: (lambda js: js if js and js["metadata"]["uid"] != uid else None)(
        _jobset(kube, namespace)))
    assert new["spec"]["replicatedJobs"][1]["template"]["spec"]["completions"] == 2


def test_a_disruption_restarts_the_run_without_counting(kube: Any, namespace: str, nlpjobs: CLI,
                                                        tmp_path: Path) -> None:
    from kubernetes import client

    _submit(nlpjobs, namespace, _values(tmp_path, nodes=2, podAnnotations={
        "pod-complete.stage.kwok.x-k8s.io/delay": "20s"}))
    pods = _running_train_pods(kube, namespace, 2)
    victim = pods[0].metadata.name
    # what a node drain does: the eviction API marks the pod DisruptionTarget, then deletes it
    client.CoreV1Api(kube).create_namespaced_pod_eviction(victim, namespace, client.V1Eviction(
        metadata=client.V1ObjectMeta(name=victim, namespace=namespace)))
    restarted = wait_for("the JobSet to restart", lambda: (
        lambda js: js if js and js.get("status", {}).get("restarts") == 1 else None)(_jobset(kube, namespace)))
    assert restarted["status"].get("restartsCountTowardsMax", 0) == 0
    wait_for("the run to complete", lambda: _condition(_jobset(kube, namespace), "Completed"), timeout=240)


def _kueue(kube: Any, namespace: str, gpus: int) -> None:
    """A ResourceFlavor for the GPU pool, a ClusterQueue with ``gpus`` GPUs of quota, a LocalQueue ``q``."""
    from kubernetes import client

    custom = client.CustomObjectsApi(kube)
    group, version = "kueue.x-k8s.io", "v1beta2"
    cq = f"cq-{namespace}"
    for plural, body in (
        ("resourceflavors", {"metadata": {"name": "default"}, "spec": {}}),
        ("clusterqueues", {"metadata": {"name": cq}, "spec": {"namespaceSelector": {}, "resourceGroups": [{
            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
            "flavors": [{"name": "default", "resources": [
                {"name": "cpu", "nominalQuota": "200"}, {"name": "memory", "nominalQuota": "2Ti"},
                {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)}]}]}]}}),
    ):
        body = {"apiVersion": f"{group}/{version}", "kind": {"resourceflavors": "ResourceFlavor",
                                                             "clusterqueues": "ClusterQueue"}[plural], **body}
        try:
            custom.create_cluster_custom_object(group, version, plural, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
    custom.create_namespaced_custom_object(group, version, namespace, "localqueues", {
        "apiVersion": f"{group}/{version}", "kind": "LocalQueue", "metadata": {"name": "q", "namespace": namespace},
        "spec": {"clusterQueue": cq}})


def test_kueue_admits_the_whole_run_only_when_it_fits_and_an_upgrade_does_not_suspend_it(
        kube: Any, namespace: str, nlpjobs: CLI, tmp_path: Path, helm_path: Path, cluster: ControlPlane) -> None:
    _kueue(kube, namespace, gpus=9)
    gpu = {"gpu__enabled": True, "kueue__queueName": "q",
           "podAnnotations": {"pod-complete.stage.kwok.x-k8s.io/delay": "30s"}}
    # 2 nodes x 8 GPUs + 1 for evaluate = 17 > 9: queued as a whole, nothing started
    _submit(nlpjobs, namespace, _values(tmp_path, nodes=2, processesPerNode=8, **gpu), release="big")
    wait_for("the big run to be queued", lambda: "queued: in Kueue LocalQueue q" in _status(nlpjobs, namespace, "big"))
    assert _jobset(kube, namespace, "big-nlpjobs")["spec"]["suspend"] is True  # by Kueue, not by the chart
    # 1 node x 8 + 1 = 9: admitted as one workload, and runs
    values = _values(tmp_path, nodes=1, processesPerNode=8, **gpu)
    _submit(nlpjobs, namespace, values, release="fits")
    wait_for("the fitting run's training pod", lambda: _pods(kube, namespace, "train", "Running"), timeout=180)
    js = _jobset(kube, namespace, "fits-nlpjobs")
    assert js["spec"]["suspend"] is False
    assert "queued" in _status(nlpjobs, namespace, "big")  # still waiting for quota
    # placement by the real scheduler: training on the tainted GPU nodes, preprocessing on CPU nodes
    nodes = {p.metadata.labels["app.kubernetes.io/component"]: p.spec.node_name
             for p in _pods(kube, namespace) if p.metadata.labels["app.kubernetes.io/instance"] == "fits"}
    assert nodes["train"].startswith("kwok-gpu-") and nodes["preprocess"].startswith("kwok-cpu-"), nodes
    # a plain helm upgrade of the running run (as CI/CD would do): the JobSet stays unsuspended, pods stay
    proc = subprocess.run([str(helm_path), "upgrade", "fits", str(Path(__file__).resolve().parents[2] / "charts/nlpjobs"),
                           "-n", namespace, "-f", values, "--set", "task=ner", "--kubeconfig", str(cluster.kubeconfig)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    js = _jobset(kube, namespace, "fits-nlpjobs")
    assert js["spec"]["suspend"] is False and not _condition(js, "Suspended")
    assert _pods(kube, namespace, "train", "Running")


def test_status_and_logs_explain_refusals_without_a_traceback(kube: Any, namespace: str, nlpjobs: CLI,
                                                               tmp_path: Path, cluster: ControlPlane) -> None:
    from kubernetes import client

    _submit(nlpjobs, namespace, _values(tmp_path, podAnnotations={"pod-complete.stage.kwok.x-k8s.io/delay": "30s"}))
    wait_for("the preprocess pod running", lambda: _pods(kube, namespace, "preprocess", "Running"))
    # no kubelet serves this pod's log: one error line, exit 6
    logs = nlpjobs("logs", "run", "-n", namespace, "--stage", "preprocess")
    assert logs.returncode == 6 and logs.stderr.startswith("error: cluster:") and "Traceback" not in logs.stderr, logs.stderr
    # a ServiceAccount without RBAC rights: the API server answers 403
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="viewer")))
    token = core.create_namespaced_service_account_token("viewer", namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[]))).status.token
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["users"] = [{"name": "viewer", "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = "viewer"
    limited = tmp_path / "viewer.kubeconfig"
    limited.write_text(yaml.safe_dump(config))
    for args in (("status", "run"), ("logs", "run"), ("submit", "ner", "--release", "run")):
        proc = nlpjobs(*args, "-n", namespace, kubeconfig=limited)
        assert proc.returncode == 6, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "403" in proc.stderr and "RBAC" in proc.stderr, (args, proc.stderr)
