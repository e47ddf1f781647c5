"""The libraries' notices in a run's log: the new-head notice in our words without the venv's path, the
notebook notices silenced, everything else untouched."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from nlpjobs import library_output
from nlpjobs.models import resolve_model


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def seen() -> Iterator[Records]:
    """What reaches the handlers of the libraries' loggers, after tame()'s filters."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in library_output.NOISY_LOGGERS]
    saved = [list(logger.filters) for logger in loggers]
    library_output.tame()
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger, filters in zip(loggers, saved):
        logger.removeHandler(handler)
        logger.filters = filters


def test_a_new_task_head_is_one_line_without_the_checkpoint_path(seen: Records) -> None:
    from transformers import AutoModelForTokenClassification

    source = resolve_model("offline:minilm")
    AutoModelForTokenClassification.from_pretrained(source, num_labels=3)
    [line] = [m for m in seen.messages if "newly initialised" in m]
    assert line == ("model: BertForTokenClassification starts with 2 newly initialised weight(s) "
                    "(classifier.bias, classifier.weight), the task's head; training fits them")
    assert not any(source in m or "You should probably TRAIN" in m for m in seen.messages)


def test_a_pipeline_does_not_announce_its_device(seen: Records) -> None:
    from transformers import pipeline

    pipeline("feature-extraction", model=resolve_model("offline:minilm"), device=-1)
    assert not any("Device set to use" in m for m in seen.messages)


@pytest.mark.parametrize(("logger", "text"), [
    ("accelerate.utils.other", "Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but check by "
                               "verifying that you don't receive any warning while reloading"),
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized. Using the default "
                                    "loss: `ForCausalLMLoss`."),
])
def test_notebook_notices_are_silenced(seen: Records, logger: str, text: str) -> None:
    logging.getLogger(logger).warning(text)
    assert seen.messages == []


def test_other_warnings_pass_untouched(seen: Records) -> None:
    logging.getLogger("transformers.modeling_utils").warning("something the user must see")
    assert seen.messages == ["something the user must see"]


def test_the_sacremoses_recommendation_is_silenced() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        library_output.tame()
        warnings.warn("Recommended: pip install sacremoses.", UserWarning, stacklevel=1)
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]


def test_a_library_notice_is_printed_once_when_ci_makes_transformers_propagate() -> None:
    """With CI=1 (GitHub Actions, GitLab) transformers' logger keeps its own handler and also propagates to the
    root logger's: without care every notice appears twice in a run's log, once with a timestamp."""
    import subprocess
    import sys

    script = ("from nlpjobs.cli import _setup_logging\n"
              "_setup_logging(False)\n"
              "from transformers.utils import logging as tl\n"
              "tl.get_logger('transformers.modeling_utils').warning('a notice for the log')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "CI": "1"}).stderr
    assert out.count("a notice for the log") == 1, out


def test_the_summarization_pipeline_s_length_advice_is_silenced() -> None:
    """Raised by the pipeline's own module logger (not one of the loggers above): predict printed it once per
    short input."""
    from transformers.pipelines.text2text_generation import SummarizationPipeline

    library_output.tame()
    handler = Records()
    library = logging.getLogger("transformers")  # its own handler prints what propagates from every module
    library.addHandler(handler)
    try:
        SummarizationPipeline.check_inputs(None, 12, 5, 30)
    finally:
        library.removeHandler(handler)
    assert not any("input_length is only" in m for m in handler.messages)
