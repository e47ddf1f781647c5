"""``codeparrot-local``: real data-science Python files in the shape of ``huggingface-course/codeparrot-ds``.

The course keeps the GitHub Python files of ``transformersbook/codeparrot`` that mention
pandas, sklearn, matplotlib or seaborn (a plain substring test). Offline, the same filter runs over
the ``.py`` members of five pinned data-science wheels (read with zipfile, never installed), whose
sources are full of exactly the code the course wants the model to complete.

Rows: ``repo_name`` (the project's GitHub ``owner/repo`` from the wheel's METADATA, else the package
name), ``path`` (inside the wheel), ``copies``, ``size`` (bytes), ``content``, ``license`` (from
METADATA; ``""`` when it declares none), all strings as on the Hub. Decisions, logged at build time:

- Files that are empty (whitespace only) or not UTF-8 are skipped and counted; they carry no text to
  train on and the Hub corpus holds decoded text only.
- Exact duplicates (same bytes) are kept once, with ``copies`` = how many times they occurred, so no
  file can sit in both train and valid.
- ``valid`` is a seeded random 1.5% of the kept files (at least 1); ``train`` is the rest.
"""

from __future__ import annotations

import email.parser
import hashlib
import logging
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from nlpjobs.data import offline
from nlpjobs.data.offline import Corpus, Rows

log = logging.getLogger(__name__)

DS_KEYWORDS = ["pandas", "sklearn", "matplotlib", "seaborn"]
"""The course's data-science filter (L4038)."""
PACKAGES = ("pandas==2.2.3", "scikit-learn==1.5.2", "matplotlib==3.9.2", "seaborn==0.13.2",
            "statsmodels==0.14.4")
"""Pinned wheels the corpus is read from."""
WHEEL_TAGS = ("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
              "--implementation", "cp")
"""Always the same wheel files, whatever the host, so the corpus is identical everywhere."""
VALID_FRACTION = 0.015
SPLIT_SEED = 42
COLUMNS = ("repo_name", "path", "copies", "size", "content", "license")


def any_keyword_in_string(string: str, keywords: list[str]) -> bool:
    """The course's filter (L4028): True when any keyword occurs in ``string`` (plain substring test)."""
    return any(keyword in string for keyword in keywords)


@dataclass
class BuildStats:
    """Counts of one corpus build (logged, and returned by :func:`collect_files`)."""

    python_files: int = 0
    empty: int = 0
    not_utf8: int = 0
    no_keyword: int = 0
    duplicates: int = 0
    kept: int = 0
    kept_bytes: int = 0
    per_package: dict[str, int] = field(default_factory=dict)


def _metadata(wheel: zipfile.ZipFile) -> Any:
    member = next(m for m in wheel.namelist() if m.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(wheel.read(member).decode("utf-8", "replace"), headersonly=True)


def repo_and_license(wheel: zipfile.ZipFile) -> tuple[str, str]:
    """(GitHub ``owner/repo`` or the package name, license) from the wheel's METADATA."""
    meta = _metadata(wheel)
    repo = str(meta.get("Name", "")).lower()
    for value in meta.get_all("Project-URL") or []:
        match = re.search(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?$", str(value).split(",", 1)[-1].strip())
        if match:
            repo = match.group(1)
            break
    license_ = str(meta.get("License-Expression") or "")
    if not license_:
        classifiers = [str(c).rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or []
                       if str(c).startswith("License :: ")]
        license_ = classifiers[0] if classifiers else str(meta.get("License") or "").split("\n", 1)[0].strip()
    return repo, license_


def collect_files(wheels: list[Path], keywords: list[str] = DS_KEYWORDS) -> tuple[list[dict[str, str]], BuildStats]:
    """Rows of every ``.py`` member that is UTF-8, non-empty and passes the keyword filter (deduplicated)."""
    stats = BuildStats()
    rows: list[dict[str, str]] = []
    by_hash: dict[str, dict[str, str]] = {}
    for path in wheels:
        with zipfile.ZipFile(path) as wheel:
            repo, license_ = repo_and_license(wheel)
            kept_before = stats.kept
            for member in sorted(m for m in wheel.namelist() if m.endswith(".py")):
                stats.python_files += 1
                data = wheel.read(member)
                if not data.strip():
                    stats.empty += 1
                    continue
                try:
                    content = data.decode("utf-8")
                except UnicodeDecodeError:
                    stats.not_utf8 += 1
                    continue
                if not any_keyword_in_string(content, keywords):
                    stats.no_keyword += 1
                    continue
                digest = hashlib.sha1(data).hexdigest()
                if digest in by_hash:
                    stats.duplicates += 1
                    first = by_hash[digest]
                    first["copies"] = str(int(first["copies"]) + 1)
                    continue
                row = {"repo_name": repo, "path": member, "copies": "1", "size": str(len(data)),
                       "content": content, "license": license_}
                by_hash[digest] = row
                rows.append(row)
                stats.kept += 1
                stats.kept_bytes += len(data)
            stats.per_package[repo] = stats.kept - kept_before
    return rows, stats


def split_rows(rows: list[dict[str, str]], fraction: float = VALID_FRACTION,
               seed: int = SPLIT_SEED) -> dict[str, list[dict[str, str]]]:
    """Seeded train/valid split: a random ``fraction`` of the rows (at least one) goes to valid."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(rows) * fraction))
    valid = set(order[:n_valid])
    return {"train": [r for i, r in enumerate(rows) if i not in valid],
            "valid": [r for i, r in enumerate(rows) if i in valid]}


def download_wheels(dest: Path, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    return offline.download_wheels(packages, dest, WHEEL_TAGS)


def build(workdir: Path) -> Rows:
    rows, stats = collect_files(download_wheels(workdir))
    log.info("codeparrot-local: %d .py files in %d wheels; skipped %d empty, %d not UTF-8, %d without a "
             "data-science keyword, %d exact duplicates; kept %d files (%.1f MB): %s",
             stats.python_files, len(PACKAGES), stats.empty, stats.not_utf8, stats.no_keyword, stats.duplicates,
             stats.kept, stats.kept_bytes / 1e6, stats.per_package)
    splits = split_rows(rows)
    log.info("codeparrot-local: train %d files, valid %d files (seed %d)", len(splits["train"]),
             len(splits["valid"]), SPLIT_SEED)
    return splits


def features() -> datasets.Features:
    return datasets.Features({c: datasets.Value("string") for c in COLUMNS})


CORPUS = Corpus(
    "Python files mentioning pandas/sklearn/matplotlib/seaborn (the course's codeparrot-ds filter) from the "
    "pandas, scikit-learn, matplotlib, seaborn and statsmodels wheels; splits train/valid",
    ("train", "valid"), ", ".join(PACKAGES), build, features)
