"""`nlpjobs submit`: flags become chart values, --dry-run prints complete valid manifests, and with no
cluster it fails with a clear message and exit code 6 before touching anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kv

pytestmark = pytest.mark.chart


def _nlpjobs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nlpjobs", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def helm_env(request: pytest.FixtureRequest) -> dict[str, str]:
    from nlpjobs.k8s.helm import helm_binary

    cache = request.config.cache
    return {"NLPJOBS_HELM": str(helm_binary(tools_dir=cache.mkdir("nlpjobs-tools") if cache else None))}


def test_dry_run_prints_valid_manifests_from_flags(tmp_path: Path, helm_env: dict[str, str]) -> None:
    values = tmp_path / "my.yaml"
    values.write_text(yaml.safe_dump({"storage": {"bucket": "team-bucket", "endpoint": "http://minio:9000"},
                                      "nodes": 1, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                                   "effect": "NoSchedule"}]}))
    proc = _nlpjobs("submit", "clm", "--nodes", "2", "--gpus", "8", "-f", str(values), "--set", "train.max_steps=10",
                    "-n", "ml", "--dry-run", env=helm_env)
    assert proc.returncode == 0, proc.stderr
    [jobset] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert (jobset["kind"], jobset["metadata"]["name"], jobset["metadata"]["namespace"]) == ("JobSet", "nlpjobs-clm", "ml")
    jobs = {r["name"]: {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"nlpjobs-clm-{r['name']}-0"},
                        "spec": r["template"]["spec"]} for r in jobset["spec"]["replicatedJobs"]}
    assert list(jobs) == ["preprocess", "train", "evaluate"]
    for doc in jobs.values():
        for version in ("1.29", "1.37"):
            kv.validate(doc, version, strict=True)
    train = jobs["train"]
    assert train["spec"]["completions"] == 2  # the flag wins over the values file's nodes: 1
    pod = train["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["image"] == "nlpjobs-clm:0.1.0-cuda"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"  # kept from the values file
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NLPJOBS_NPROC_PER_NODE"] == "8" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "train.max_steps=10" in container["args"]
    assert "storage=s3://team-bucket/clm" in container["args"]


def test_gpus_and_processes_must_agree(helm_env: dict[str, str]) -> None:
    """With GPUs, each process drives one GPU: --gpus 8 --processes 4 is refused, not silently 4 processes."""
    proc = _nlpjobs("submit", "clm", "--gpus", "8", "--processes", "4", "--dry-run", env=helm_env)
    assert proc.returncode == 2, proc.stderr
    assert "--gpus 8 and --processes 4" in proc.stderr and "Traceback" not in proc.stderr
    same = _nlpjobs("submit", "clm", "--gpus", "8", "--processes", "8", "--dry-run", env=helm_env)
    assert same.returncode == 0, same.stderr


def test_dry_run_rejects_bad_values_before_anything(tmp_path: Path, helm_env: dict[str, str]) -> None:
    values = tmp_path / "typo.yaml"
    values.write_text("nodse: 2\n")
    proc = _nlpjobs("submit", "ner", "-f", str(values), "--dry-run", env=helm_env)
    assert proc.returncode == 6 and "nodse" in proc.stderr
    unknown = _nlpjobs("submit", "nre", "--dry-run", env=helm_env)
    assert unknown.returncode == 2 and "unknown task 'nre'" in unknown.stderr


def test_submit_without_a_cluster_fails_clearly(tmp_path: Path, helm_env: dict[str, str]) -> None:
    for kubeconfig, expected in ((tmp_path / "missing", "no Kubernetes cluster configured"),
                                 (tmp_path / "kubeconfig", "cannot reach the Kubernetes API server at https://127.0.0.1:9")):
        if kubeconfig.name == "kubeconfig":
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "dead",
                "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:9"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "x"}}]}))
        env = {**helm_env, "KUBECONFIG": str(kubeconfig)}
        for args in (("submit", "ner"), ("status", "nlpjobs-ner"), ("logs", "nlpjobs-ner")):
            proc = _nlpjobs(*args, env=env)
            assert proc.returncode == 6, (args, proc.stdout, proc.stderr)
            assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("task", ["ner", "clm"])
def test_rendered_stage_args_are_accepted_by_the_cli_config(task: str, tmp_path: Path) -> None:
    """The contract between chart and CLI: every stage's args load as a valid job (DeepSpeed keys included)."""
    from nlpjobs.jobfile import load_job
    from nlpjobs.k8s.helm import render

    root = Path(__file__).resolve().parents[2]
    text = render([], {"task": task, "deepspeed.enabled": True, "deepspeed.zeroStage": 3,
                       "deepspeed.offloadParams": True, "overrides": "{train.max_steps=7}"})
    [jobset] = [d for d in yaml.safe_load_all(text) if d]
    pods = [r["template"]["spec"]["template"]["spec"] for r in jobset["spec"]["replicatedJobs"]]
    assert len(pods) == 3
    for pod in pods:
        for container in pod["containers"]:
            args = container["args"]
            config = args[args.index("-c") + 1]
            assert config == f"/app/jobs/{task}.yaml"
            overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            loaded = load_job(root / "jobs" / f"{task}.yaml", overrides)
            assert loaded.train.max_steps == 7
            if container["name"] == "train":
                assert (loaded.deepspeed.enabled, loaded.deepspeed.zero_stage, loaded.deepspeed.offload_params) == (True, 3, True)
