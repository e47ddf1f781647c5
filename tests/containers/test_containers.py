"""Container tier: the project's own dockerd, images built without any registry, and the chart's rendered
pod commands run as real containers against SeaweedFS (end to end, and a two-"node" rendezvous)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from dockerenv import Docker, Pod, jobs_by_stage, remove_stale_workdirs, start_dockerd

from nlpjobs.k8s.helm import render

# The first test also builds the images (session fixture), beside the main suite under `make test`:
# on two busy cores that alone can pass the suite-wide 900 s limit.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2700)]
ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
TASK = "ner"
NETWORK = "nlpjobs-ct"
BUCKET = "nlpjobs-ct"
ACCESS, SECRET = "ct", secrets.token_hex(12)
# A few steps of the local NER preset: the point is the pods' commands, not the metric.
OVERRIDES = ["data.max_train_examples=64", "data.max_eval_examples=32", "train.max_steps=4", "train.batch_size=8",
             "train.eval_every=never", "train.save_every=2", "train.log_every=1"]


@pytest.fixture(scope="session")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    if os.environ.get("DOCKER_HOST") and Docker(os.environ["DOCKER_HOST"]).ok():
        yield Docker(os.environ["DOCKER_HOST"])
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        if os.environ.get("NLPJOBS_REQUIRE_CONTAINERS"):
            pytest.fail("the container tier needs root and dockerd (apt-get install -y docker.io mmdebstrap)")
        pytest.skip("container tier: needs root and dockerd (set DOCKER_HOST to use an existing daemon)")
    stale = remove_stale_workdirs()
    if stale:
        print(f"\nremoved the data roots of {len(stale)} earlier daemon(s) that no longer run: {', '.join(stale)}")
    # A short path: unix socket paths are limited to 108 bytes.
    workdir = Path(f"/tmp/nlpjobs-dockerd-{uuid.uuid4().hex[:8]}")
    client, proc = start_dockerd(workdir)
    try:
        yield client
    finally:
        client("rm", "-f", *_containers(client), check=False)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["umount", "-R", str(workdir / "exec")], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def _containers(docker: Docker) -> list[str]:
    return docker("ps", "-aq", check=False).stdout.split()


@pytest.fixture(scope="session")
def images(docker: Docker) -> dict[str, Any]:
    """nlpjobs-os, nlpjobs-base and nlpjobs-ner (CPU), built by images/build.sh as `make images` does."""
    started = time.time()
    proc = subprocess.run(["images/build.sh"], cwd=ROOT, capture_output=True, text=True, timeout=2400,
                          env={**docker.env(), "TASKS": TASK, "FLAVOR": "cpu",
                               "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    docker("image", "prune", "-f", check=False)  # the base's build stage (its venv, GBs): the tier runs beside the suite
    sizes = {}
    for image in ("nlpjobs-os:bookworm", f"nlpjobs-base:{VERSION}-cpu", f"nlpjobs-{TASK}:{VERSION}-cpu"):
        sizes[image] = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())
    report = {"build_seconds": round(time.time() - started, 1), "sizes_mb": {k: round(v / 2**20) for k, v in sizes.items()}}
    print(f"\nimages: {json.dumps(report)}")
    return report


@pytest.fixture(scope="session")
def s3(docker: Docker, images: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """SeaweedFS as a container named `s3` on the test network (the pods' endpoint: http://s3:8333)."""
    from s3server import find_weed

    docker("network", "rm", NETWORK, check=False)
    docker("network", "create", NETWORK)
    work = tmp_path_factory.mktemp("s3ct")
    (work / "data").mkdir()
    (work / "s3.json").write_text(json.dumps({"identities": [{"name": "ct", "credentials": [
        {"accessKey": ACCESS, "secretKey": SECRET}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    docker("run", "-d", "--name", "s3", "--network", NETWORK, "-p", f"127.0.0.1:{port}:8333",
           "-v", f"{find_weed()}:/usr/local/bin/weed:ro", "-v", f"{work}:/work",
           "nlpjobs-os:bookworm", "weed", "server", "-dir=/work/data", "-ip=s3", "-ip.bind=0.0.0.0", "-s3",
           "-s3.port=8333", "-s3.config=/work/s3.json", "-master.volumeSizeLimitMB=512", "-volume.max=50")
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    deadline = time.time() + 90
    while True:
        try:
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            if time.time() > deadline:
                raise AssertionError("SeaweedFS container not ready: " + docker("logs", "s3", check=False).stdout[-3000:]) from None
            time.sleep(1)
    try:
        yield {"port": str(port)}
    finally:
        docker("rm", "-f", "s3", check=False)
        docker("network", "rm", NETWORK, check=False)


def _client(s3: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3['port']}", aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET, region_name="us-east-1")


def _render(run: str, nodes: int) -> dict[str, dict[str, Any]]:
    values = {"task": TASK, "preset": "local", "runName": run, "nodes": nodes, "processesPerNode": 1,
              "overrides": OVERRIDES,
              "storage": {"endpoint": "http://s3:8333", "region": "us-east-1", "bucket": BUCKET, "prefix": "ct",
                          "secretName": "ct-creds"},
              "launch": {"rdzvTimeoutSeconds": 180}}
    with open(ROOT / ".cache" / f"ct-values-{run}.yaml", "w") as fh:
        yaml.safe_dump(values, fh)
        path = fh.name
    manifests = [d for d in yaml.safe_load_all(render([path], release=f"ct-{run}")) if d]
    return jobs_by_stage(manifests)


SECRETS = {"ct-creds": {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}}


def _run_pod(docker: Docker, pod: Pod) -> str:
    """Init containers then the main container, in order, as the kubelet does; returns the main log."""
    out = ""
    for container in [*pod.spec.get("initContainers", []), *pod.spec["containers"]]:
        proc = docker(*pod.docker_args(container, NETWORK, SECRETS), check=False, timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{pod.name}/{container['name']} exited {proc.returncode}:\n{out[-5000:]}"
    return out


def test_rendered_pods_run_one_task_end_to_end(docker: Docker, s3: dict[str, str]) -> None:
    (ROOT / ".cache").mkdir(exist_ok=True)
    jobs = _render("e2e", nodes=1)
    assert set(jobs) == {"preprocess", "train", "evaluate"}
    started = time.time()
    _run_pod(docker, Pod(jobs["preprocess"]))
    train_log = _run_pod(docker, Pod(jobs["train"], index=0))
    assert "4/4 optimizer steps" in train_log
    eval_log = _run_pod(docker, Pod(jobs["evaluate"]))
    assert "f1=" in eval_log and "precision=" in eval_log
    client = _client(s3)
    prefix = "ct/runs/e2e/"
    keys = {o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])}
    assert f"{prefix}model/_SUCCESS" in keys and f"{prefix}checkpoints/step-00000004/_COMMITTED" in keys
    metrics = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}metrics.json")["Body"].read())
    assert metrics["train"]["steps"] == 4 and metrics["evaluate"]["examples"] == 32
    assert 0.0 <= metrics["evaluate"]["overall_f1"] <= 1.0
    print(f"\ncontainer e2e (preprocess -> train -> evaluate): {time.time() - started:.0f}s")


def test_two_node_training_rendezvous_through_the_rendered_master_name(docker: Docker, s3: dict[str, str]) -> None:
    jobs = _render("nodes", nodes=2)
    train = jobs["train"]
    env = {e["name"]: e.get("value") for e in train["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NLPJOBS_MASTER_ADDR"] == f"{train['metadata']['name']}-0.{train['spec']['template']['spec']['subdomain']}"
    _run_pod(docker, Pod(jobs["preprocess"]))
    main = train["spec"]["template"]["spec"]["containers"][0]
    node1 = Pod(train, index=1)
    for container in train["spec"]["template"]["spec"].get("initContainers", []):
        assert docker(*node1.docker_args(container, NETWORK, SECRETS), check=False).returncode == 0
    # Rank 1 starts first and must wait for the master's port (as pods start in any order).
    later = docker.popen(*node1.docker_args(main, NETWORK, SECRETS))
    time.sleep(5)
    first = docker(*Pod(train, index=0).docker_args(main, NETWORK, SECRETS), check=False, timeout=900)
    rest, _ = later.communicate(timeout=300)
    assert first.returncode == 0, (first.stdout + first.stderr)[-5000:] + "\n--- node 1 ---\n" + rest[-3000:]
    assert later.returncode == 0, rest[-5000:]
    metrics = json.loads(_client(s3).get_object(Bucket=BUCKET, Key="ct/runs/nodes/metrics.json")["Body"].read())
    assert metrics["train"]["processes"] == 2 and metrics["train"]["steps"] == 4


def test_the_cpu_image_runs_every_process_on_tcmalloc(docker: Docker, images: dict[str, Any]) -> None:
    code = "from nlpjobs.train.speed.allocator import in_use; print(in_use())"
    proc = docker("run", "--rm", "--entrypoint", "python", f"nlpjobs-{TASK}:{VERSION}-cpu", "-c", code, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "tcmalloc", proc.stdout + proc.stderr
    assert "cannot be preloaded" not in proc.stderr
