"""Job config: typed loading, overrides, and messages that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlpjobs.config import ConfigError, JobConfig, describe
from nlpjobs.jobfile import load_job

ROOT = Path(__file__).resolve().parents[2]


def test_local_ner_preset_loads_with_task_sections() -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml")
    assert job.task == "ner"
    assert job.preprocess.label_all_tokens is True  # NER-specific section type
    assert job.train.batch_size == 16


@pytest.mark.parametrize("preset", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("jobs/**/*.yaml")))
def test_every_preset_validates(preset: str) -> None:
    job = load_job(ROOT / preset)
    assert job.name and job.data.source and job.model.name


def test_overrides_are_typed_and_nested() -> None:
    job = load_job(ROOT / "jobs/local/ner.yaml", ["train.epochs=1", "train.max_grad_norm=null",
                                                 "data.max_train_examples=10", "preprocess.label_all_tokens=false"])
    assert job.train.epochs == 1.0 and job.train.max_grad_norm is None
    assert job.data.max_train_examples == 10 and job.preprocess.label_all_tokens is False
    assert load_job(ROOT / "jobs/local/ner.yaml", ["train.learning_rate=1e-3"]).train.learning_rate == 1e-3


def test_an_unquoted_no_is_the_word_where_the_setting_takes_words(tmp_path: Path) -> None:
    """YAML reads `no` as false: `--set train.mixed_precision=no` (what the train log advises) and an unquoted
    `mixed_precision: no` in a job file mean "no", while a boolean elsewhere stays an error."""
    assert load_job(ROOT / "jobs/local/clm.yaml", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    job_file = tmp_path / "job.yaml"
    job_file.write_text((ROOT / "jobs/local/clm.yaml").read_text().replace("\ntrain:\n", "\ntrain:\n  mixed_precision: no\n"))
    assert load_job(job_file).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.scheduler: got False, allowed values are 'linear'"):
        load_job(ROOT / "jobs/local/clm.yaml", ["train.scheduler=no"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.learnig_rate=1e-4", "train.learnig_rate: unknown setting. Did you mean 'learning_rate'?"),
        ("train.batch_size=abc", "train.batch_size: got 'abc' (str), expected an integer"),
        ("train.batch_size=0", "train.batch_size: got 0, must be > 0"),
        ("train.scheduler=exp", "train.scheduler: got 'exp', allowed values are 'linear', 'cosine', 'constant'"),
        ("train.eval_every=sometimes", "train.eval_every: got 'sometimes'"),
        ("task=nerr", "unknown task 'nerr'. Did you mean 'ner'?"),
        ("storage=ftp://x", "storage: got 'ftp://x'"),
        ("data.source=conll", "data.source: got 'conll'"),
        ("preprocess.label_all_tokens=maybe", "preprocess.label_all_tokens: got 'maybe' (str), expected true or false"),
        ("name=a/b", "may not contain '/'"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_job(ROOT / "jobs/local/ner.yaml", [override])
    assert message in str(exc.value)


def test_missing_file_and_bad_override_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_job(ROOT / "jobs/local/ner.yaml", ["train.epochs"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_job(bad)


def test_reference_documents_every_setting() -> None:
    rows = describe(JobConfig)
    keys = {k for k, _, _ in rows}
    assert {"train.learning_rate", "data.source", "storage", "train.grad_accum"} <= keys
    undocumented = [k for k, _, doc in rows if not doc and not k.startswith(("preprocess.", "evaluate."))]
    assert undocumented == []
