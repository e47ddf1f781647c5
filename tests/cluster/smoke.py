#!/usr/bin/env python3
"""Smoke check of the kwok control plane (see README.md).

    python tests/cluster/smoke.py [--dir DIR]    # starts a throwaway control plane in DIR (tmp by default)
    python tests/cluster/smoke.py --attach [--dir DIR]   # use one started by `controlplane.py up`

Checks: (a) PodSecurity admission, (b) JobSet with a dependsOn chain completes on kwok,
(c) a kwok-failed pod's exit code reaches a Job podFailurePolicy, (d) Kueue admits a
queued JobSet (Workload admitted, JobSet unsuspended, completed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controlplane import ApiError, ControlPlane  # noqa: E402

NS = "smoke"


def wait(what, cond, timeout=90.0, interval=0.2):
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            print(f"  ok: {what} ({time.monotonic() - t0:.1f}s)")
            return v
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out: {what}")
        time.sleep(interval)


def cond_true(obj, typ):
    return any(c["type"] == typ and c["status"] == "True" for c in ((obj.get("status") or {}).get("conditions") or []))


def pod_template(pool="cpu", meta=None, gpus=0, restart="Never"):
    res = {"requests": {"cpu": "1", "memory": "1Gi"}}
    spec = {"restartPolicy": restart, "nodeSelector": {"nlpjobs.dev/pool": pool},
            "containers": [{"name": "main", "image": "registry.invalid/nlpjobs:test", "resources": res}]}
    if gpus:
        res["limits"] = {"nvidia.com/gpu": str(gpus)}
        res["requests"]["nvidia.com/gpu"] = str(gpus)
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": meta or {}, "spec": spec}


def jobset(name, rjobs, labels=None):
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "spec": {"replicatedJobs": rjobs}}


def run(cp: ControlPlane) -> None:
    c = cp.client
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    wait("default SA in smoke ns", lambda: _exists(c, f"/api/v1/namespaces/{NS}/serviceaccounts/default"))

    print("(a) PodSecurity: restricted namespace rejects a privileged pod")
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "psa-restricted", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "psa-restricted"},
           "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    try:
        c.create(bad)
        raise AssertionError("privileged pod was admitted in a restricted namespace")
    except ApiError as e:
        assert e.status == 403 and "PodSecurity" in str(e), e
        print(f"  ok: rejected: {str(e)[str(e).index('violates'):][:110]}...")

    print("(b) JobSet with dependsOn chain runs to completion on kwok nodes")
    js = jobset("chain", [
        {"name": "prep", "replicas": 1, "template": {"spec": {
            "parallelism": 2, "completions": 2, "backoffLimit": 0, "template": pod_template()}}},
        {"name": "train", "replicas": 2, "dependsOn": [{"name": "prep", "status": "Complete"}],
         "template": {"spec": {"parallelism": 1, "completions": 1, "backoffLimit": 0,
                               "template": pod_template()}}},
    ])
    c.create(js)
    done = wait("JobSet chain Completed", lambda: cond_true(
        c.read("jobset.x-k8s.io/v1alpha2", "JobSet", "chain", NS), "Completed"))
    jobs = {j["metadata"]["name"]: j for j in c.get(f"/apis/batch/v1/namespaces/{NS}/jobs")["items"]}
    prep_done = jobs["chain-prep-0"]["status"]["completionTime"]
    train_created = min(jobs[n]["metadata"]["creationTimestamp"] for n in ("chain-train-0", "chain-train-1"))
    assert train_created >= prep_done, (train_created, prep_done)
    pods = c.get(f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "jobset.sigs.k8s.io/jobset-name=chain"})
    print(f"  ok: {len(jobs)} jobs, {len(pods['items'])} pods on "
          f"{sorted({p['spec']['nodeName'] for p in pods['items']})}; train created {train_created} "
          f">= prep completed {prep_done}")
    del done

    print("(c) kwok fails a pod with exit code 3 -> Job podFailurePolicy matches")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "exit3", "namespace": NS},
           "spec": {"backoffLimit": 6, "podFailurePolicy": {"rules": [
               {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]},
               "template": pod_template(meta=ControlPlane.pod_exit_metadata(3))}}
    c.create(job)
    j = wait("Job exit3 Failed", lambda: (lambda o: o if cond_true(o, "Failed") else None)(
        c.read("batch/v1", "Job", "exit3", NS)))
    failed = [x for x in j["status"]["conditions"] if x["type"] == "Failed"][0]
    assert failed["reason"] == "PodFailurePolicy", failed
    pods = c.get(f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "job-name=exit3"})["items"]
    codes = [cs["state"]["terminated"]["exitCode"] for p in pods for cs in p["status"]["containerStatuses"]]
    assert codes == [3], codes
    print(f"  ok: {len(pods)} pod(s), exit codes {codes}; Failed reason={failed['reason']}: {failed['message']}")

    print("(c2) a Running Job pod labelled for failure later -> exit code 4; an evicted pod goes away")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "late", "namespace": NS},
           "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0, "podFailurePolicy": {"rules": [
               {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
               {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [4]}}]},
               "template": pod_template(meta=ControlPlane.pod_runtime_metadata("60s"))}}
    c.create(job)
    pods = wait("2 pods of Job late Running", lambda: (lambda ps: ps if len(ps) == 2 else None)([
        p for p in c.get(f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "job-name=late"})["items"]
        if p["status"].get("phase") == "Running"]))
    victim, failing = pods
    c.request("POST", f"/api/v1/namespaces/{NS}/pods/{victim['metadata']['name']}/eviction",
              {"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": victim["metadata"]["name"], "namespace": NS}})
    wait("evicted pod deleted", lambda: not _exists(c, f"/api/v1/namespaces/{NS}/pods/{victim['metadata']['name']}"))
    wait("a replacement pod (eviction ignored by the podFailurePolicy)", lambda: len([
        p for p in c.get(f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "job-name=late"})["items"]
        if p["status"].get("phase") == "Running"]) == 2)
    c.request("PATCH", f"/api/v1/namespaces/{NS}/pods/{failing['metadata']['name']}",
              {"metadata": ControlPlane.pod_exit_metadata(4)}, content_type="application/strategic-merge-patch+json")
    j = wait("Job late Failed", lambda: (lambda o: o if cond_true(o, "Failed") else None)(
        c.read("batch/v1", "Job", "late", NS)))
    failed = [x for x in j["status"]["conditions"] if x["type"] == "Failed"][0]
    assert failed["reason"] == "PodFailurePolicy" and "exit code 4" in failed["message"], failed
    print(f"  ok: Failed reason={failed['reason']}: {failed['message']}")

    print("(d) Kueue admits a queued GPU JobSet")
    kv = "kueue.x-k8s.io/v1beta2"
    c.apply({"apiVersion": kv, "kind": "ResourceFlavor", "metadata": {"name": "gpu"},
             "spec": {"nodeLabels": {"nlpjobs.dev/pool": "gpu"}}})
    c.apply({"apiVersion": kv, "kind": "ClusterQueue", "metadata": {"name": "cq"},
             "spec": {"namespaceSelector": {}, "resourceGroups": [{
                 "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                 "flavors": [{"name": "gpu", "resources": [
                     {"name": "cpu", "nominalQuota": "64"}, {"name": "memory", "nominalQuota": "512Gi"},
                     {"name": "nvidia.com/gpu", "nominalQuota": "16"}]}]}]}})
    c.apply({"apiVersion": kv, "kind": "LocalQueue", "metadata": {"name": "lq", "namespace": NS},
             "spec": {"clusterQueue": "cq"}})
    wait("ClusterQueue active", lambda: cond_true(c.read(kv, "ClusterQueue", "cq"), "Active"))
    js = jobset("queued", [{"name": "workers", "replicas": 2, "template": {"spec": {
        "parallelism": 1, "completions": 1, "backoffLimit": 0,
        "template": pod_template(pool="gpu", gpus=8, meta=ControlPlane.pod_runtime_metadata("3s"))}}}],
        labels={"kueue.x-k8s.io/queue-name": "lq"})
    created = c.create(js)
    print(f"  created JobSet suspend={created['spec'].get('suspend')} (set by Kueue's webhook)")
    wl = wait("Workload admitted", lambda: next((w for w in c.get(
        f"/apis/{kv}/namespaces/{NS}/workloads")["items"] if cond_true(w, "Admitted")), None))
    print(f"  workload {wl['metadata']['name']} admitted to {wl['status']['admission']['clusterQueue']}, "
          f"flavors {wl['status']['admission']['podSetAssignments'][0]['flavors']}")
    wait("JobSet unsuspended", lambda: c.read("jobset.x-k8s.io/v1alpha2", "JobSet", "queued", NS)
         ["spec"].get("suspend") is False)
    wait("queued JobSet Completed", lambda: cond_true(
        c.read("jobset.x-k8s.io/v1alpha2", "JobSet", "queued", NS), "Completed"))
    wait("Workload Finished", lambda: cond_true(c.read(kv, "Workload", wl["metadata"]["name"], NS), "Finished"))
    pods = c.get(f"/api/v1/namespaces/{NS}/pods", query={"labelSelector": "jobset.sigs.k8s.io/jobset-name=queued"})
    for p in pods["items"]:
        ran = _ts(p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]) - _ts(p["status"]["startTime"])
        assert ran >= 2, (p["metadata"]["name"], ran)
        print(f"  ok: {p['metadata']['name']} on {p['spec']['nodeName']} ran {ran:.0f}s (pod-complete delay 3s)")
    print("ALL SMOKE CHECKS PASSED")


def _ts(s):
    return time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


def _exists(c, path):
    try:
        c.get(path)
        return True
    except ApiError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--attach", action="store_true")
    a = ap.parse_args()
    if a.attach:
        run(ControlPlane.attach(a.dir))
        return 0
    d = a.dir or Path(tempfile.mkdtemp(prefix="nlpjobs-smoke-"))
    t0 = time.monotonic()
    cp = ControlPlane(d).start()
    try:
        print(f"control plane started in {cp.startup_seconds}s")
        run(cp)
    except BaseException:
        cp.stop()
        print(f"FAILED; component logs kept in {cp.logs}")
        raise
    t1 = time.monotonic()
    cp.stop(purge=a.dir is None)
    print(f"stop took {time.monotonic() - t1:.1f}s; total {time.monotonic() - t0:.1f}s (start + checks + stop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
