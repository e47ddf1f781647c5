"""What the libraries print during a run: what informs, said once in nlpjobs' words; the rest silenced.

transformers, accelerate and the tokenizers print notices meant for notebook users. In a batch job's log
they are noise, and some read like faults:

| notice | library | here |
|---|---|---|
| "Some weights of X were not initialized ... newly initialized: [...] You should probably TRAIN this model" (with the venv's absolute path) | transformers | one line: which weights are new (the task's head), that training fits them |
| "Some weights of the model checkpoint at ... were not used when initializing X" | transformers | one line: how many, e.g. the pretraining head |
| "`loss_type=None` was set in the config but it is unrecognized" | transformers | silenced: the model's default loss is the one wanted |
| "Device set to use cpu" | transformers pipelines | silenced: predict says where it runs |
| "Your max_length is set to ..., but your input_length is only ..." and other generation-length notices | transformers pipelines | silenced: the task's generation settings are in the job |
| "Removed shared tensor {...} while saving" | accelerate | silenced: tied embeddings are saved once and re-tied on load (tested) |
| "Recommended: pip install sacremoses." | Marian's tokenizer | silenced: Moses punctuation normalisation is optional and the presets do not use it |
| "You set `add_prefix_space`..." and other add_prefix_space notices of BPE and T5 tokenizers | transformers | silenced: the task sets what it needs |

The filters attach to the libraries' named loggers, so nothing is imported to install them. transformers prints
through its own handler and, where the environment sets ``CI`` (GitHub Actions, GitLab), also propagates to the
root logger's: :class:`PrintedByTheLibrary` on the root handlers keeps each notice to one line.
"""

from __future__ import annotations

import logging
import re
import warnings

_NEW_WEIGHTS = re.compile(r"Some weights of (\w+) were not initialized from the model checkpoint at .*? and are "
                          r"newly initialized(?: because the shapes did not match)?:\s*(.*?)\nYou should probably",
                          re.S)
_UNUSED = re.compile(r"Some weights of the model checkpoint at .*? were not used when initializing (\w+): (\[.*?\])",
                     re.S)
_SILENCED = (
    "`loss_type=",
    "Device set to use",
    "Removed shared tensor",
    "but your input_length is only",
    "max_new_tokens",
    "add_prefix_space",
)


def _keys(text: str) -> list[str]:
    return re.findall(r"'([^']+)'", text)


def _named(keys: list[str], most: int = 4) -> str:
    return ", ".join(keys[:most]) + (f" and {len(keys) - most} more" if len(keys) > most else "")


class LibraryNotices(logging.Filter):
    """Rewrites the informative notices in nlpjobs' words and drops the rest (see the module's table)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in _SILENCED):
            return False
        new = _NEW_WEIGHTS.search(message)
        if new:
            keys = _keys(new.group(2)) or [new.group(2).strip()]
            record.msg, record.args = (f"model: {new.group(1)} starts with {len(keys)} newly initialised weight(s) "
                                       f"({_named(keys)}), the task's head; training fits them"), ()
            return True
        unused = _UNUSED.search(message)
        if unused:
            keys = _keys(unused.group(2))
            record.msg, record.args = (f"model: {len(keys)} weight(s) of the checkpoint are not used by "
                                       f"{unused.group(1)} ({_named(keys, 2)}): another task's head, dropped"), ()
        return True


class PrintedByTheLibrary(logging.Filter):
    """On a root handler: drops records that a library's own handler has already printed."""

    LIBRARIES = ("transformers",)

    def filter(self, record: logging.LogRecord) -> bool:
        library = record.name.split(".", 1)[0]
        return not (library in self.LIBRARIES and logging.getLogger(library).handlers)


NOISY_LOGGERS = ("transformers.modeling_utils", "transformers.configuration_utils", "transformers.pipelines.base",
                 "transformers.pipelines.text2text_generation",
                 "transformers.generation.utils", "transformers.generation.configuration_utils",
                 "transformers.tokenization_utils_base", "transformers.tokenization_utils_fast",
                 "transformers.models.gpt2.tokenization_gpt2_fast", "transformers.models.roberta.tokenization_roberta_fast",
                 "transformers.models.t5.tokenization_t5_fast", "transformers.models.t5.tokenization_t5",
                 "accelerate.utils.other", "accelerate.accelerator")


def tame() -> None:
    """Install the filters on the libraries' loggers, the root handlers and the warnings (idempotent).

    Call after the root logger has its handlers (``logging.basicConfig``)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, PrintedByTheLibrary) for f in handler.filters):
            handler.addFilter(PrintedByTheLibrary())
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, LibraryNotices) for f in logger.filters):
            logger.addFilter(LibraryNotices())
    warnings.filterwarnings("ignore", message=r"Recommended: pip install sacremoses", category=UserWarning)
