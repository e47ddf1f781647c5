"""Debian package descriptions as bilingual summarization pairs (the offline stand-in for the
course's product-review corpus, which has been withdrawn).

Every Debian package has a one-line synopsis and a long description; apt's ``Translation-en`` and
``Translation-es`` index files hold them (English for every package of ``main``, Spanish for the
packages the Debian Description Translation Project covers). Here the long description is the
document (``body``) and the synopsis its summary (``title``): the course's ``review_body`` →
``review_title`` shape, in English and Spanish like ``amazon_reviews_multi`` en/es.

The build runs ``apt-get update -o Acquire::Languages=en,es`` into a *private* lists directory inside
the build's scratch directory (the machine's sources, but neither its ``/var/lib/apt/lists`` nor its
configuration are touched, and no apt lock is shared with other apt runs), then reads the
``*_i18n_Translation-{en,es}*`` files with ``apt-helper cat-file`` (any compression). It needs the
machine's Debian mirror and root (apt refuses ``update`` otherwise).

Rows: ``{"id": "<package>:<lang>", "language": "en"|"es", "body": <long description>, "title":
<synopsis>}``. The long description is plain text: a continuation line ``" ."`` separates paragraphs
(``"\\n\\n"``), verbatim lines (two leading spaces: lists, code) keep their own line, other lines of
one paragraph are joined with a space. Packages whose long description is empty are left out.
Splits are drawn by *package* (seeded), so the English and Spanish descriptions of one package are
always in the same split: ``validation`` and ``test`` hold 5% of the packages each.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from nlpjobs.data.offline import Corpus

LANGUAGES = ("en", "es")
SEED = 42
HELD_OUT_FRACTION = 0.05
"""Of the packages, per held-out split (validation, test)."""
APT_HELPER = "/usr/lib/apt/apt-helper"


# --- apt in a private state directory (shared with the kde4 corpus) ---------------------------------

def apt_options(state: Path) -> list[str]:
    """``-o`` options making apt keep its lists (and no binary cache) under ``state``, away from the
    machine's own ``/var/lib/apt/lists``; sources and keyrings stay the machine's."""
    lists = state / "lists"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    return ["-o", f"Dir::State::Lists={lists}", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
            "-o", "APT::Sandbox::User=root"]


def run_apt(args: Sequence[str], *, cwd: Path | None = None, what: str) -> str:
    """Run an apt command; raise a RuntimeError naming the command and apt's own message on failure."""
    exe = shutil.which(args[0])
    if exe is None:
        raise RuntimeError(f"{what}: {args[0]} not found; this corpus is built with Debian's apt "
                           "(a Debian/Ubuntu machine with apt and a reachable Debian mirror).")
    try:
        proc = subprocess.run([exe, *args[1:]], cwd=cwd, check=True, capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip()[-1500:]
        hint = "" if os.geteuid() == 0 else " (not running as root: apt-get update needs root)"
        raise RuntimeError(f"{what} failed (exit {exc.returncode}): {' '.join(args[:2])} ...{hint}; the "
                           f"machine's Debian mirror (apt sources) must be reachable.\n{tail}") from exc
    # apt-get update exits 0 even when some index could not be fetched ("W: Failed to fetch ...").
    failed = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "W: Failed", "Err:"))]
    if failed:
        raise RuntimeError(f"{what}: {' '.join(args[:2])} reported errors; the machine's Debian mirror "
                           "(apt sources) must be reachable:\n" + "\n".join(failed[-10:]))
    return proc.stdout


def apt_update(state: Path, languages: Iterable[str] = ()) -> Path:
    """``apt-get update`` into ``state`` (see :func:`apt_options`), fetching the Translation index files
    of ``languages`` too; return the lists directory."""
    langs = ",".join(languages) or "none"
    run_apt(["apt-get", "update", "-q", *apt_options(state), "-o", f"Acquire::Languages={langs}"],
            what="apt-get update")
    return state / "lists"


def cat_index(path: Path) -> str:
    """The text of an apt index file, whatever its compression (lz4, gz, xz or none)."""
    if path.suffix not in {".lz4", ".gz", ".xz", ".bz2", ".zst", ".lzma"}:
        return path.read_text(encoding="utf-8", errors="replace")
    if not Path(APT_HELPER).exists():
        raise RuntimeError(f"{APT_HELPER} not found: it is needed to read the compressed index {path.name}")
    proc = subprocess.run([APT_HELPER, "cat-file", str(path)], check=True, capture_output=True)
    return proc.stdout.decode("utf-8", errors="replace")


# --- Translation-<lang> parsing ---------------------------------------------------------------------

def stanzas(text: str) -> Iterator[dict[str, str]]:
    """RFC 822 stanzas of an apt index; continuation lines keep their leading space, joined by "\\n"."""
    fields: dict[str, str] = {}
    key = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t":
            if key is None:
                raise ValueError(f"continuation line before any field: {line!r}")
            fields[key] += "\n" + line
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return


def long_description(lines: Sequence[str]) -> str:
    """Plain text of a Debian long description (its continuation lines, leading space included):
    ``" ."`` ends a paragraph, lines starting with two spaces are verbatim lines, others are joined."""
    paragraphs: list[list[str]] = [[]]
    verbatim_prev = False
    for raw in lines:
        line = raw[1:] if raw[:1] in " \t" else raw
        if line.strip() == ".":
            paragraphs.append([])
            verbatim_prev = False
            continue
        verbatim = line.startswith((" ", "\t"))
        text = line.strip()
        if not text:
            continue
        para = paragraphs[-1]
        if para and not verbatim and not verbatim_prev:
            para[-1] += " " + text
        else:
            para.append(text)
        verbatim_prev = verbatim
    return "\n\n".join("\n".join(p) for p in paragraphs if p)


def parse_translation(text: str, language: str) -> Iterator[dict[str, Any]]:
    """Rows ``{id, language, body, title}`` of one ``Translation-<language>`` index; entries without a
    long description are skipped."""
    field = f"Description-{language}"
    for st in stanzas(text):
        package, desc = st.get("Package"), st.get(field)
        if not package or desc is None:
            continue
        title, *rest = desc.split("\n")
        body = long_description(rest)
        if title.strip() and body:
            yield {"id": f"{package}:{language}", "language": language, "body": body, "title": title.strip()}


def translation_files(lists: Path, language: str) -> list[Path]:
    """The ``Translation-<language>`` files apt fetched, biggest (the main suite) first."""
    pattern = re.compile(rf"_i18n_Translation-{re.escape(language)}(\.[a-z0-9]+)?$")
    files = [p for p in lists.iterdir() if pattern.search(p.name)]
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def split_by_package(rows: list[dict[str, Any]], seed: int = SEED,
                     held_out: float = HELD_OUT_FRACTION) -> dict[str, list[dict[str, Any]]]:
    """Seeded train/validation/test split over *packages*: a package's languages share one split."""
    packages = sorted({r["id"].rsplit(":", 1)[0] for r in rows})
    random.Random(seed).shuffle(packages)
    n = round(len(packages) * held_out)
    where = {p: "validation" for p in packages[:n]} | {p: "test" for p in packages[n:2 * n]}
    out: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        out[where.get(row["id"].rsplit(":", 1)[0], "train")].append(row)
    return out


def rows_from_lists(lists: Path, languages: Sequence[str] = LANGUAGES) -> list[dict[str, Any]]:
    """One row per (package, language) over the fetched Translation files (first file wins)."""
    rows: list[dict[str, Any]] = []
    for lang in languages:
        files = translation_files(lists, lang)
        if not files:
            raise RuntimeError(f"apt fetched no Translation-{lang} index into {lists}; is the machine's "
                               "Debian mirror serving i18n files (Acquire::Languages)?")
        seen: set[str] = set()
        for path in files:
            for row in parse_translation(cat_index(path), lang):
                if row["id"] not in seen:
                    seen.add(row["id"])
                    rows.append(row)
    return rows


def build(workdir: Path) -> dict[str, list[dict[str, Any]]]:
    lists = apt_update(workdir / "apt", LANGUAGES)
    rows = rows_from_lists(lists)
    counts = {lang: sum(r["language"] == lang for r in rows) for lang in LANGUAGES}
    if counts["en"] < 10_000 or counts["es"] < 500:
        raise RuntimeError(f"debian-descriptions: only {counts} descriptions found in {lists}; expected "
                           "tens of thousands in English and thousands in Spanish")
    return split_by_package(rows)


def _features() -> datasets.Features:
    text = datasets.Value("string")
    return datasets.Features({"id": text, "language": text, "body": text, "title": text})


CORPUS = Corpus(
    "Debian package descriptions, long description -> one-line synopsis, in English (64,511 packages in "
    "bookworm) and Spanish (2,228), from apt's Translation-en/-es indexes of the machine's Debian release; "
    "train/validation/test split by package (5% of the packages each held out, seed 42)",
    ("train", "validation", "test"),
    "apt-get update -o Acquire::Languages=en,es (Translation-en, Translation-es of the configured "
    "Debian suites)",
    build, _features)
