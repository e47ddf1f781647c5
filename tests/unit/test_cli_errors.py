"""The CLI's error handling is total: an exception nlpjobs does not expect still ends in one `error:` line that
says what the command was doing and how to get the traceback, and `--debug` (or NLPJOBS_DEBUG=1) shows it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from nlpjobs import stages
from nlpjobs.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broken_preprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(job: object) -> None:
        raise KeyError("an unexpected key")

    monkeypatch.setattr(stages, "preprocess", boom)
    monkeypatch.setenv("NLPJOBS_DEBUG", "0")  # off; and restored after the test, --debug sets it in-process


def test_an_unexpected_error_is_one_line_with_the_command(broken_preprocess: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["preprocess", "-c", str(ROOT / "jobs/local/ner.yaml"),
                                       "--set", f"storage=file://{tmp_path}"])
    assert result.exit_code == 1
    assert result.output.startswith("error: internal error while running `main preprocess`: KeyError")
    assert "--debug" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback(broken_preprocess: None, tmp_path: Path, how: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["preprocess", "-c", str(ROOT / "jobs/local/ner.yaml"), "--set", f"storage=file://{tmp_path}"]
    if how == "flag":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("NLPJOBS_DEBUG", "1")
    result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, KeyError)  # raised, with its traceback, not turned into a line


def test_doctor_says_which_checks_it_skipped(tmp_path: Path) -> None:
    """Before `preprocess` most job checks cannot run: doctor names them instead of "no problems found"."""
    result = CliRunner().invoke(main, ["doctor", "-c", str(ROOT / "jobs/local/ner.yaml"),
                                       "--set", f"storage=file://{tmp_path}"])
    assert result.exit_code == 0, result.output
    assert "[  --] dataset: not usable yet" in result.output and "run `nlpjobs preprocess` first" in result.output
    for name in ("model", "columns", "one batch", "forward/backward", "evaluation"):
        assert f"[  --] {name}: skipped: needs the preprocessed dataset" in result.output
    assert "no problems found" not in result.output
    assert "6 not run (dataset, model, columns, one batch, forward/backward, evaluation)" in result.output.splitlines()[-1]
