"""Loading a job: a job file (YAML) plus ``--set key=value`` overrides, typed and validated before any compute.

The task named in the job decides the types of its ``preprocess`` and ``evaluate`` sections and checks the
settings that only make sense for it, so loading sits above the task registry; ``nlpjobs.config`` holds the
typed sections themselves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from nlpjobs.config import ConfigError, JobConfig, build, coerce
from nlpjobs.tasks import get_task


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (the value as a YAML scalar or flow collection)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: cannot parse the value: {exc}") from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the last one
    silently, so a second `train:` section would replace the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{key_node.start_mark.name}: duplicate key {key!r} on line {line} (first on line "
                                  f"{seen[key]}); merge the two into one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_job(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load a job YAML, apply ``--set`` overrides and validate the whole config before any compute."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {path}: no such file (presets live in jobs/ and jobs/local/)")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            line = p.read_bytes()[:exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); save the "
                              "job file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
        loader = _UniqueKeyLoader(text)
        loader.name = str(path)  # for the marks of its errors
        try:
            loaded = loader.get_single_data()
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        finally:
            loader.dispose()
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        raw = loaded or {}
    raw = apply_overrides(raw, list(overrides))
    return job_from_dict(raw)


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_bucket(uri: str) -> None:
    """An s3:// URI names a bucket that S3 accepts (3-63 lowercase letters, digits, dots and hyphens)."""
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise ConfigError(f"storage: got {uri!r}, which names no bucket; expected s3://<bucket>/<prefix>, "
                          "e.g. s3://ml-runs/nlpjobs")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"storage: {bucket!r} in {uri!r} is not a valid S3 bucket name (3-63 characters: "
                          "lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)")


def job_from_dict(raw: dict[str, Any]) -> JobConfig:
    raw = dict(raw)
    task_name = raw.get("task")
    if not task_name:
        raise ConfigError("task: missing; set it in the job file or with --set task=<name>")
    task = get_task(str(task_name))
    sections = {"preprocess": task.preprocess_config, "evaluate": task.evaluate_config}
    typed: dict[str, Any] = {}
    for key, cls in sections.items():
        value = raw.pop(key, None) or {}
        typed[key] = coerce(value, cls, key)
    job = build(JobConfig, raw)
    for key, value in typed.items():
        setattr(job, key, value)
    if not job.name:
        job.name = f"{job.task}-{job.section_hash('data', 'model', 'preprocess', 'train')[:8]}"
    if "/" in job.name or job.name.startswith("."):
        raise ConfigError(f"name: got {job.name!r}; a run id may not contain '/' or start with '.'")
    scheme = job.storage.split("://", 1)[0]
    if "://" not in job.storage or scheme not in ("file", "s3"):
        raise ConfigError(f"storage: got {job.storage!r}; expected file://<dir> or s3://<bucket>/<prefix>")
    if scheme == "s3":
        check_bucket(job.storage)
    task.validate_job(job)
    return job
