"""Committed checkpoints on object storage.

A checkpoint is ``<run>/checkpoints/step-00000500/`` holding Accelerate's state (model, optimizer,
scheduler, every process's RNG) plus ``trainer_state.json``. It counts only once ``_COMMITTED`` is
written, after every file; ``latest`` then points at it. Resume picks the newest committed step.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from nlpjobs import storage

log = logging.getLogger(__name__)
COMMITTED = "_COMMITTED"
STEP_RE = re.compile(r"^step-(\d{8})$")


def step_dir(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointStore:
    def __init__(self, run_uri: str, scratch: Path) -> None:
        self.uri = storage.join(run_uri, "checkpoints")
        self.scratch = scratch

    def committed_steps(self) -> list[int]:
        steps = []
        for name in storage.listdir(self.uri):
            m = STEP_RE.match(name)
            if m and storage.exists(storage.join(self.uri, name, COMMITTED)):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest(self) -> int | None:
        """Newest committed step; the ``latest`` pointer is a hint, the markers are the truth."""
        steps = self.committed_steps()
        return steps[-1] if steps else None

    def save(self, accelerator: Any, step: int, state: dict[str, Any], keep: int) -> str:
        """Every process calls this; returns the committed checkpoint URI."""
        local = self.scratch / f"{step_dir(step)}-{_shared_token(accelerator)}"
        accelerator.save_state(str(local))
        if accelerator.is_main_process:
            (local / "trainer_state.json").write_text(json.dumps(state, indent=2))
        accelerator.wait_for_everyone()
        target = storage.join(self.uri, step_dir(step))
        if accelerator.is_local_main_process:
            storage.upload(local, target)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            storage.write_bytes(storage.join(target, COMMITTED), b"")
            storage.write_bytes(storage.join(self.uri, "latest"), step_dir(step).encode())
            for old in self.committed_steps()[:-keep]:
                storage.remove(storage.join(self.uri, step_dir(old)))
        accelerator.wait_for_everyone()
        if accelerator.is_local_main_process:
            shutil.rmtree(local, ignore_errors=True)
        return target

    def load(self, accelerator: Any, step: int) -> dict[str, Any]:
        """Restore model, optimizer, scheduler and RNG states; return trainer_state.json."""
        src = storage.join(self.uri, step_dir(step))
        local = self.scratch / f"resume-{step_dir(step)}-{_shared_token(accelerator)}"
        if accelerator.is_local_main_process:
            storage.download(src, local)
        accelerator.wait_for_everyone()
        accelerator.load_state(str(local))
        state = json.loads((local / "trainer_state.json").read_text())
        accelerator.wait_for_everyone()
        if accelerator.is_local_main_process:
            shutil.rmtree(local, ignore_errors=True)
        return state


def _shared_token(accelerator: Any) -> str:
    """A token identical on every process, so all ranks of a node use one scratch directory."""
    from accelerate.utils import broadcast_object_list

    token = [uuid.uuid4().hex[:8]]
    if accelerator.num_processes > 1:
        broadcast_object_list(token)
    return token[0]
