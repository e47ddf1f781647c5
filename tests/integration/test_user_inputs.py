"""A user's own files are what gets trained on: the dataset cache key follows the input files' contents (size
and modification time or ETag), so an edited file is tokenized again instead of a stale dataset reused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nlpjobs import stages
from nlpjobs.jobfile import load_job

ROOT = Path(__file__).resolve().parents[2]
LABELS = "[O,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,B-MISC,I-MISC]"


def _write(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"tokens": ["EU", "rejects", "lamb"], "ner_tags": [3, 0, 0]}) + "\n"
                            for _ in range(n)))


def _job(raw: str, store: Path):  # noqa: ANN202
    return load_job(ROOT / "jobs/local/ner.yaml", [f"data.source=files:{raw}", f"storage=file://{store}",
                                                   f"preprocess.label_names={LABELS}"])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_edited_input_file_is_tokenized_again(tmp_path: Path, where: str, request: pytest.FixtureRequest) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "train.jsonl", 6)
    _write(raw / "validation.jsonl", 2)
    location, store = str(raw), tmp_path / "store"
    if where == "s3":
        from nlpjobs import storage

        root = request.getfixturevalue("s3_env")
        location = f"{root}/raw"
        storage.upload(raw, location)
    first = stages.preprocess(_job(location, store))
    assert not first.reused and first.manifest.data["raw_rows"]["train"] == 6
    assert stages.preprocess(_job(location, store)).reused  # unchanged inputs: reused, as before

    _write(raw / "train.jsonl", 9)  # the user fixes the file and reruns
    os.utime(raw / "train.jsonl", (1, 1))  # even with an old timestamp: the size changed
    if where == "s3":
        storage.upload(raw / "train.jsonl", f"{location}/train.jsonl")
    second = stages.preprocess(_job(location, store))
    assert not second.reused and second.uri != first.uri
    assert second.manifest.data["raw_rows"]["train"] == 9
