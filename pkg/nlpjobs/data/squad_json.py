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
import pyarrow as pa
import pyarrow.compute as pc

from nlpjobs import storage

_NESTED_START = re.compile(rb'\A(?:\xef\xbb\xbf)?\s*\{\s*"(?:version|data)"\s*:')
"""A .json file opening with a "version" or "data" key is one nested SQuAD document, not JSON lines."""

SHAPE = ('{"version": ..., "data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id": ..., '
         '"question": ..., "answers": [{"text": ..., "answer_start": <int>}]}]}]}]}')
ANSWER_SHAPES = ('a list of {"text": str, "answer_start": int} (SQuAD JSON) or {"text": [str, ...], '
                 '"answer_start": [int, ...]} (Hugging Face), empty for an unanswerable question')


ANSWERS_TYPE = pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])
"""Arrow type of the columnar answers."""


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


def columnar_answers(column: pa.Array | pa.ChunkedArray) -> tuple[bool, pa.Array | None]:
    """The whole answers column checked with Arrow (a full SQuAD split in milliseconds instead of seconds in
    Python): ``(True, None)`` when it is already the columnar form and valid, ``(True, array)`` when it is a valid
    list of ``{text, answer_start}`` per row (``array``: the columnar form), ``(False, None)`` when some row is
    not plainly valid or the type is another (check row by row with :func:`parse_answers` for the message)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = arr.type
    if arr.null_count:
        return False, None
    if pa.types.is_struct(kind) and {"text", "answer_start"} <= {f.name for f in kind}:
        fields = dict(zip([f.name for f in kind], arr.flatten(), strict=True))
        texts, starts = fields["text"], fields["answer_start"]
        if not (pa.types.is_list(texts.type) and pa.types.is_list(starts.type)) or texts.null_count \
                or starts.null_count or len(kind) != 2:
            return False, None
        lengths = pc.list_value_length(texts)
        if not pc.all(pc.equal(lengths, pc.list_value_length(starts))).as_py():
            return False, None
        flat_texts, flat_starts, converted = texts.flatten(), starts.flatten(), False
    elif pa.types.is_list(kind) and (pa.types.is_struct(kind.value_type) or pa.types.is_null(kind.value_type)):
        if pa.types.is_null(kind.value_type):  # every row []: no answer anywhere
            flat_texts, flat_starts = pa.array([], pa.string()), pa.array([], pa.int64())
        else:
            names = [f.name for f in kind.value_type]
            if not {"text", "answer_start"} <= set(names):
                return False, None
            fields = dict(zip(names, arr.flatten().flatten(), strict=True))
            flat_texts, flat_starts = fields["text"], fields["answer_start"]
        converted = True
    else:
        return False, None
    if not _valid_answer_values(flat_texts, flat_starts):
        return False, None
    if not converted:
        return True, None
    offsets = pc.subtract(arr.offsets, arr.offsets[0])
    return True, pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(offsets, flat_texts), pa.ListArray.from_arrays(offsets, flat_starts.cast(pa.int32()))],
        names=["text", "answer_start"])


def _valid_answer_values(texts: pa.Array, starts: pa.Array) -> bool:
    """Every text a non-empty string and every start an integer >= 0 (no nulls)."""
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)) \
            or not pa.types.is_integer(starts.type) or texts.null_count or starts.null_count:
        return False
    return (len(texts) == 0 or pc.min(pc.utf8_length(texts)).as_py() > 0) and \
        (len(starts) == 0 or pc.min(starts).as_py() >= 0)


def _short(value: Any, limit: int = 60) -> str:
    kind = {str: "a string", dict: "an object", list: "a list", type(None): "missing (null)"}.get(
        type(value), f"a {type(value).__name__}")
    text = repr(value)
    return f"{kind} {text[:limit]}{'...' if len(text) > limit else ''}" if value is not None else kind
