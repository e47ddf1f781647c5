"""The dataset cache key of a ``hub:`` source names the commit the Hub resolves data.revision to: a dataset updated
on the Hub is tokenized again instead of reused; an unreachable Hub falls back to the revision as given."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import RevisionNotFoundError

from nlpjobs.config import ConfigError
from nlpjobs.data import location, sources
from nlpjobs.jobfile import load_job
from nlpjobs.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict]:
    """A fake Hub: ``hub["main"]`` is the sha main resolves to (an exception: the Hub fails); calls are recorded."""
    state: dict = {"main": SHA_A, "calls": []}

    def dataset_info(self: HfApi, repo_id: str, *, revision: str | None = None, **kwargs: object) -> SimpleNamespace:
        state["calls"].append((repo_id, revision))
        answer = state[revision or "main"]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(sha=answer)

    monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    forget()
    yield state
    forget()


def forget() -> None:
    """As in a new process: commits are resolved once per process."""
    getattr(sources, "_HUB_COMMITS", {}).clear()


def key(*sets: str) -> str:
    job = load_job(ROOT / "jobs/local/ner.yaml", ["data.source=hub:tomaarsen/conll2003", "storage=file:///tmp/x",
                                                  *sets])
    return location.dataset_key(job, get_task("ner"))


def test_a_new_commit_on_the_hub_gives_a_new_key(hub: dict) -> None:
    first = key()
    forget()
    assert key() == first  # the same commit: the dataset is reused
    hub["main"] = SHA_B
    forget()
    assert key() != first  # main moved: tokenized again
    assert key() == key() and len(hub["calls"]) == 3  # asked once per process, not once per stage's key


def test_a_pinned_sha_is_its_own_key_and_asks_nothing(hub: dict) -> None:
    pinned = key(f"data.revision={SHA_A}")
    assert hub["calls"] == []
    assert key() == pinned  # main resolving to that sha is the same data
    assert key(f"data.revision={SHA_B}") != pinned


def test_an_unreachable_hub_falls_back_to_the_revision_as_given(hub: dict, caplog: pytest.LogCaptureFixture) -> None:
    hub["main"] = requests.ConnectionError("Failed to resolve 'huggingface.co'")
    with caplog.at_level(logging.WARNING, logger="nlpjobs.data.sources"):
        unreachable = key()
    [record] = caplog.records
    assert "the Hub is unreachable (ConnectionError)" in record.message and "'main' as given" in record.message
    assert "pin data.revision to a commit sha" in record.message
    hub["main"] = SHA_A
    forget()
    assert key() != unreachable  # 'main' is not a commit: the key says which one it could not tell


def test_offline_uses_the_commit_in_the_local_hub_cache(hub: dict, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    online = key()
    forget()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refs = Path(constants.HF_HUB_CACHE) / "datasets--tomaarsen--conll2003" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA_A)
    with caplog.at_level(logging.WARNING, logger="nlpjobs.data.sources"):
        assert key() == online and len(hub["calls"]) == 1  # the Hub was not asked again
    assert "HF_HUB_OFFLINE=1" in caplog.text and "from the local Hub cache" in caplog.text


def test_an_unknown_revision_is_a_config_error(hub: dict) -> None:
    hub["v9"] = RevisionNotFoundError("Invalid rev id: v9", response=None)
    with pytest.raises(ConfigError, match=r"data.revision: 'v9' is not a branch, tag or commit"):
        key("data.revision=v9")


def test_preprocess_reads_the_commit_the_key_names(hub: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Main may move between computing the key and downloading: the rows must be those of the keyed commit."""
    import datasets

    asked: list[str | None] = []

    def load_dataset(name: str, config: str | None = None, *, split: str, revision: str | None = None
                     ) -> datasets.Dataset:
        asked.append(revision)
        return datasets.Dataset.from_dict({"tokens": [["EU"]], "ner_tags": [[3]]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    job = load_job(ROOT / "jobs/local/ner.yaml", ["data.source=hub:tomaarsen/conll2003", "storage=file:///tmp/x"])
    key()
    hub["main"] = SHA_B  # moved after the key was computed, in the same process
    sources.load_raw(job.data, job.train.seed)
    assert asked == [SHA_A, SHA_A]
