"""Publishing a run's model folder to the Hugging Face Hub (``publish.hub_model_id``).

``nlpjobs publish`` uploads it, and ``nlpjobs evaluate``/``run`` (the chart's evaluate stage included) do so
after evaluating when ``publish.hub_model_id`` is set; ``--dry-run`` prints :func:`plan`: the repository and
the exact files, with their sizes, that would be uploaded. The upload is the model folder as exported
(weights, config, tokenizer, the model card ``README.md`` the evaluate stage rewrote) less nlpjobs' own
markers (``_SUCCESS``), in one commit, after which the branch holds exactly those files. The token comes
from ``HF_TOKEN`` (the chart maps ``hubToken.secretName`` to it) or a ``hf auth login``; publishing without
one fails before any compute with one ``error:`` line (exit 2), and a Hub that is unreachable or refuses the
token fails with one ``error: hub: ...`` line (exit 4, as object storage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlpjobs import paths, storage
from nlpjobs.card import MARKERS, README
from nlpjobs.config import ConfigError, JobConfig


class PublishError(RuntimeError):
    """The Hub is unreachable or refused the upload (token, permissions, metadata)."""


@dataclass
class PublishPlan:
    """What a publish uploads: ``files`` (path in the repository, bytes) of ``folder`` to ``repo_id``."""

    repo_id: str
    revision: str
    private: bool
    folder: Path
    files: list[tuple[str, int]]
    commit_message: str
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def lines(self) -> list[str]:
        where = self.repo_id if "/" in self.repo_id else f"<the token's user>/{self.repo_id}"
        visibility = "private" if self.private else "public"
        out = [f"repository: https://huggingface.co/{where} (model, {visibility} if created), branch {self.revision}",
               f"commit:     {self.commit_message}",
               f"files:      {len(self.files)} from {self.folder}, {_size(self.total_bytes)} in all"]
        width = max((len(name) for name, _ in self.files), default=0)
        out += [f"  {name:<{width}}  {size:>14,} bytes" for name, size in self.files]
        return out + [f"note: {n}" for n in self.notes]


def hub_token() -> str | None:
    """The Hub token: HF_TOKEN (the chart's hubToken.secretName), else the one `hf auth login` saved."""
    from huggingface_hub import get_token

    return get_token()


def check_ready(job: JobConfig) -> str:
    """The token to publish ``job``'s model with; ConfigError when publish.hub_model_id or the token is missing.
    Called before any compute, so a run that cannot publish fails before it trains or evaluates."""
    repo = job.publish.hub_model_id
    if not repo:
        raise ConfigError("publish.hub_model_id: not set; name the Hub repository to publish to, e.g. "
                          "--set publish.hub_model_id=my-org/bert-finetuned-ner")
    token = hub_token()
    if not token:
        raise ConfigError(f"publish.hub_model_id is {repo!r} but no Hugging Face token was found: set HF_TOKEN to a "
                          "token with write access (in the chart: hubToken.secretName, a Secret holding it), or log in "
                          "with `hf auth login`; --dry-run shows what would be uploaded without one")
    return token


def model_files(folder: Path) -> list[tuple[str, int]]:
    """The files of a model folder that are published, sorted: every file, less nlpjobs' markers and what
    ``upload_folder`` never uploads (.git, .cache/huggingface), filtered as ``upload_folder`` filters."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    found = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(found, ignore_patterns=[*MARKERS, *DEFAULT_IGNORE_PATTERNS])
    return [(name, found[name].stat().st_size) for name in kept]


def plan(job: JobConfig, folder: Path | None = None) -> PublishPlan:
    """What publishing ``job``'s model would upload (no token, no network). The run's model folder is
    ``folder`` or, by default, ``<run>/model`` (downloaded to the local cache when on S3)."""
    from nlpjobs.stages import fetch_model

    repo = job.publish.hub_model_id
    if not repo:
        raise ConfigError("publish.hub_model_id: not set; name the Hub repository to publish to, e.g. "
                          "--set publish.hub_model_id=my-org/bert-finetuned-ner")
    folder = folder or fetch_model(job)
    files = model_files(folder)
    notes = []
    metrics_uri = storage.join(paths.run_uri(job), "metrics.json")
    metrics = storage.read_json(metrics_uri) if storage.exists(metrics_uri) else {}
    if README not in dict(files):
        notes.append(f"the model folder has no model card ({README}): `nlpjobs evaluate` writes one")
    elif "evaluate" not in metrics:
        notes.append("the run was not evaluated: the model card holds the train-time evaluation (`nlpjobs evaluate` "
                     "rewrites it with its own metrics)")
    return PublishPlan(repo_id=repo, revision=job.publish.revision, private=job.publish.private, folder=folder,
                       files=files, commit_message=job.publish.commit_message or _default_message(job, metrics),
                       notes=notes)


def publish(job: JobConfig, token: str | None = None, api: Any = None) -> tuple[str, PublishPlan]:
    """Upload ``job``'s model folder to publish.hub_model_id in one commit; return (commit URL, plan).

    The repository is created when missing (``publish.private``), the branch ``publish.revision`` too, and
    after the commit the branch holds exactly the plan's files (and .gitattributes)."""
    token = token or check_ready(job)
    todo = plan(job)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        repo_id = api.create_repo(todo.repo_id, private=todo.private, exist_ok=True, repo_type="model").repo_id
        if todo.revision != "main":
            api.create_branch(repo_id, branch=todo.revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(todo.folder), repo_type="model",
                                 revision=todo.revision, commit_message=todo.commit_message,
                                 ignore_patterns=list(MARKERS), delete_patterns=["*"])
    except Exception as exc:  # noqa: BLE001 - classified into one line below
        raise PublishError(_explain(exc, todo.repo_id)) from exc
    todo.repo_id = repo_id
    return str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}"), todo


def _explain(exc: BaseException, repo: str) -> str:
    """One line for a failed publish: what the Hub said, and what to do."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return f"publishing {repo}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to publish"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status == 401:
            return f"publishing {repo}: the Hub refused the token (401 Unauthorized): check HF_TOKEN ({first})"
        if status == 403:
            return (f"publishing {repo}: the token may not write there (403 Forbidden): give it write access to the "
                    f"namespace, or choose another publish.hub_model_id ({first})")
        return f"publishing {repo}: the Hub answered {status} ({first})"
    if isinstance(exc, OSError):  # connection errors, timeouts: the innermost cause, not urllib3's whole chain
        from huggingface_hub import constants

        cause = re.search(r"Caused by (\w+)", first)
        why = f"{type(exc).__name__}: {cause.group(1)}" if cause else f"{type(exc).__name__}: {first[:200]}"
        return f"publishing {repo}: the Hub at {constants.ENDPOINT} is unreachable ({why})"
    return f"publishing {repo}: {type(exc).__name__}: {first}"


def _default_message(job: JobConfig, metrics: dict[str, Any]) -> str:
    from nlpjobs.tasks import get_task

    section = metrics.get("evaluate") or (metrics.get("train") or {}).get("final_eval") or {}
    summary = get_task(job.task).summary(section) if section else "not evaluated"
    return f"nlpjobs {job.task} run {job.name}: {summary}"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"
