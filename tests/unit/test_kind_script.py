"""images/kind.sh (`make kind-up`): the add-ons the chart needs are installed, and a bucket that could not be
created stops the script with a message instead of a cluster that fails every run later. kind, kubectl and
docker are stand-ins on PATH that record their calls (the script's own logic is what runs)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIM = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
case "$(basename "$0") $*" in
  "kind get clusters"*) echo nlpjobs ;;
  *"s3.bucket.list"*) [ -f "{state}" ] && echo "  nlpjobs" ;;
  *"s3.bucket.create"*) [ -n "$BUCKET_CREATE_FAILS" ] && {{ echo "bucket create failed" >&2; exit 1; }}; touch "{state}" ;;
esac
exit 0
"""


def _kind_up(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir, log, state = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "bucket"
    bin_dir.mkdir()
    for tool in ("kind", "kubectl", "docker"):
        shim = bin_dir / tool
        shim.write_text(SHIM.format(log=log, state=state))
        shim.chmod(0o755)
    proc = subprocess.run(["images/kind.sh", "up"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", **env})
    return proc, log.read_text().splitlines() if log.exists() else []


def test_kind_up_installs_jobset_and_kueue_and_creates_the_bucket(tmp_path: Path) -> None:
    proc, calls = _kind_up(tmp_path)
    assert proc.returncode == 0, proc.stderr
    applied = [c for c in calls if c.startswith("kubectl apply")]
    assert any("jobset/releases/download/v0.12.0/manifests.yaml" in c for c in applied)
    assert any("kueue/releases/download/v0.17.0/manifests.yaml" in c for c in applied)
    assert any("images/kind/kueue.yaml" in c for c in applied)
    assert any("s3.bucket.create" in c for c in calls)
    # the JobSet controller is installed before anything that needs it
    assert calls.index(next(c for c in calls if "jobset-controller-manager" in c)) < calls.index(
        next(c for c in calls if "seaweedfs.yaml" in c))


def test_kind_up_stops_when_the_bucket_cannot_be_created(tmp_path: Path) -> None:
    proc, calls = _kind_up(tmp_path, BUCKET_CREATE_FAILS="1")
    assert proc.returncode != 0
    assert "creating the bucket nlpjobs in SeaweedFS failed" in proc.stderr
    assert not any("secret generic nlpjobs-storage" in c for c in calls)  # it stopped there
