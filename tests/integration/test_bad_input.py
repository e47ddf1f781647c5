"""Bad input, one table: every malformed config, dataset, shard, manifest and chart value ends in one clear
error (what, where, how to fix) with its exit code, no traceback, and nothing a later stage would take
for complete (no new ``_SUCCESS``, no ``_COMMITTED`` checkpoint, no trained model, no manifests printed).

The CLI runs in-process (click's runner): the cases cost milliseconds, not an interpreter start each.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner

from clitools import ROOT, job_file
from nlpjobs.cli import main
from nlpjobs.jobfile import load_job
from nlpjobs.tasks.base import TaskDataError
from nlpjobs.tasks.qa import QaTask

NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TINY = {"data": {"max_train_examples": 16, "max_eval_examples": 8},
        "train": {"max_steps": 1, "batch_size": 8, "eval_every": "never", "save_every": "never"}}


@dataclass
class Env:
    tmp: Path

    @property
    def store(self) -> Path:
        return self.tmp / "store"

    @property
    def raw(self) -> Path:
        return self.tmp / "raw"

    def job(self, **sections: object) -> str:
        return str(job_file(self.tmp, "jobs/local/ner.yaml", f"file://{self.store}", **{**TINY, **sections}))

    def files_job(self) -> str:
        return self.job(data={"source": f"files:{self.raw}", "max_train_examples": None, "max_eval_examples": None},
                        preprocess={"label_names": NER_LABELS})

    def rows(self, split: str, rows: list[dict] | str) -> None:
        self.raw.mkdir(parents=True, exist_ok=True)
        text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
        (self.raw / f"{split}.jsonl").write_text(text)

    def dataset(self) -> Path:
        [ds] = [p for p in (self.store / "datasets/ner").iterdir() if not p.name.startswith("_")]
        return ds

    def manifest(self) -> dict:
        return json.loads((self.dataset() / "manifest.json").read_text())

    def shards(self) -> list[Path]:
        return sorted(self.dataset().rglob("shard-*.arrow"))


def ner_rows(n: int) -> list[dict]:
    return [{"tokens": ["EU", "rejects", "German", "lamb"], "ner_tags": [3, 0, 7, 0]} for _ in range(n)]


def good_raw(env: Env) -> None:
    env.rows("train", ner_rows(8))
    env.rows("validation", ner_rows(4))


def edit_manifest(env: Env, change: Callable[[dict], None]) -> None:
    data = env.manifest()
    change(data)
    (env.dataset() / "manifest.json").write_text(json.dumps(data))


def head_with_3_labels(env: Env) -> str:
    from transformers import AutoConfig, AutoTokenizer

    from nlpjobs.models import resolve_model

    head = env.tmp / "head"
    config = AutoConfig.from_pretrained(resolve_model("offline:minilm"), num_labels=3,
                                        id2label={0: "O", 1: "B-X", 2: "I-X"}, label2id={"O": 0, "B-X": 1, "I-X": 2})
    config.architectures = ["BertForTokenClassification"]
    config.save_pretrained(head)
    AutoTokenizer.from_pretrained(resolve_model("offline:minilm")).save_pretrained(head)
    return str(head)


def preprocess_with(env: Env, model: str) -> None:
    result = CliRunner().invoke(main, ["preprocess", "-c", env.job(model={"name": model})])
    assert result.exit_code == 0, result.output


@dataclass
class Case:
    id: str
    command: Callable[[Env], list[str]]
    code: int
    says: tuple[str, ...]
    setup: Callable[[Env], None] | None = None
    needs_dataset: bool = False
    """Start from a committed tiny NER dataset (copied into the case's store)."""


def pre(*sets: str) -> Callable[[Env], list[str]]:
    return lambda env: ["preprocess", "-c", env.job(), *[a for s in sets for a in ("--set", s)]]


def train(env: Env) -> list[str]:
    return ["train", "-q", "-c", env.job()]


def files_pre(env: Env) -> list[str]:
    return ["preprocess", "-c", env.files_job()]


def submit_values(text: str) -> Callable[[Env], list[str]]:
    def command(env: Env) -> list[str]:
        values = env.tmp / "values.yaml"
        values.write_text(text)
        return ["submit", "ner", "-f", str(values), "--dry-run"]
    return command


def predict_cmd(*args: str, task: str = "ner") -> Callable[[Env], list[str]]:
    """`nlpjobs predict` of a preset on the case's store; ``{tmp}`` in an argument is the case's directory."""
    def command(env: Env) -> list[str]:
        job = env.job() if task == "ner" else str(job_file(env.tmp, f"jobs/local/{task}.yaml", f"file://{env.store}"))
        return ["predict", "-c", job, *[a.replace("{tmp}", str(env.tmp)) for a in args]]
    return command


def predict_file(name: str, text: str) -> Callable[[Env], None]:
    return lambda env: env.tmp.joinpath(name).write_text(text)


def storage_read_only_store(env: Env) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a 0o500 directory; tests/unit/test_storage_files.py checks the message")
    env.store.mkdir(mode=0o500)


PREDICT_QA = json.dumps({"question": "Who wrote it?", "context": "Ada wrote it."})


def ner_strings_pre(env: Env) -> list[str]:
    """preprocess of the files in env.raw, labels taken from the data (no preprocess.label_names)."""
    return ["preprocess", "-c", env.job(data={"source": f"files:{env.raw}", "max_train_examples": None,
                                              "max_eval_examples": None})]


def ner_rows_with(*rows: dict) -> Callable[[Env], None]:
    """Good string-tag rows in both splits, ``rows`` appended to the training split."""
    good = [{"tokens": ["Peter", "visited", "Oslo"], "ner_tags": ["B-PER", "O", "B-LOC"]}] * 3
    return lambda env: (env.rows("train", good + list(rows)), env.rows("validation", good))


QA_CONTEXT = "The night ferry leaves the harbour at eleven and reaches the islands at dawn."


def qa_pre(env: Env) -> list[str]:
    """preprocess of a qa job on the files in env.raw."""
    job = job_file(env.tmp, "jobs/local/qa.yaml", f"file://{env.store}", data={"source": f"files:{env.raw}"},
                   preprocess={"max_length": 64, "stride": 16}, train=TINY["train"])
    return ["preprocess", "-c", str(job)]


def qa_squad(train: Callable[[dict], None] | None = None, validation: Callable[[dict], None] | None = None,
             ) -> Callable[[Env], None]:
    """Nested SQuAD v2.0 files train.json and validation.json in env.raw, each first changed by its function."""
    def setup(env: Env) -> None:
        env.raw.mkdir(parents=True, exist_ok=True)
        for split, change in (("train", train), ("validation", validation)):
            qas = [{"id": "f1", "question": "When does the ferry leave?",
                    "answers": [{"text": "eleven", "answer_start": 38}]},
                   {"id": "f2", "question": "Who is the captain?", "answers": [], "is_impossible": True}]
            doc = {"version": "v2.0", "data": [{"title": "Ferry", "paragraphs": [{"context": QA_CONTEXT,
                                                                                 "qas": qas}]}]}
            if change:
                change(doc)
            (env.raw / f"{split}.json").write_text(json.dumps(doc, indent=1))
    return setup


def qa_first(doc: dict) -> dict:
    """The first question of a nested SQuAD document."""
    return doc["data"][0]["paragraphs"][0]["qas"][0]


def qa_rows(answers: object) -> Callable[[Env], None]:
    """JSON lines in both splits, the training row's answers given as ``answers``."""
    row = {"id": "a", "question": "When?", "context": QA_CONTEXT}
    good = {**row, "answers": {"text": ["eleven"], "answer_start": [38]}}
    return lambda env: (env.rows("train", [{**row, "answers": answers}]), env.rows("validation", [good]))


def seq2seq_pre(task: str, train: list, validation: list | None = None, *sets: str) -> Callable[[Env], list[str]]:
    """`preprocess` of a translation/summarization job on files: train.jsonl (and validation.jsonl) written here."""
    def command(env: Env) -> list[str]:
        env.rows("train", train)
        env.rows("validation", validation if validation is not None else train)
        data = {"source": f"files:{env.raw}", "eval_split": "validation", "max_train_examples": None,
                "max_eval_examples": None}
        pre = {"vocab_size": 100, **({"split_train_size": None} if task == "translation" else {"eval_sample": None})}
        job = job_file(env.tmp, f"jobs/local/{task}.yaml", f"file://{env.store}", data=data, preprocess=pre)
        return ["preprocess", "-c", str(job), *[a for s in sets for a in ("--set", s)]]
    return command


SEQ2SEQ_PAIRS = [{"translation": {"en": f"Open the file {i}", "fr": f"Ouvrir le fichier {i}"}} for i in range(6)]
SEQ2SEQ_DOCS = [{"body": f"This package provides tool {i}. It is free.", "title": f"the tool number {i}",
                 "language": "en"} for i in range(6)]


CASES = [
    # -- configs: exit 2, before any compute
    Case("config/unknown-section", pre("trian.epochs=1"), 2, ("trian: unknown setting", "Did you mean 'train'")),
    Case("config/unknown-key", pre("train.epoch=1"), 2, ("train.epoch", "Did you mean 'epochs'")),
    Case("config/wrong-type", pre("train.batch_size=sixteen"), 2, ("train.batch_size", "expected an integer")),
    Case("config/out-of-range", pre("train.learning_rate=-1"), 2, ("train.learning_rate", "must be > 0")),
    Case("config/zero-accumulation", pre("train.grad_accum=0"), 2, ("train.grad_accum", "must be > 0")),
    Case("config/bad-interval", pre("train.eval_every=sometimes"), 2, ("train.eval_every", "'epoch', 'never'")),
    Case("config/storage-scheme", pre("storage=ftp://x/y"), 2, ("storage", "expected file://<dir> or s3://")),
    Case("config/deepspeed-offload", pre("deepspeed.enabled=true", "deepspeed.offload_params=true"), 2,
         ("deepspeed.offload_params", "needs zero_stage 3")),
    Case("config/set-syntax", pre("trainepochs"), 2, ("--set 'trainepochs'", "expected key=value")),
    Case("config/unknown-task", pre("task=summarise"), 2, ("unknown task 'summarise'", "Known tasks")),
    Case("config/run-name", pre("name=../escape"), 2, ("name", "may not contain '/'")),
    Case("config/unknown-offline-model", pre("model.name=offline:nosuchmodel"), 2,
         ("model.name", "unknown offline model 'nosuchmodel'")),
    Case("config/model-empty-dir", lambda env: (env.tmp.joinpath("empty-model").mkdir(exist_ok=True),
                                                pre(f"model.name={env.tmp / 'empty-model'}")(env))[1], 2,
         ("model.name", "is an empty directory", "save_pretrained")),
    Case("config/model-missing-dir", pre("model.name=/nonexistent/model"), 2,
         ("model.name: no such directory /nonexistent/model",)),
    Case("config/model-not-loadable-from-the-hub", pre("model.name=nlpjobs-tests/no-such-model"), 2,
         ("model.name", "'nlpjobs-tests/no-such-model'", "Hugging Face Hub")),
    Case("config/unknown-offline-corpus", pre("data.source=offline:nosuchcorpus"), 2,
         ("data.source", "unknown offline corpus 'nosuchcorpus'")),
    Case("config/missing-file", lambda env: ["train", "-c", "jobs/local/nre.yaml"], 2, ("no such file",)),
    Case("config/yaml-syntax", lambda env: ["preprocess", "-c", str(_broken_yaml(env))], 2, ("YAML",)),
    Case("config/duplicate-section", lambda env: ["preprocess", "-c", str(_job_text(
        env, "task: ner\ntrain:\n  epochs: 1\ndata:\n  source: offline:conll2003\ntrain:\n  batch_size: 4\n"))], 2,
         ("duplicate key 'train' on line 6 (first on line 2)",)),
    Case("config/duplicate-key", lambda env: ["preprocess", "-c", str(_job_text(
        env, "task: ner\ntrain:\n  epochs: 1\n  epochs: 2\n"))], 2, ("duplicate key 'epochs' on line 4",)),
    Case("config/not-utf8", lambda env: ["preprocess", "-c", str(_job_text(env, b"task: ner\n# caf\xe9\n"))], 2,
         ("not UTF-8 text (byte 0xe9 on line 2)",)),
    # -- raw datasets: exit 3, nothing committed
    Case("dataset/missing-column", files_pre, 3, ("lacks required column(s) ['tokens']", "'words'", "data.columns"),
         setup=lambda env: (env.rows("train", [{"words": ["a"], "ner_tags": [0]}]),
                            env.rows("validation", [{"words": ["a"], "ner_tags": [0]}]))),
    Case("dataset/empty-split", files_pre, 3, ("empty", "validation"),
         setup=lambda env: (env.rows("train", ner_rows(4)), env.rows("validation", ""))),
    Case("dataset/label-outside-space", files_pre, 3, ("outside the label space 0..8",),
         setup=lambda env: (env.rows("train", ner_rows(3) + [{"tokens": ["x"], "ner_tags": [11]}]),
                            env.rows("validation", ner_rows(2)))),
    Case("dataset/length-mismatch", files_pre, 3, ("ner_tags", "tokens"),
         setup=lambda env: (env.rows("train", ner_rows(3) + [{"tokens": ["a", "b"], "ner_tags": [0]}]),
                            env.rows("validation", ner_rows(2)))),
    Case("dataset/not-utf8", files_pre, 3, ("split 'train'", "is not UTF-8 text (byte 0xe9", "line 2"),
         setup=lambda env: (env.rows("train", json.dumps(ner_rows(1)[0]) + '\n{"tokens": ["caf\xe9"], "ner_tags": [0]}\n'),
                            env.raw.joinpath("train.jsonl").write_bytes(
                                env.raw.joinpath("train.jsonl").read_bytes().replace("\xe9".encode(), b"\xe9")),
                            env.rows("validation", ner_rows(2)))),
    Case("dataset/blank-lines-only", files_pre, 3, ("split 'validation'", "holds only blank lines"),
         setup=lambda env: (env.rows("train", ner_rows(4)), env.rows("validation", "\n\n   \n"))),
    Case("dataset/missing-split-file", files_pre, 2, ("data.source: no validation.jsonl",),
         setup=lambda env: env.rows("train", ner_rows(4))),
    Case("dataset/not-json-lines", files_pre, 3, ("split 'train'", "train.jsonl cannot be parsed as jsonl"),
         setup=lambda env: (env.rows("train", '{"tokens": ["a"], "ner_tags": [0]}\n{not json\n'),
                            env.rows("validation", ner_rows(2)))),
    # -- committed shards and manifests: exit 3 before training, no run output
    Case("shards/truncated", train, 3, ("corrupted", "rerun `nlpjobs preprocess`"), needs_dataset=True,
         setup=lambda env: env.shards()[0].write_bytes(env.shards()[0].read_bytes()[:-10])),
    Case("shards/missing", train, 3, ("is missing",), needs_dataset=True,
         setup=lambda env: env.shards()[0].unlink()),
    Case("shards/no-success-marker", train, 3, ("incomplete (no _SUCCESS marker)",), needs_dataset=True,
         setup=lambda env: (env.dataset() / "_SUCCESS").unlink()),
    Case("manifest/not-json", train, 3, ("manifest.json", "corrupted"), needs_dataset=True,
         setup=lambda env: (env.dataset() / "manifest.json").write_text("{not json")),
    Case("manifest/unknown-format", train, 3, ("unknown manifest format 99",), needs_dataset=True,
         setup=lambda env: edit_manifest(env, lambda m: m.update(format=99))),
    Case("manifest/row-count", train, 3, ("rows, manifest.json says",), needs_dataset=True,
         setup=lambda env: edit_manifest(env, lambda m: m["splits"]["train"]["shards"][0].update(
             rows=m["splits"]["train"]["shards"][0]["rows"] + 1))),
    Case("model/head-label-count", lambda env: ["train", "-q", "-c", env.job(model={"name": str(env.tmp / "head")})],
         3, ("head with 3 labels", "dataset has 9"), setup=lambda env: preprocess_with(env, head_with_3_labels(env))),
    # -- chart values: exit 6 from `submit --dry-run`, no manifests printed
    Case("chart/unknown-key", submit_values("nodse: 2\n"), 6, ("nodse",)),
    Case("chart/wrong-type", submit_values("nodes: two\n"), 6, ("nodes",)),
    Case("chart/zero-nodes", submit_values("nodes: 0\n"), 6, ("nodes",)),
    Case("chart/negative-grace", submit_values("job:\n  terminationGracePeriodSeconds: -5\n"), 6,
         ("terminationGracePeriodSeconds",)),
    # -- qa data formats (SQuAD JSON, answers, ids)
    Case("qa/squad-json-without-data", qa_pre, 3, ("split 'train'", 'train.json has no "data" list at the top level',
                                                   'a SQuAD file is {"version": ..., "data": [{"title"'),
         setup=qa_squad(train=lambda doc: doc.update(articles=doc.pop("data")))),
    Case("qa/answer-start-not-an-integer", qa_pre, 3,
         ("validation.json: data[0].paragraphs[0].qas[0] (id 'f1')", "answer_start '38', not an integer >= 0"),
         setup=qa_squad(validation=lambda doc: qa_first(doc)["answers"][0].update(answer_start="38"))),
    Case("qa/answers-as-a-string", qa_pre, 3, ("split 'train', id 'a': answers is a string 'eleven'",
                                               'answers must be a list of {"text": str, "answer_start": int}'),
         setup=qa_rows("eleven")),
    Case("qa/duplicate-ids", qa_pre, 3, ("split 'validation' has 1 question id(s) used more than once",
                                         "'f1', 2 times", "renumber the duplicates"),
         setup=qa_squad(validation=lambda doc: doc["data"][0]["paragraphs"][0]["qas"].append(
             {**qa_first(doc), "question": "At what time does it leave?"}))),
    Case("qa/answer-outside-its-context", qa_pre, 3, ("1 of 2 training examples", "id 'f1'", "at [500]",
                                                      "context of 77 characters", "preprocess.on_bad_answer=skip"),
         setup=qa_squad(train=lambda doc: qa_first(doc)["answers"][0].update(answer_start=500))),
    Case("qa/empty-question", qa_pre, 3,
         ("train.json: data[0].paragraphs[0].qas[0] (id 'f1') has no \"question\" text",),
         setup=qa_squad(train=lambda doc: qa_first(doc).update(question="  "))),
    Case("qa/paragraph-without-context", qa_pre, 3, ('data[0].paragraphs[0] has no "context" text',),
         setup=qa_squad(train=lambda doc: doc["data"][0]["paragraphs"][0].pop("context"))),
    Case("qa/unanswerable-with-answers", qa_pre, 3, ('(id \'f1\') has "is_impossible": true and 1 answer(s)',
                                                     '"plausible_answers"'),
         setup=qa_squad(train=lambda doc: qa_first(doc).update(is_impossible=True))),
    # -- ner tags (string tags, label lists)
    Case("ner/tag-not-in-label-names", files_pre, 3,
         ("split 'train' has tag(s) ['B-CITY'] not in preprocess.label_names", "leave preprocess.label_names out"),
         setup=ner_rows_with({"tokens": ["Oslo"], "ner_tags": ["B-CITY"]})),
    Case("ner/mixed-int-and-string-tags", ner_strings_pre, 3,
         ("split 'train' mixes string and integer tags", "row 0: 'B-PER', row 3: 0", "use one kind"),
         setup=ner_rows_with({"tokens": ["Oslo"], "ner_tags": [0]})),
    Case("ner/string-tags-in-one-split-only", ner_strings_pre, 3,
         ("split 'train' has string tags but split 'validation' integer ids",),
         setup=lambda env: (ner_rows_with()(env), env.rows("validation", ner_rows(2)))),
    Case("ner/tags-a-string-not-a-list", ner_strings_pre, 3,
         ("split 'train': ner_tags in row 3 is the string 'B-LOC O', not a list", '["B-PER", "I-PER", "O"]'),
         setup=ner_rows_with({"tokens": ["Oslo", "today"], "ner_tags": "B-LOC O"})),
    Case("ner/tokens-not-strings", ner_strings_pre, 3,
         ("split 'train': tokens of row 0 has 7 at position 0", "as strings"),
         setup=lambda env: (env.rows("train", [{"tokens": [7, 8], "ner_tags": ["O", "O"]}]),
                            env.rows("validation", [{"tokens": ["a"], "ner_tags": ["O"]}]))),
    Case("ner/tag-a-dict", ner_strings_pre, 3, ("ner_tags of row 3 has {'tag': 'B-LOC'}", "not a tag"),
         setup=ner_rows_with({"tokens": ["Oslo"], "ner_tags": [{"tag": "B-LOC"}]})),
    Case("ner/null-tags", ner_strings_pre, 3, ("split 'train': row 3 has no ner_tags (null)",),
         setup=ner_rows_with({"tokens": ["Oslo"], "ner_tags": None})),
    Case("ner/null-tag-in-a-list", ner_strings_pre, 3, ("ner_tags of row 3 has None at position 1", "a null tag"),
         setup=ner_rows_with({"tokens": ["Oslo", "today"], "ner_tags": ["B-LOC", None]})),
    Case("ner/iobes-refused", ner_strings_pre, 3, ("has the tag 'S-LOC', not of the form", "IOBES/BILOU"),
         setup=ner_rows_with({"tokens": ["Oslo"], "ner_tags": ["S-LOC"]})),
    Case("ner/tag-without-prefix", ner_strings_pre, 3, ("has the tag 'LOC'", "prefix them with I-"),
         setup=ner_rows_with({"tokens": ["Oslo"], "ner_tags": ["LOC"]})),
    Case("ner/label-names-not-iob", pre("preprocess.label_names=[O,PER,LOC]"), 2,
         ("preprocess.label_names: 'PER' is not a tag name",)),
    # -- seq2seq data (translation, summarization)
    Case("seq2seq/translation-not-an-object", seq2seq_pre("translation", [{"translation": "Open the file"}] * 4), 3,
         ("split 'train' row 0: the translation column holds a string ('Open the file')",
          'expected an object {"en": "...", "fr": "..."}', "data.columns.translation")),
    Case("seq2seq/translation-source-key-missing", seq2seq_pre(
        "translation", [{"translation": {"de": "Datei öffnen", "fr": "Ouvrir le fichier"}}] * 4), 3,
         ("has languages ['de', 'fr']", "not 'en' and 'fr'", "preprocess.source_lang/target_lang")),
    Case("seq2seq/translation-pair-not-in-data", seq2seq_pre("translation", SEQ2SEQ_PAIRS, None,
                                                             "preprocess.target_lang=de"), 3,
         ("has languages ['en', 'fr']", "not 'en' and 'de'")),
    Case("seq2seq/translation-text-a-number", seq2seq_pre(
        "translation", [*SEQ2SEQ_PAIRS, {"translation": {"en": 5, "fr": "Cinq"}}], SEQ2SEQ_PAIRS), 3,
         ("split 'train' row 6 {'en': 5, 'fr': 'Cinq'}: the 'en' text is a number (5), expected text",)),
    Case("seq2seq/translation-all-pairs-empty", seq2seq_pre(
        "translation", [{"translation": {"en": " ", "fr": ""}}, {"translation": {"en": "Open", "fr": None}}],
        SEQ2SEQ_PAIRS), 3, ("split 'train' has no pair left to train on: all 2 rows lack a non-empty 'en' or 'fr'",)),
    Case("seq2seq/translation-same-language", seq2seq_pre("translation", SEQ2SEQ_PAIRS, None,
                                                          "preprocess.target_lang=en"), 2,
         ("preprocess.source_lang/target_lang: must be two different language keys",)),
    Case("seq2seq/summarization-body-a-number", seq2seq_pre(
        "summarization", [*SEQ2SEQ_DOCS, {"body": 12345, "title": "a numbered package", "language": "en"}],
        SEQ2SEQ_DOCS), 3, ("split 'train' row 6: the body is a number (12345), expected text",)),
    Case("seq2seq/summarization-bodies-null", seq2seq_pre(
        "summarization", SEQ2SEQ_DOCS, [{"body": None, "title": "a fine long title", "language": "en"}] * 3), 3,
         ("split 'eval' has no pair left to evaluate on", "lack a non-empty body or title")),
    Case("seq2seq/summarization-no-title-column", seq2seq_pre(
        "summarization", [{"body": d["body"], "summary": d["title"]} for d in SEQ2SEQ_DOCS]), 3,
         ("lacks required column(s) ['title']", "data.columns")),
    # -- predict inputs and storage permissions
    Case("predict/qa-input-not-json", predict_cmd("-i", '{"question": "Who wrote it?"', task="qa"), 2,
         ("bad input: --input 1", "looks like JSON but does not parse")),
    Case("predict/qa-input-without-context", predict_cmd("-i", '{"question": "Who wrote it?"}', task="qa"), 2,
         ("--input 1: qa needs a JSON object", "lacks ['context']")),
    Case("predict/qa-input-plain-text", predict_cmd("-i", PREDICT_QA, "-i", "Who wrote it?", task="qa"), 2,
         ("--input 2: qa needs a JSON object",)),
    Case("predict/empty-input", predict_cmd("-i", ""), 2, ("--input 1: ner needs non-empty text",)),
    Case("predict/input-file-line-not-json", predict_cmd("--input-file", "{tmp}/in.jsonl"), 2,
         ("in.jsonl line 2: not a JSON value",), setup=predict_file("in.jsonl", '"EU rejects German lamb"\n{x\n')),
    Case("predict/no-trained-model", predict_cmd("-i", "EU rejects German lamb"), 2,
         ("no trained model at", "run `nlpjobs train`")),
    Case("predict/out-unknown-scheme", predict_cmd("-i", "EU", "--out", "gs://bucket/p.jsonl"), 2,
         ("--out 'gs://bucket/p.jsonl'", "unknown storage scheme 'gs'")),
    Case("predict/out-under-a-file", predict_cmd("-i", "EU", "--out", "{tmp}/afile/p.jsonl"), 4,
         ("storage:", "afile is a file, not a directory"), setup=predict_file("afile", "x")),
    Case("storage/store-under-a-file", lambda env: pre(f"storage=file://{env.tmp}/afile/store")(env), 4,
         ("storage:", "afile is a file, not a directory"), setup=predict_file("afile", "x")),
    Case("storage/read-only-local-store", pre(), 4,
         ("storage: permission denied writing", "owner and mode of the directory", "the process runs as uid"),
         setup=storage_read_only_store),
    # -- job settings and stage order found by use
    Case("config/negative-seed", pre("train.seed=-1"), 2, ("train.seed: got -1", "between 0 and 2**32 - 1")),
    Case("config/s3-without-bucket", pre("storage=s3://"), 2, ("storage", "names no bucket", "s3://<bucket>/<prefix>")),
    Case("config/s3-invalid-bucket", pre("storage=s3://My_Runs/nlpjobs"), 2,
         ("'My_Runs'", "not a valid S3 bucket name")),
    Case("config/empty-job-file", lambda env: ["preprocess", "-c", str(_job_text(env, ""))], 2, ("task: missing",)),
    Case("config/job-file-is-a-list", lambda env: ["preprocess", "-c", str(_job_text(env, "- task: ner\n"))], 2,
         ("the top level must be a mapping of settings",)),
    Case("config/section-is-a-string", lambda env: ["preprocess", "-c", str(_job_text(
        env, "task: ner\ndata: offline:conll2003\n"))], 2, ("data: expected a mapping of settings",)),
    Case("config/columns-not-a-mapping", pre("data.columns=tokens"), 2, ("data.columns: expected a mapping",)),
    Case("stage/evaluate-before-preprocess", lambda env: ["evaluate", "-q", "-c", env.job()], 3,
         ("no dataset at", "Run `nlpjobs preprocess` with the same config first")),
    Case("stage/evaluate-before-train", lambda env: ["evaluate", "-q", "-c", env.job()], 2,
         ("no trained model at", "run `nlpjobs train`"), needs_dataset=True),
    Case("stage/wait-times-out", lambda env: ["wait", "--for", "model", "--timeout", "1", "--interval", "0.2",
                                              "-c", env.job()], 5, ("model",), needs_dataset=True),
]


def _job_text(env: Env, text: str | bytes) -> Path:
    path = env.tmp / "job.yaml"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _broken_yaml(env: Env) -> Path:
    path = env.tmp / "broken.yaml"
    path.write_text("task: ner\ntrain:\n  epochs: [1\n")
    return path


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny committed NER dataset, copied into the store of every case that starts from one."""
    env = Env(tmp_path_factory.mktemp("committed"))
    result = CliRunner().invoke(main, ["preprocess", "-c", env.job()])
    assert result.exit_code == 0, result.output
    return env.store


def _complete_markers(store: Path) -> set[str]:
    if not store.exists():
        return set()
    names = ("_SUCCESS", "_COMMITTED", "model.safetensors", "metrics.json")
    return {str(p.relative_to(store)) for name in names for p in store.rglob(name)}


def test_the_table_has_20_distinct_cases_in_every_family() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 20
    assert {c.id.split("/")[0] for c in CASES} >= {"config", "dataset", "shards", "manifest", "chart"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, committed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = Env(tmp_path)
    if case.id.startswith("chart/"):
        from nlpjobs.k8s.helm import helm_binary

        monkeypatch.setenv("NLPJOBS_HELM", str(helm_binary()))
    if case.needs_dataset:
        shutil.copytree(committed, env.store)
    if case.setup:
        case.setup(env)
    before = _complete_markers(env.store)
    if case.needs_dataset or case.setup:  # what the setup committed may stay; nothing new may count as done
        before = {m for m in before if m.startswith("datasets/")}
    result = CliRunner().invoke(main, case.command(env))
    errors = result.stderr
    assert result.exit_code == case.code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    for text in case.says:
        assert text in errors, errors
    assert sum(line.startswith("error: ") for line in errors.splitlines()) == 1 and "Traceback" not in result.output
    assert _complete_markers(env.store) <= before, "a failed stage left output that looks complete"
    if case.id.startswith("chart/"):
        assert "kind: Job" not in result.stdout


def test_qa_answer_start_mismatch_fails_or_skips() -> None:
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    context = "The quick brown fox jumps over the lazy dog near the river bank."
    rows = {"id": ["a", "b", "c"], "context": [context] * 3, "question": ["What jumps?", "Where?", "Which dog?"],
            "answers": [{"text": ["brown fox"], "answer_start": [10]},
                        {"text": ["river bank"], "answer_start": [40]},   # wrong: the text starts at 53
                        {"text": ["lazy dog"], "answer_start": [35]}]}
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "eval": datasets.Dataset.from_dict(rows)})
    tok = AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))
    job = load_job(ROOT / "jobs/local/qa.yaml", ["preprocess.max_length=64", "preprocess.stride=16"])
    with pytest.raises(TaskDataError) as exc:
        QaTask().prepare(job, raw, tok)
    assert "1 of 3 training examples" in str(exc.value) and "'b'" in str(exc.value)
    assert "preprocess.on_bad_answer=skip" in str(exc.value)
    job.preprocess.on_bad_answer = "skip"  # type: ignore[attr-defined]
    prepared = QaTask().prepare(job, raw, tok)
    assert prepared.info["skipped_bad_answers"] == 1
    assert len(prepared.splits["train"]) == 2 and len(prepared.splits["eval_examples"]) == 3


def test_unreachable_object_store_names_the_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fast_storage_retries: None) -> None:
    from nlpjobs import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage.reset()
    try:
        env = Env(tmp_path)
        job = job_file(tmp_path, "jobs/local/ner.yaml", "s3://nowhere/x", **TINY)
        result = CliRunner().invoke(main, ["preprocess", "-c", str(job)])
        assert result.exit_code == 4, result.output
        assert "http://127.0.0.1:9" in result.stderr and "unreachable after 3 attempts" in result.stderr
        assert not env.store.exists()
    finally:
        storage.reset()


def test_a_rerun_of_preprocess_repairs_a_broken_dataset(tmp_path: Path, committed: Path) -> None:
    env = Env(tmp_path)
    shutil.copytree(committed, env.store)
    (env.dataset() / "_SUCCESS").unlink()
    env.shards()[0].unlink()
    result = CliRunner().invoke(main, ["preprocess", "-c", env.job()])
    assert result.exit_code == 0 and "dataset written" in result.stdout, result.output
    assert (env.dataset() / "_SUCCESS").exists()
    assert env.manifest()["splits"]["train"]["rows"] == 16
