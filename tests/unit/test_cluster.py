"""`nlpjobs status` in human terms: run, stage and pod states from Kubernetes API objects (the control-plane
tier checks the same against a live cluster)."""

from __future__ import annotations

from kubernetes.client import (
    V1ContainerState,
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


def test_pending_and_disrupted_pods_say_why() -> None:
    pull = cluster.pod_state(_pod("train", 0, "Pending", [_status("train", V1ContainerState(
        waiting=V1ContainerStateWaiting(reason="ImagePullBackOff", message="not found")))]))
    assert pull.detail == "train: ImagePullBackOff (not found)"
    creating = cluster.pod_state(_pod("train", 0, "Pending", [_status("train", V1ContainerState(
        waiting=V1ContainerStateWaiting(reason="ContainerCreating")))]))
    assert creating.detail == ""  # normal start-up, nothing to look at
    unschedulable = cluster.pod_state(_pod("train", 0, "Pending", [], conditions=[V1PodCondition(
        type="PodScheduled", status="False", message="0/3 nodes: Insufficient nvidia.com/gpu")]))
    assert "Insufficient nvidia.com/gpu" in unschedulable.detail
    evicted = cluster.pod_state(_pod("train", 1, "Failed", [], conditions=[V1PodCondition(
        type="DisruptionTarget", status="True", reason="EvictionByEvictionAPI", message="Eviction API: evicting")]))
    assert evicted.detail.startswith("disrupted (EvictionByEvictionAPI")


def _job(stage: str, **status: object) -> V1Job:
    conditions = status.pop("conditions", None)
    return V1Job(metadata=V1ObjectMeta(name=f"r-{stage}", labels={"app.kubernetes.io/component": stage}),
                 spec=V1JobSpec(completions=2, suspend=status.pop("suspend", None), template={}),
                 status=V1JobStatus(conditions=conditions, **status))


def _run(stages: list[cluster.StageState], **kw: object) -> cluster.RunState:
    return cluster.RunState("r", "ml", "r-nlpjobs", "", stages=stages, max_restarts=3, **kw)  # type: ignore[arg-type]


def _jobset(*conditions: dict[str, str], suspend: bool = False) -> dict[str, object]:
    return {"spec": {"suspend": suspend}, "status": {"conditions": [{"status": "True", **c} for c in conditions]}}


def test_job_states() -> None:
    done = cluster.job_state(_job("preprocess", succeeded=1, conditions=[
        V1JobCondition(type="Complete", status="True")]))
    failed = cluster.job_state(_job("train", failed=4, conditions=[
        V1JobCondition(type="Failed", status="True", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")]))
    running = cluster.job_state(_job("evaluate", active=1))
    assert (done.state, running.state) == ("complete", "running")
    assert failed.state == "failed (BackoffLimitExceeded: Job has reached the specified backoff limit)"


def test_run_states_in_words() -> None:
    pre_done = cluster.StageState("preprocess", "complete", succeeded=1)
    train_waiting = cluster.StageState("train", "not started")
    running = cluster.StageState("train", "running", active=2, completions=2,
                                 pods=[cluster.PodState("p0", "train", 0, "Running"), cluster.PodState("p1", "train", 1, "Running")],
                                 progress="train 45% (90/200)")
    explain = cluster._explain  # noqa: SLF001 - the function under test
    assert explain(_run([pre_done, train_waiting]), _jobset(), None) == (
        "running", "waiting for the previous stage before train")
    assert explain(_run([pre_done, running]), _jobset(), None) == (
        "running", "train: 2 of 2 pod(s) running, train 45% (90/200)")
    state, reason = explain(_run([pre_done, running], restarts=2, counted_restarts=1), _jobset(), None)
    assert state == "running" and reason.startswith("restart 1 of 3 after a failure (2 in all); train: 2 of 2")
    assert explain(_run([cluster.StageState("train", "starting")], restarts=1, counted_restarts=1),
                   _jobset({"type": "RestartingJobSet"}), None) == (
        "restarting", "after a failure, restart 1 of 3 (1 in all, disruptions not counted)")
    workload = {"status": {"conditions": [{"type": "QuotaReserved", "status": "False",
                                           "message": "couldn't assign flavors to pod set train: insufficient quota"}]}}
    assert explain(_run([], queue="q"), _jobset(suspend=True), workload) == (
        "queued", "in Kueue LocalQueue q: couldn't assign flavors to pod set train: insufficient quota")
    assert explain(_run([pre_done]), _jobset({"type": "Completed"}), None) == ("complete", "every stage completed")


def test_a_failed_run_names_the_exit_code_and_the_pod() -> None:
    train = cluster.StageState("train", "failed (PodFailurePolicy: Container train for pod ml/r-train-0-1-x failed with "
                                        "exit code 3 matching FailJob rule at index 0)",
                               pods=[cluster.PodState("r-train-0-1-x", "train", 1, "Failed", exit_code=3)])
    state, reason = cluster._explain(_run([train]), _jobset(  # noqa: SLF001
        {"type": "Failed", "message": "applying FailJobSet failure policy action (first failed job: r-train-0)"}), None)
    assert state == "failed" and reason.startswith("bad data (exit 3 in r-train-0-1-x): not retried")
    crashed = cluster.StageState("train", "failed (BackoffLimitExceeded)",
                                 pods=[cluster.PodState("p", "train", 0, "Failed", "train: exit 1, crashed", 1)])
    state, reason = cluster._explain(_run([crashed], restarts=3, counted_restarts=3),  # noqa: SLF001
                                     _jobset({"type": "Failed", "message": "reached max restarts"}), None)
    assert state == "failed" and "after 3 restarts (job.maxRestarts = 3); last: train: exit 1, crashed" in reason


def test_the_summary_lists_stages_and_the_pods_that_need_a_look() -> None:
    failed = cluster.StageState("train", "running", active=1, completions=2)
    failed.pods.append(cluster.pod_state(_pod("train", 1, "Failed", [_status("train", V1ContainerState(
        terminated=V1ContainerStateTerminated(exit_code=5, reason="Error")))])))
    run = _run([cluster.StageState("preprocess", "complete", succeeded=1), failed])
    run.state, run.reason = "running", "train: 1 of 2 pod(s) running"
    lines = cluster.format_status(run).splitlines()
    assert lines[0] == "run r (JobSet r-nlpjobs, namespace ml): running: train: 1 of 2 pod(s) running"
    assert lines[1].split()[:2] == ["preprocess", "complete"]
    assert "node 1" in lines[-1] and "exit 5, launch/rendezvous or wait timed out" in lines[-1]
    assert "no run" in cluster.format_status(cluster.RunState("r", "ml", "", "missing"))


def test_progress_comes_from_the_newest_tqdm_line() -> None:
    tail = ("train clm:  44%|####4     | 88/200 [01:10<01:30, 1.2step/s]\r"
            "train clm:  45%|####5     | 90/200 [01:12<01:28, 1.2step/s, loss=5.1]\n")
    assert cluster.last_progress(tail) == "train 45% (90/200)"
    assert cluster.last_progress("resumed from committed checkpoint step 4 of 8\n") == ""
