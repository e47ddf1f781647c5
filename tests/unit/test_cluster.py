"""`nlpjobs status` in human terms: Job and pod states from Kubernetes API objects."""

from __future__ import annotations

from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1Job,
    V1JobCondition,
    V1JobSpec,
    V1JobStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodStatus,
)

from nlpjobs.k8s import cluster


def _status(name: str, state: V1ContainerState, restarts: int = 0) -> V1ContainerStatus:
    return V1ContainerStatus(name=name, state=state, restart_count=restarts, image="i", image_id="",
                             ready=False)


def _pod(stage: str, index: int | None, phase: str, statuses: list[V1ContainerStatus],
         init: list[V1ContainerStatus] | None = None, conditions: list[V1PodCondition] | None = None) -> V1Pod:
    labels = {"app.kubernetes.io/component": stage}
    if index is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
    return V1Pod(metadata=V1ObjectMeta(name=f"r-{stage}-{index or 0}-x", labels=labels),
                 status=V1PodStatus(phase=phase, container_statuses=statuses, init_container_statuses=init,
                                    conditions=conditions))


def test_pod_exit_codes_and_oom_are_explained() -> None:
    oom = _pod("train", 1, "Failed", [_status("train", V1ContainerState(
        terminated=V1ContainerStateTerminated(exit_code=137, reason="OOMKilled")), restarts=2)])
    state = cluster.pod_state(oom)
    assert state.index == 1 and state.exit_code == 137 and state.restarts == 2
    assert "out of memory" in state.detail and "batch size" in state.detail
    bad_data = cluster.pod_state(_pod("preprocess", None, "Failed", [_status("preprocess", V1ContainerState(
        terminated=V1ContainerStateTerminated(exit_code=3, reason="Error")))]))
    assert bad_data.detail == "preprocess: exit 3, bad data"
    preempted = cluster.pod_state(_pod("train", 0, "Failed", [_status("train", V1ContainerState(
        terminated=V1ContainerStateTerminated(exit_code=143, reason="Error")))]))
    assert "checkpoint" in preempted.detail and "resumes" in preempted.detail


def test_waiting_pods_say_what_they_wait_for() -> None:
    waiting = cluster.pod_state(_pod("evaluate", None, "Pending", [_status("evaluate", V1ContainerState(
        waiting=V1ContainerStateWaiting(reason="PodInitializing")))], init=[_status("wait-for-model", V1ContainerState(
            running=V1ContainerStateRunning()))]))
    assert waiting.detail == "waiting for the model's _SUCCESS marker"
    pull = cluster.pod_state(_pod("train", 0, "Pending", [_status("train", V1ContainerState(
        waiting=V1ContainerStateWaiting(reason="ImagePullBackOff", message="not found")))]))
    assert pull.detail == "train: ImagePullBackOff (not found)"
    unschedulable = cluster.pod_state(_pod("train", 0, "Pending", [], conditions=[V1PodCondition(
        type="PodScheduled", status="False", message="0/3 nodes: Insufficient nvidia.com/gpu")]))
    assert "Insufficient nvidia.com/gpu" in unschedulable.detail


def _job(stage: str, **status: object) -> V1Job:
    conditions = status.pop("conditions", None)
    return V1Job(metadata=V1ObjectMeta(name=f"r-{stage}", labels={"app.kubernetes.io/component": stage}),
                 spec=V1JobSpec(completions=2, suspend=status.pop("suspend", None), template={}),
                 status=V1JobStatus(conditions=conditions, **status))


def test_job_states_and_the_summary() -> None:
    done = cluster.job_state(_job("preprocess", succeeded=1, conditions=[
        V1JobCondition(type="Complete", status="True")]))
    failed = cluster.job_state(_job("train", failed=4, conditions=[
        V1JobCondition(type="Failed", status="True", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")]))
    queued = cluster.job_state(_job("evaluate", suspend=True))
    assert done.state == "Complete" and queued.state.startswith("Suspended")
    assert failed.state == "Failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"
    failed.pods.append(cluster.pod_state(_pod("train", 1, "Failed", [_status("train", V1ContainerState(
        terminated=V1ContainerStateTerminated(exit_code=5, reason="Error")))])))
    text = cluster.format_status("r", "ml", [done, failed, queued])
    lines = text.splitlines()
    assert lines[0] == "release r (namespace ml)"
    assert lines[1].split()[:2] == ["preprocess", "Complete"]
    assert "node 1" in text and "exit 5, launch/rendezvous or wait timed out" in text
    assert "no Jobs" in cluster.format_status("r", "ml", [])


def test_progress_comes_from_the_newest_tqdm_line() -> None:
    tail = ("train clm:  44%|####4     | 88/200 [01:10<01:30, 1.2step/s]\r"
            "train clm:  45%|####5     | 90/200 [01:12<01:28, 1.2step/s, loss=5.1]\n")
    assert cluster.last_progress(tail) == "train 45% (90/200)"
    assert cluster.last_progress("resumed from committed checkpoint step 4 of 8\n") == ""
