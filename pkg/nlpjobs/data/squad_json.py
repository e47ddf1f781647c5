"""SQuAD's formats: the nested JSON file as published (v1.1 and v2.0) and the shapes of an ``answers`` value.

A nested file ``{"version": ..., "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"?, "plausible_answers"?}]}]}]}`` is flattened into the
columnar rows the QA task reads: one row per question with ``id, title, context, question`` and ``answers`` as
``{"text": [...], "answer_start": [...]}`` (empty lists: unanswerable; ``plausible_answers`` are dropped, as
in the Hub's squad_v2). Errors name the file, the position (``data[0].paragraphs[1].qas[2]``, and the id once
known) and the fix; they are :class:`SquadFormatError`, which the callers turn into their data error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import datasets

from nlpjobs import storage

_NESTED_START = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"(?:version|data)"\s*:')
"""A .json file opening with a "version" or "data" key is one nested SQuAD document, not JSON lines."""

SHAPE = ('{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., '
         '"question": ..., "answers": [{"text": ..., "answer_start": <int>}]}]}]}]}')
ANSWER_SHAPES = ('a list of {"text": str, "answer_start": int} (SQuAD JSON) or {"text": [str, ...], '
                 '"answer_start": [int, ...]} (Hugging Face), empty for an unanswerable question')


class SquadFormatError(ValueError):
    """A SQuAD file or answers value that does not have SQuAD's shape."""


def features() -> datasets.Features:
    """The columns of flattened rows (those of the Hub's squad and squad_v2 datasets)."""
    text = datasets.Value("string")
    return datasets.Features({"id": text, "title": text, "context": text, "question": text,
                              "answers": {"text": datasets.Sequence(text),
                                          "answer_start": datasets.Sequence(datasets.Value("int32"))}})


def looks_nested(uri: str, head_bytes: int = 4096) -> bool:
    """Whether the .json file at ``uri`` opens like a nested SQuAD document (first key "version" or "data")."""
    fs, path = storage.resolve(uri)

    def head() -> bytes:
        with fs.open(path, "rb") as fh:
            return fh.read(head_bytes)

    return bool(_NESTED_START.match(storage.retry(head, "reading", uri)))


def read_nested(uri: str) -> datasets.Dataset | None:
    """The flattened rows of the nested SQuAD file at ``uri``; None when it is JSON lines after all (several
    documents, one a line, or one row with the task's own question and context), for the ordinary JSON reader."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return None
        raise SquadFormatError(f"{uri} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                               "fix the file (a SQuAD file is one JSON document)") from None
    if isinstance(doc, Mapping) and not isinstance(doc.get("data"), list) and {"question", "context"} <= set(doc):
        return None
    return datasets.Dataset.from_dict(flatten(doc, uri), features=features())


def flatten(doc: Any, source: str) -> dict[str, list[Any]]:
    """Columns of one row per question of a parsed SQuAD document; ``source`` names it in errors."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("data"), list):
        raise SquadFormatError(f"{source} has no \"data\" list at the top level; a SQuAD file is {SHAPE}")
    rows: dict[str, list[Any]] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for a, article in enumerate(doc["data"]):
        where = f"data[{a}]"
        paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
        if not isinstance(paragraphs, list):
            raise SquadFormatError(f"{source}: {where} has no \"paragraphs\" list; each article is "
                                   '{"title": ..., "paragraphs": [{"context": ..., "qas": [...]}]}')
        title = _optional_text(article, "title", where, source)
        for p, paragraph in enumerate(paragraphs):
            _flatten_paragraph(paragraph, title, f"{where}.paragraphs[{p}]", source, rows)
    if not rows["id"]:
        raise SquadFormatError(f"{source} holds no question (its \"data\" has no qas); nothing to train or "
                               "evaluate on")
    return rows


def _flatten_paragraph(paragraph: Any, title: str, where: str, source: str, rows: dict[str, list[Any]]) -> None:
    if not isinstance(paragraph, Mapping):
        raise SquadFormatError(f"{source}: {where} is not an object; a paragraph is "
                               '{"context": ..., "qas": [...]}')
    context = paragraph.get("context")
    if not isinstance(context, str) or not context.strip():
        raise SquadFormatError(f"{source}: {where} has no \"context\" text; give each paragraph its text as "
                               '"context": "..."')
    qas = paragraph.get("qas")
    if not isinstance(qas, list):
        raise SquadFormatError(f"{source}: {where} has no \"qas\" list; put the paragraph's questions in "
                               '"qas": [{"id": ..., "question": ..., "answers": [...]}]')
    for q, qa in enumerate(qas):
        here = f"{where}.qas[{q}]"
        if not isinstance(qa, Mapping):
            raise SquadFormatError(f"{source}: {here} is not an object; a question is "
                                   '{"id": ..., "question": ..., "answers": [...]}')
        qid = qa.get("id")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
            raise SquadFormatError(f"{source}: {here} has no \"id\"; give every question a unique string id")
        here = f"{here} (id {str(qid)!r})"
        question = qa.get("question")
        if not isinstance(question, str) or not question.strip():
            raise SquadFormatError(f"{source}: {here} has no \"question\" text; write the question or drop it")
        impossible = qa.get("is_impossible", False)
        if not isinstance(impossible, bool):
            raise SquadFormatError(f"{source}: {here} has \"is_impossible\": {impossible!r}; use true or false")
        answers = parse_answers(qa.get("answers", [] if impossible else None), f"{source}: {here}")
        if impossible and answers["text"]:
            raise SquadFormatError(f"{source}: {here} has \"is_impossible\": true and {len(answers['text'])} "
                                   "answer(s); an unanswerable question has \"answers\": [] (put guesses in "
                                   "\"plausible_answers\"), or set \"is_impossible\": false")
        for key, value in (("id", str(qid)), ("title", title), ("context", context), ("question", question),
                           ("answers", answers)):
            rows[key].append(value)


def _optional_text(obj: Mapping[str, Any], key: str, where: str, source: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SquadFormatError(f"{source}: {where} has \"{key}\": {value!r}; it must be a string")
    return value


def parse_answers(value: Any, where: str) -> dict[str, list[Any]]:
    """``{"text": [...], "answer_start": [...]}`` from either answers shape (see :data:`ANSWER_SHAPES`).

    Each text is a non-empty string and each answer_start a non-negative integer; ``where`` (file and position,
    or split and row id) begins the error message.
    """
    if isinstance(value, list):
        pairs = []
        for i, answer in enumerate(value):
            if not isinstance(answer, Mapping) or not {"text", "answer_start"} <= set(answer):
                raise SquadFormatError(f"{where}: answer {i} is {_short(answer)}, not "
                                       '{"text": ..., "answer_start": ...}; answers must be ' + ANSWER_SHAPES)
            pairs.append((answer["text"], answer["answer_start"]))
    elif isinstance(value, Mapping) and set(value) >= {"text", "answer_start"} \
            and isinstance(value["text"], list) and isinstance(value["answer_start"], list):
        if len(value["text"]) != len(value["answer_start"]):
            raise SquadFormatError(f"{where}: answers has {len(value['text'])} text(s) but "
                                   f"{len(value['answer_start'])} answer_start(s); give one start per text")
        pairs = list(zip(value["text"], value["answer_start"], strict=True))
    else:
        raise SquadFormatError(f"{where}: answers is {_short(value)}; answers must be {ANSWER_SHAPES}")
    for i, (text, start) in enumerate(pairs):
        if not isinstance(text, str) or not text:
            raise SquadFormatError(f"{where}: answer {i} has text {text!r}; an answer is a non-empty string of the "
                                   "context (an unanswerable question has no answers at all)")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise SquadFormatError(f"{where}: answer {i} ({text!r}) has answer_start {start!r}, not an integer "
                                   ">= 0; it is the answer's character offset in the context")
    return {"text": [t for t, _ in pairs], "answer_start": [s for _, s in pairs]}


def _short(value: Any, limit: int = 60) -> str:
    kind = {str: "a string", dict: "an object", list: "a list", type(None): "missing (null)"}.get(
        type(value), f"a {type(value).__name__}")
    text = repr(value)
    return f"{kind} {text[:limit]}{'...' if len(text) > limit else ''}" if value is not None else kind
