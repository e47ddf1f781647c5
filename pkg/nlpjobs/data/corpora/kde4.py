"""KDE's own English→French UI messages (the course's ``kde4`` domain), from Debian packages.

The Hub's ``kde4`` (OPUS) aligns KDE 4's message catalogs; the KDE applications and frameworks that
Debian 12 ships carry today's versions of the same catalogs, all languages inside each package, as
gettext ``/usr/share/locale/fr/LC_MESSAGES/*.mo`` files. The build downloads the pinned
:data:`PACKAGES` (54 packages, about 42 MB of .debs, mostly architecture-independent ``-data`` and
``-l10n`` packages) with apt lists kept in the build's scratch directory (the machine's apt state is
not touched; see :mod:`nlpjobs.data.corpora.debian_descriptions`), streams the French ``.mo`` files
out of each with ``dpkg-deb --fsys-tarfile`` and reads them with :func:`read_mo` (checked against the
stdlib ``gettext`` reader in the tests). The package *names* are pinned; their versions are whatever
the configured Debian suite serves (those of bookworm 12 when the list was chosen are the values of
:data:`PACKAGES` and go into the cache's ``_SUCCESS`` marker as the corpus source); the build logs the
versions it got and warns when they differ.

Pairs: ``msgid`` → ``msgstr`` (``msgctxt`` only disambiguates, it is dropped); a plural entry gives its
singular (``msgstr[0]``) and its plural (``msgid_plural`` → ``msgstr[1]``). Skipped: the header entry,
untranslated entries (``msgfmt`` already leaves fuzzy ones out of a ``.mo``), KDE's translator-credit
entries (``NAME OF TRANSLATORS``/``EMAIL OF TRANSLATORS``, whose "translations" are people's names),
and messages without a letter (``"%1"``). The text is kept as the catalogs have it, like the Hub's
kde4: KDE accelerator markers (``&File``), KUIT markup (``<filename>%1</filename>``), placeholders
(``%1``) and newlines stay. Pairs are deduplicated (exact en+fr) keeping the first occurrence, in
package order, then catalog file name, then ``msgid`` order. One split, ``train``, with string ids
``"0"``… like the Hub's; the course carves validation out of it (``train_test_split(0.9, seed=20)``).

KDE's translations are GPL/LGPL: fetched at run time into the local cache, never committed.
"""

from __future__ import annotations

import logging
import re
import struct
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from nlpjobs.data.corpora.debian_descriptions import apt_options, apt_update, run_apt
from nlpjobs.data.offline import Corpus

log = logging.getLogger(__name__)

LANG = "fr"
PACKAGES: dict[str, str] = {
    "k3b-i18n": "22.12.3-1", "kcalc": "4:22.12.3-1", "kdevelop-l10n": "4:22.12.2-1",
    "kdevelop-php-l10n": "22.12.2-1", "kdevelop-python-l10n": "22.12.2-1", "kdiff3": "1.10.0-1",
    "kig": "4:22.12.3-1", "kile-l10n": "4:2.9.93-2", "kleopatra": "4:22.12.3-1", "konsole": "4:22.12.3-1+deb12u1",
    "konversation-data": "22.12.3-1", "krusader": "2:2.8.0-1", "ktexteditor-data": "5.103.0-1.1",
    "ktorrent-data": "22.12.3-1", "libkf5akonadi-data": "4:22.12.3-1",
    "libkf5akonadicalendar-data": "4:22.12.3-1", "libkf5calendarsupport-data": "4:22.12.3-1",
    "libkf5configwidgets-data": "5.103.0-1", "libkf5contacts-data": "5:5.103.0-1",
    "libkf5dav-data": "1:5.103.0-1", "libkf5eventviews-data": "4:22.12.3-1",
    "libkf5filemetadata-data": "5.103.0-1", "libkf5gravatar-data": "4:22.12.3-1",
    "libkf5iconthemes-data": "5.103.0-1", "libkf5imap-data": "22.12.3-1",
    "libkf5incidenceeditor-data": "22.12.3-1", "libkf5jsembed-data": "5.103.0-1",
    "libkf5kdelibs4support-data": "5.103.0-1", "libkf5khtml-data": "5.103.0-1",
    "libkf5ksieve-data": "4:22.12.3-1+deb12u1", "libkf5ldap-data": "22.12.3-1",
    "libkf5libkdepim-data": "4:22.12.3-1", "libkf5libkleo-data": "4:22.12.3-1",
    "libkf5mailcommon-data": "4:22.12.3-1", "libkf5mailtransport-data": "22.12.3-1",
    "libkf5newstuff-data": "5.103.0-1", "libkf5package-data": "5.103.0-1+deb12u1",
    "libkf5people-data": "5.103.0-1", "libkf5pimcommon-data": "4:22.12.3-1",
    "libkf5pimtextedit-data": "22.12.3-1", "libkf5sane-data": "22.12.3-1", "libkf5service-data": "5.103.0-1",
    "libkf5sysguard-data": "4:5.27.5-2", "libkf5textwidgets-data": "5.103.0-1",
    "libkf5unitconversion-data": "5.103.0-1", "libkf5wallet-data": "5.103.0-1", "libkf5xmlgui-data": "5.103.0-1",
    "libktorrent-l10n": "22.12.3-1", "libokteta-l10n": "5:0.26.10-1", "plasma-nm": "4:5.27.5-2",
    "print-manager": "4:22.12.3-1", "step": "4:22.12.3-1", "umbrello-data": "4:22.12.3-1", "yakuake": "22.12.3-1",
}
"""Pinned Debian package names → the bookworm version they were chosen at (informational)."""
MIN_PAIRS = 20_000
CREDIT_CONTEXTS = {"NAME OF TRANSLATORS", "EMAIL OF TRANSLATORS"}
CREDIT_MSGIDS = {"Your names", "Your emails", "_: NAME OF TRANSLATORS\nYour names",
                 "_: EMAIL OF TRANSLATORS\nYour emails"}
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class MoEntry:
    """One message of a compiled gettext catalog."""

    context: str | None
    msgid: str
    msgid_plural: str | None
    msgstr: tuple[str, ...]
    """One string, or one per plural form."""


def read_mo(data: bytes) -> list[MoEntry]:
    """Parse a GNU ``.mo`` file (either byte order), decoding with the charset of its header (default
    UTF-8). Unlike ``gettext.GNUTranslations`` it keeps ``msgid_plural`` and the context."""
    if len(data) < 20:
        raise ValueError("not a .mo file: shorter than its header")
    magic = struct.unpack("<I", data[:4])[0]
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(magic)
    if order is None:
        raise ValueError(f"not a .mo file: bad magic number {magic:#x}")
    _, count, orig_at, trans_at = struct.unpack(order + "4I", data[4:20])
    raw: list[tuple[bytes, bytes]] = []
    for i in range(count):
        olen, ooff = struct.unpack_from(order + "2I", data, orig_at + 8 * i)
        tlen, toff = struct.unpack_from(order + "2I", data, trans_at + 8 * i)
        if ooff + olen > len(data) or toff + tlen > len(data):
            raise ValueError(f"corrupt .mo file: string {i} points past the end of the file")
        raw.append((data[ooff:ooff + olen], data[toff:toff + tlen]))
    charset = "utf-8"
    for key, value in raw:
        if key == b"":
            match = re.search(rb"charset=([\w-]+)", value)
            if match and match.group(1).lower() not in (b"charset", b""):
                charset = match.group(1).decode("ascii")
    entries = []
    for key, value in raw:
        context, sep, msgid = key.partition(b"\x04")
        if not sep:
            context, msgid = b"", key
        singular, _, plural = msgid.partition(b"\x00")
        entries.append(MoEntry(
            context.decode(charset) if sep else None, singular.decode(charset),
            plural.decode(charset) if b"\x00" in msgid else None,
            tuple(s.decode(charset) for s in value.split(b"\x00"))))
    return entries


def pairs(entries: Iterable[MoEntry]) -> Iterator[tuple[str, str]]:
    """(English, French) pairs of catalog entries, skipping the header, untranslated entries,
    translator credits and messages without a letter."""
    for e in entries:
        if not e.msgid or e.context in CREDIT_CONTEXTS or e.msgid in CREDIT_MSGIDS:
            continue
        candidates = [(e.msgid, e.msgstr[0])]
        if e.msgid_plural is not None and len(e.msgstr) > 1:
            candidates.append((e.msgid_plural, e.msgstr[1]))
        for en, fr in candidates:
            if fr.strip() and _LETTER.search(en):
                yield en, fr


def rows_from_pairs(found: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Deduplicated pairs (first occurrence kept) as Hub-shaped kde4 rows."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for pair in found:
        if pair not in seen:
            seen.add(pair)
            rows.append({"id": str(len(rows)), "translation": {"en": pair[0], LANG: pair[1]}})
    return rows


def catalog_pairs(root: Path, lang: str = LANG) -> Iterator[tuple[str, str]]:
    """Pairs of every ``usr/share/locale/<lang>/LC_MESSAGES/*.mo`` under an unpacked package."""
    for mo in sorted((root / "usr" / "share" / "locale" / lang / "LC_MESSAGES").glob("*.mo")):
        yield from pairs(read_mo(mo.read_bytes()))


def deb_catalogs(deb: Path, lang: str = LANG) -> dict[str, bytes]:
    """The ``usr/share/locale/<lang>/LC_MESSAGES/*.mo`` files of a .deb (name → bytes), streamed out of
    ``dpkg-deb --fsys-tarfile`` without unpacking the package's other files."""
    wanted = re.compile(rf"^(\./)?usr/share/locale/{re.escape(lang)}/LC_MESSAGES/[^/]+\.mo$")
    found: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and wanted.match(member.name):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[member.name.rsplit("/", 1)[1]] = handle.read()
        proc.stdout.read()  # drain the tar padding so dpkg-deb exits cleanly
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb.name} failed (exit {proc.returncode}): {err.strip()}")
    return found


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                          text=True).stdout.strip()


def download(packages: Iterable[str], workdir: Path) -> dict[str, Path]:
    """``apt-get download`` the packages (fresh lists kept under ``workdir``); return name → .deb."""
    names = list(packages)
    opts = apt_options(workdir / "apt")
    apt_update(workdir / "apt")
    debs = workdir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    run_apt(["apt-get", "download", "-q", *opts, *names], cwd=debs, what="apt-get download")
    found = {p.name.split("_", 1)[0]: p for p in debs.glob("*.deb")}
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"apt-get download produced no .deb for {missing} in {debs}")
    return {n: found[n] for n in names}


def build(workdir: Path, packages: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    names = list(packages if packages is not None else PACKAGES)
    debs = download(names, workdir)
    versions = {}
    found: list[tuple[str, str]] = []
    for name, deb in debs.items():
        versions[name] = deb_version(deb)
        catalogs = deb_catalogs(deb)
        before = len(found)
        for mo in sorted(catalogs):
            found.extend(pairs(read_mo(catalogs[mo])))
        if len(found) == before:
            raise RuntimeError(f"kde4-en-fr: package {name} {versions[name]} has no French .mo catalog")
    changed = {n: (PACKAGES[n], v) for n, v in versions.items() if n in PACKAGES and PACKAGES[n] != v}
    log.info("kde4-en-fr: %d packages, versions %s", len(versions), versions)
    if changed:
        log.warning("kde4-en-fr: versions differ from the ones the corpus was pinned at: %s", changed)
    rows = rows_from_pairs(found)
    if packages is None and len(rows) < MIN_PAIRS:
        raise RuntimeError(f"kde4-en-fr: only {len(rows)} pairs from {len(names)} packages; expected "
                           f"at least {MIN_PAIRS}")
    return {"train": rows}


def _features() -> datasets.Features:
    return datasets.Features({"id": datasets.Value("string"),
                              "translation": datasets.Translation(languages=["en", LANG])})


def _source() -> str:
    return "Debian bookworm packages (apt-get download): " + ", ".join(f"{n}={v}" for n, v in PACKAGES.items())


CORPUS = Corpus(
    "KDE application and framework UI messages, English -> French, from the French gettext catalogs "
    "of 54 pinned Debian KDE packages (31,793 unique pairs with bookworm's versions); one split, train, "
    "in the Hub kde4 row shape",
    ("train",), _source(), build, _features)
