"""The two corpora mined from Debian packages: kde4-en-fr (.mo catalogs) and debian-descriptions.

The parsers run on small embedded fixtures (no network); the two ``slow`` tests fetch the real corpora
through apt (about 40 MB and 16 MB of downloads, a minute each).
"""

from __future__ import annotations

import gettext
import gzip
import io
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from nlpjobs.data import offline
from nlpjobs.data.corpora import debian_descriptions as dd
from nlpjobs.data.corpora import kde4
from nlpjobs.data.corpora.kde4 import MoEntry

HEADER = ("Project-Id-Version: fixture\nLanguage: fr\nMIME-Version: 1.0\n"
          "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=n > 1;\n")
FIXTURE = [
    MoEntry(None, "", None, (HEADER,)),
    MoEntry(None, "&Open File", None, ("&Ouvrir un fichier",)),
    MoEntry("@action", "Save", None, ("Enregistrer",)),
    MoEntry(None, "Save", None, ("Sauvegarder",)),
    MoEntry(None, "One file deleted", "%1 files deleted", ("Un fichier supprimé", "%1 fichiers supprimés")),
    MoEntry("NAME OF TRANSLATORS", "Your names", None, ("Jean Dupont",)),
    MoEntry("EMAIL OF TRANSLATORS", "Your emails", None, ("jean@example.org",)),
    MoEntry(None, "%1", None, ("%1",)),
    MoEntry(None, "Untranslated", None, ("",)),
    MoEntry(None, "Line one\nline <b>two</b>", None, ("Ligne un\nligne <b>deux</b>",)),
    MoEntry(None, "Ça va ?", None, ("Ça va\u00a0?",)),
]


def write_mo(entries: list[MoEntry], big_endian: bool = False) -> bytes:
    """A GNU .mo file holding ``entries`` (sorted by key, as msgfmt writes them; no hash table)."""
    def key(e: MoEntry) -> bytes:
        k = e.msgid + ("\x00" + e.msgid_plural if e.msgid_plural is not None else "")
        return ((e.context + "\x04") if e.context is not None else "").encode() + k.encode()

    items = sorted(((key(e), "\x00".join(e.msgstr).encode()) for e in entries), key=lambda kv: kv[0])
    order = ">" if big_endian else "<"
    n = len(items)
    orig_at, trans_at = 28, 28 + 8 * n
    data_at = trans_at + 8 * n
    blob = io.BytesIO()
    tables: list[list[tuple[int, int]]] = [[], []]
    for col in (0, 1):
        for item in items:
            tables[col].append((len(item[col]), data_at + blob.tell()))
            blob.write(item[col] + b"\x00")
    head = struct.pack(order + "7I", 0x950412DE, 0, n, orig_at, trans_at, 0, 0)
    body = b"".join(struct.pack(order + "2I", *t) for col in tables for t in col)
    return head + body + blob.getvalue()


# --- kde4-en-fr -------------------------------------------------------------------------------------

@pytest.mark.parametrize("big_endian", [False, True])
def test_read_mo_roundtrip(big_endian: bool) -> None:
    entries = kde4.read_mo(write_mo(FIXTURE, big_endian))
    assert sorted(entries, key=repr) == sorted(FIXTURE, key=repr)


def test_read_mo_agrees_with_stdlib_gettext() -> None:
    data = write_mo(FIXTURE)
    catalog = gettext.GNUTranslations(io.BytesIO(data))._catalog
    for e in kde4.read_mo(data):
        key = e.msgid if e.context is None else f"{e.context}\x04{e.msgid}"
        if e.msgid_plural is None:
            assert catalog[key] == e.msgstr[0]
        else:
            assert [catalog[(key, i)] for i in range(len(e.msgstr))] == list(e.msgstr)
    assert len(catalog) == len(FIXTURE) + 1  # the plural entry has one key per form


def test_read_mo_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="magic"):
        kde4.read_mo(b"\x00" * 40)
    with pytest.raises(ValueError, match="header"):
        kde4.read_mo(b"\xde\x12\x04\x95")
    truncated = write_mo(FIXTURE)[:-60]
    with pytest.raises(ValueError, match="past the end"):
        kde4.read_mo(truncated)


def test_read_mo_decodes_the_header_charset() -> None:
    header = HEADER.replace("UTF-8", "ISO-8859-1")
    latin = write_mo([MoEntry(None, "", None, (header,)), MoEntry(None, "Yes", None, ("Oui",))])
    latin = latin.replace(b"Oui", "Vé!".encode("latin-1"))  # same length in latin-1
    assert [e.msgstr for e in kde4.read_mo(latin) if e.msgid == "Yes"] == [("Vé!",)]


def test_pairs_skip_header_credits_placeholders_and_untranslated() -> None:
    got = list(kde4.pairs(FIXTURE))
    assert got == [
        ("&Open File", "&Ouvrir un fichier"),
        ("Save", "Enregistrer"),  # the context only disambiguates
        ("Save", "Sauvegarder"),
        ("One file deleted", "Un fichier supprimé"),
        ("%1 files deleted", "%1 fichiers supprimés"),
        ("Line one\nline <b>two</b>", "Ligne un\nligne <b>deux</b>"),
        ("Ça va ?", "Ça va\u00a0?"),
    ]


def test_rows_dedupe_and_hub_shape() -> None:
    rows = kde4.rows_from_pairs([("Save", "Enregistrer"), ("Quit", "Quitter"), ("Save", "Enregistrer"),
                                 ("Save", "Sauvegarder")])
    assert rows == [{"id": "0", "translation": {"en": "Save", "fr": "Enregistrer"}},
                    {"id": "1", "translation": {"en": "Quit", "fr": "Quitter"}},
                    {"id": "2", "translation": {"en": "Save", "fr": "Sauvegarder"}}]


def _package_tree(root: Path) -> Path:
    for lang, entries in (("fr", FIXTURE), ("de", [MoEntry(None, "Save", None, ("Speichern",))])):
        folder = root / "usr/share/locale" / lang / "LC_MESSAGES"
        folder.mkdir(parents=True)
        (folder / "fixture.mo").write_bytes(write_mo(entries))
    return root


def test_catalog_pairs_reads_only_french(tmp_path: Path) -> None:
    got = list(kde4.catalog_pairs(_package_tree(tmp_path)))
    assert ("Save", "Sauvegarder") in got and len(got) == 7
    assert not any(fr == "Speichern" for _, fr in got)


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="needs gettext's msgfmt")
def test_msgfmt_output_parses_and_drops_fuzzy(tmp_path: Path) -> None:
    po = tmp_path / "x.po"
    po.write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
                  '"Plural-Forms: nplurals=2; plural=n > 1;\\n"\n\n'
                  'msgctxt "@title"\nmsgid "Settings"\nmsgstr "Paramètres"\n\n'
                  '#, fuzzy\nmsgid "Maybe"\nmsgstr "Peut-être"\n\n'
                  'msgid "%1 item"\nmsgid_plural "%1 items"\nmsgstr[0] "%1 élément"\nmsgstr[1] "%1 éléments"\n',
                  encoding="utf-8")
    subprocess.run(["msgfmt", "-o", str(tmp_path / "x.mo"), str(po)], check=True)
    got = list(kde4.pairs(kde4.read_mo((tmp_path / "x.mo").read_bytes())))
    assert sorted(got) == [("%1 item", "%1 élément"), ("%1 items", "%1 éléments"), ("Settings", "Paramètres")]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_unpacks_debs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debs = {}
    for name, with_fr in (("kfixture-data", True), ("kempty-data", False)):
        tree = tmp_path / "src" / name
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0-1\nArchitecture: all\n"
                                              "Maintainer: t <t@example.org>\nDescription: fixture\n")
        if with_fr:
            _package_tree(tree)
        debs[name] = tmp_path / f"{name}_1.0-1_all.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(debs[name])], check=True,
                       capture_output=True)
    monkeypatch.setattr(kde4, "download", lambda names, workdir: {n: debs[n] for n in names})
    rows = kde4.build(tmp_path / "w1", ["kfixture-data"])["train"]
    assert len(rows) == 7 and rows[0] == {"id": "0", "translation": {"en": "&Open File", "fr": "&Ouvrir un fichier"}}
    with pytest.raises(RuntimeError, match="kempty-data 1.0-1 has no French"):
        kde4.build(tmp_path / "w2", ["kfixture-data", "kempty-data"])


def test_kde4_pins_packages() -> None:
    assert len(kde4.PACKAGES) >= 40 and all(kde4.PACKAGES.values())
    assert kde4.CORPUS.splits == ("train",)
    assert "konsole=" in kde4.CORPUS.source


# --- debian-descriptions ----------------------------------------------------------------------------

TRANSLATION_EN = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform
 real-time strategy (RTS) game of ancient warfare.
 .
 It supports:
  * random maps
  * multiplayer
 .
 Some text after the list,
 on two lines.

Package: only-synopsis
Description-md5: 00000000000000000000000000000000
Description-en: A package without a long description

Package: zzz-tool
Description-md5: 11111111111111111111111111111111
Description-en: Tool that does things
 Does things quickly.
"""
TRANSLATION_ES = """\
Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-es: Juego de estrategia en tiempo real de guerras antiguas
 0 A.D. es un juego de estrategia en tiempo real
 de guerras antiguas.
"""


def test_stanzas_and_long_description() -> None:
    first = next(dd.stanzas(TRANSLATION_EN))
    assert first["Package"] == "0ad" and first["Description-en"].startswith("Real-time strategy game")
    rows = list(dd.parse_translation(TRANSLATION_EN, "en"))
    assert [r["id"] for r in rows] == ["0ad:en", "zzz-tool:en"]
    assert rows[0] == {
        "id": "0ad:en", "language": "en", "title": "Real-time strategy game of ancient warfare",
        "body": '0 A.D. (pronounced "zero ey-dee") is a free, open-source, cross-platform real-time strategy '
                "(RTS) game of ancient warfare.\n\nIt supports:\n* random maps\n* multiplayer\n\n"
                "Some text after the list, on two lines."}
    es = list(dd.parse_translation(TRANSLATION_ES, "es"))
    assert es == [{"id": "0ad:es", "language": "es", "title": "Juego de estrategia en tiempo real de guerras antiguas",
                   "body": "0 A.D. es un juego de estrategia en tiempo real de guerras antiguas."}]


def test_stanzas_reject_orphan_continuation() -> None:
    with pytest.raises(ValueError, match="continuation"):
        list(dd.stanzas(" orphan\n"))


def test_rows_from_lists_reads_compressed_indexes(tmp_path: Path) -> None:
    if not Path(dd.APT_HELPER).exists():
        pytest.skip("needs apt-helper")
    big = TRANSLATION_EN + "\n" + "\n".join(f"Package: pad{i}\nDescription-en: Pad {i}\n Padding.\n"
                                            for i in range(50))
    (tmp_path / "mirror_dists_bookworm_main_i18n_Translation-en.gz").write_bytes(gzip.compress(big.encode()))
    (tmp_path / "mirror_dists_bookworm-security_main_i18n_Translation-en").write_text(
        "Package: zzz-tool\nDescription-en: Newer synopsis\n Newer body.\n")
    (tmp_path / "mirror_dists_bookworm_main_i18n_Translation-es").write_text(TRANSLATION_ES)
    (tmp_path / "mirror_dists_bookworm_main_binary-amd64_Packages").write_text("Package: x\n")
    rows = dd.rows_from_lists(tmp_path)
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == len(by_id) == 2 + 50 + 1
    assert by_id["zzz-tool:en"]["title"] == "Tool that does things"  # the biggest (main) index wins
    assert by_id["0ad:es"]["language"] == "es"
    with pytest.raises(RuntimeError, match="Translation-de"):
        dd.rows_from_lists(tmp_path, ["de"])


def test_split_by_package_keeps_languages_together() -> None:
    rows = [{"id": f"pkg{i}:{lang}", "language": lang} for i in range(1000) for lang in ("en", "es")
            if lang == "en" or i % 3 == 0]
    splits = dd.split_by_package(rows)
    assert {s: len(r) for s, r in splits.items()} == {
        "train": len(rows) - sum(len(splits[s]) for s in ("validation", "test")),
        "validation": len(splits["validation"]), "test": len(splits["test"])}
    packages = {s: {r["id"].split(":")[0] for r in rs} for s, rs in splits.items()}
    assert len(packages["validation"]) == len(packages["test"]) == 50
    assert not (packages["train"] & packages["validation"] or packages["train"] & packages["test"]
                or packages["validation"] & packages["test"])
    assert [r["id"] for r in splits["train"]] == [r["id"] for r in rows if r in splits["train"]]  # order kept
    # membership depends on the package names and the seed only, not on the order of the rows
    assert {s: {r["id"] for r in rs} for s, rs in splits.items()} == \
        {s: {r["id"] for r in rs} for s, rs in dd.split_by_package(list(reversed(rows))).items()}


def test_run_apt_errors_are_clear() -> None:
    with pytest.raises(RuntimeError, match="not found"):
        dd.run_apt(["no-such-apt-tool-xyz", "update"], what="fixture")
    if shutil.which("apt-get"):
        with pytest.raises(RuntimeError, match="mirror"):
            dd.run_apt(["apt-get", "no-such-command"], what="fixture")


# --- real fetches (network: the Debian mirror) -------------------------------------------------------

@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NLPJOBS_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
def test_fetch_kde4_en_fr(cache: Path) -> None:
    start = time.monotonic()
    ds = offline.load("kde4-en-fr")
    print(f"kde4-en-fr fetched in {time.monotonic() - start:.0f} s: {ds['train'].num_rows} pairs")
    train = ds["train"]
    assert list(ds) == ["train"] and train.column_names == ["id", "translation"]
    assert 30_000 <= train.num_rows <= 34_000
    assert train["id"][:3] == ["0", "1", "2"]
    pairs = [(t["en"], t["fr"]) for t in train["translation"]]
    assert len(set(pairs)) == len(pairs)
    assert all(en and fr.strip() for en, fr in pairs)
    assert not any(en in kde4.CREDIT_MSGIDS for en, _ in pairs)
    for pair in (("Open File", "Ouvrir un fichier"), ("Cancel", "Annuler"), ("&Quit", "&Quitter")):
        assert pair in pairs
    assert sum(fr.startswith("&") for _, fr in pairs) > 300  # accelerators kept as the catalogs have them
    split = train.train_test_split(train_size=0.9, seed=20)
    assert split["test"].num_rows == train.num_rows - int(train.num_rows * 0.9)


@pytest.mark.slow
def test_fetch_debian_descriptions(cache: Path) -> None:
    start = time.monotonic()
    ds = offline.load("debian-descriptions")
    counts = {s: {lang: sum(x == lang for x in ds[s]["language"]) for lang in ("en", "es")} for s in ds}
    print(f"debian-descriptions fetched in {time.monotonic() - start:.0f} s: {counts}")
    assert list(ds) == ["train", "validation", "test"]
    assert ds["train"].column_names == ["id", "language", "body", "title"]
    total = {lang: sum(c[lang] for c in counts.values()) for lang in ("en", "es")}
    assert 55_000 <= total["en"] <= 75_000 and 1_800 <= total["es"] <= 3_000
    for s in ("validation", "test"):
        assert 0.04 <= ds[s].num_rows / sum(ds[x].num_rows for x in ds) <= 0.06
    packages = {s: {i.rsplit(":", 1)[0] for i in ds[s]["id"]} for s in ds}
    assert not (packages["train"] & packages["validation"]) and not (packages["train"] & packages["test"])
    row = next(r for s in ds for r in ds[s] if r["id"] == "0ad:en")
    assert row["title"] == "Real-time strategy game of ancient warfare" and "ancient warfare" in row["body"]
    assert all(r["title"] and r["body"] and "\n " not in r["body"] for r in ds["validation"])
