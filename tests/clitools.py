"""Running the `nlpjobs` CLI as a user does, in a subprocess, with job files derived from the presets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "nlpjobs", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if check and proc.returncode != 0:
        raise AssertionError(f"nlpjobs {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_file(tmp_path: Path, preset: str, storage_root: str, **sections: Any) -> Path:
    job = yaml.safe_load((ROOT / preset).read_text())
    job["storage"] = storage_root
    for key, values in sections.items():
        if isinstance(values, dict):
            job.setdefault(key, {}).update(values)
        else:
            job[key] = values
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path
