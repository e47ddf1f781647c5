"""Task registry: one module per task, looked up by name."""

from __future__ import annotations

import difflib
import importlib

from nlpjobs.config import ConfigError
from nlpjobs.tasks.base import Task

_MODULES = {
    "ner": "nlpjobs.tasks.ner:NerTask",
    "qa": "nlpjobs.tasks.qa:QaTask",
    "mlm": "nlpjobs.tasks.mlm:MlmTask",
    "translation": "nlpjobs.tasks.translation:TranslationTask",
    "summarization": "nlpjobs.tasks.summarization:SummarizationTask",
    "clm": "nlpjobs.tasks.clm:ClmTask",
}


def task_names() -> list[str]:
    return sorted(_MODULES)


def get_task(name: str) -> Task:
    if name not in _MODULES:
        close = difflib.get_close_matches(name, _MODULES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"task: unknown task {name!r}.{hint} Known tasks: {', '.join(task_names())}")
    module, cls = _MODULES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
