"""Raw data sources: the Hugging Face Hub, offline corpora, and JSON-lines files on storage."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import datasets

from nlpjobs import storage
from nlpjobs.config import ConfigError, DataConfig
from nlpjobs.data import squad_json

log = logging.getLogger(__name__)
HUB_TIMEOUT_S = 10.0
"""Seconds to wait for the Hub's answer to which commit a revision is."""

# Canonical split names inside nlpjobs; the source's names come from data.train_split/eval_split.
TRAIN, EVAL = "train", "eval"


class TaskDataError(ValueError):
    """Raw data that does not fit the task (missing columns, bad labels, empty split)."""


def check_text(uri: str, split: str, chunk_bytes: int = 1 << 20) -> None:
    """A text input file (.jsonl, .json, .csv) must be UTF-8 and hold something besides blank lines. The JSON
    reader takes invalid UTF-8 without a word, and it fails later, as a traceback in the middle of
    tokenization; a file of blank lines reads as an empty split with a parser error that names no split."""
    import codecs

    fs, path = storage.resolve(uri)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    content = False

    def undecodable(chunk: bytes, exc: UnicodeDecodeError) -> TaskDataError:
        line = lines + chunk[:exc.start].count(b"\n") + 1
        return TaskDataError(f"split {split!r}: {uri} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} at offset "
                             f"{offset + exc.start}, line {line}); convert it, e.g. `iconv -f latin1 -t utf-8`")

    with storage.retry(lambda: fs.open(path, "rb"), "open", uri) as fh:
        while chunk := fh.read(chunk_bytes):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise undecodable(chunk, exc) from None
            content = content or bool(chunk.strip())
            offset += len(chunk)
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise TaskDataError(f"split {split!r}: {uri} ends inside a UTF-8 character (truncated file?)") from exc
    if not content:
        raise TaskDataError(f"split {split!r}: {uri} holds only blank lines; nothing to train or evaluate on. "
                            "Check the file or point data.train_split/eval_split at another one.")


FILE_FORMATS = ((".jsonl", "json"), (".json", "json"), (".parquet", "parquet"), (".csv", "csv"))
"""A split's file under a ``files:`` source, by extension in the order they are looked for, and its reader."""


def _split_file(location: str, split: str) -> tuple[str, str, str] | None:
    """(uri, extension, reader) of ``split``'s file under ``location``, or None."""
    base = location if "://" in location else "file://" + location
    for ext, builder in FILE_FORMATS:
        uri = storage.join(base, split + ext)
        if storage.exists(uri):
            return uri, ext, builder
    return None


_HUB_COMMITS: dict[tuple[str, str], str] = {}
"""Commit sha each (dataset, revision) resolved to in this process: every stage's key and load agree."""
_SHA = re.compile(r"[0-9a-f]{40}")


def hub_commit(name: str, revision: str | None) -> str:
    """The commit sha the Hub resolves ``revision`` (default main) of dataset ``name`` to now, so that a dataset
    updated on the Hub gets a new cache key. A pinned sha is its own answer. When the Hub is unreachable (or
    HF_HUB_OFFLINE=1) it is the sha of the revision in the local Hub cache if any, else the revision as given,
    with one warning line; an unknown dataset or revision is a ConfigError."""
    revision = revision or "main"
    if _SHA.fullmatch(revision):
        return revision
    if (name, revision) not in _HUB_COMMITS:
        _HUB_COMMITS[name, revision] = _resolve_hub_commit(name, revision)
    return _HUB_COMMITS[name, revision]


def _resolve_hub_commit(name: str, revision: str) -> str:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE=1"
    else:
        try:
            return str(HfApi().dataset_info(name, revision=revision, timeout=HUB_TIMEOUT_S).sha)
        except RevisionNotFoundError as exc:
            raise ConfigError(f"data.revision: {revision!r} is not a branch, tag or commit of the Hub dataset "
                              f"{name!r}; fix data.revision (default main)") from exc
        except GatedRepoError as exc:
            raise ConfigError(f"data.source: the Hub dataset {name!r} is gated: accept its conditions on its page, "
                              "then log in with `hf auth login` or set HF_TOKEN") from exc
        except RepositoryNotFoundError as exc:
            raise ConfigError(f"data.source: the Hub has no dataset {name!r} (or it is private: log in with "
                              "`hf auth login` or set HF_TOKEN)") from exc
        except Exception as exc:  # noqa: BLE001 - unreachable, timed out, 5xx: the cache key falls back below
            why = f"the Hub is unreachable ({type(exc).__name__})"
    cached = _cached_hub_commit(name, revision)
    if cached:
        log.warning("data.source hub:%s: %s; the dataset cache key uses commit %s of %r from the local Hub cache",
                    name, why, cached, revision)
        return cached
    log.warning("data.source hub:%s: %s; the dataset cache key uses the revision %r as given, so a newer commit "
                "on the Hub would reuse this dataset: pin data.revision to a commit sha to be sure", name, why, revision)
    return revision


def _cached_hub_commit(name: str, revision: str) -> str | None:
    """The sha ``revision`` of dataset ``name`` pointed at when it was last downloaded (huggingface_hub's refs)."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / revision
    try:
        sha = ref.read_text().strip()
    except OSError:
        return None
    return sha if _SHA.fullmatch(sha) else None


def input_fingerprint(cfg: DataConfig) -> dict[str, Any]:
    """What the inputs of the source are now. ``hub:``: the commit sha data.revision resolves to (``hub_commit``).
    ``files:``: for each split's file, its size and its modification time (local) or ETag (object store). Empty
    for offline corpora (versioned by their registry package)."""
    scheme, name = cfg.source.split(":", 1) if ":" in cfg.source else ("", "")
    if scheme == "hub":
        return {"hub_commit": hub_commit(name, cfg.revision)}
    if scheme != "files":
        return {}
    out: dict[str, Any] = {}
    for split in (cfg.train_split, cfg.eval_split):
        found = _split_file(name, split)
        if found is None:
            continue  # loading says which file is missing
        out[split] = {**file_version(found[0]), "file": found[0].rsplit("/", 1)[-1]}
    return out


def file_version(uri: str) -> dict[str, Any]:
    """A data file's version as the cache keys see it: its size and modification time (local) or ETag (object
    store)."""
    fs, path = storage.resolve(uri)
    info = storage.retry(lambda: fs.info(path), "stat", uri)
    changed = info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("created")
    return {"file": uri, "size": info.get("size"), "changed": str(changed)}


def _load_files(location: str, split: str, key: str = "data") -> datasets.Dataset:
    found = _split_file(location, split)
    if found is None:
        raise ConfigError(f"{key}.source: no {split}.jsonl/.json/.parquet/.csv under {location}")
    uri, ext, builder = found
    if storage.size(uri) == 0:
        raise TaskDataError(f"split {split!r}: {uri} is empty (0 bytes); nothing to train or evaluate on. "
                            "Check the file or point data.train_split/eval_split at another one.")
    from datasets.exceptions import DatasetGenerationError

    if builder != "parquet":
        check_text(uri, split)
    if ext == ".json" and squad_json.looks_nested(uri):  # a SQuAD file as published: flattened to rows
        try:
            nested = squad_json.read_nested(uri)
        except squad_json.SquadFormatError as exc:
            raise TaskDataError(f"split {split!r}: {exc}") from None
        if nested is not None:
            return nested
    try:
        if uri.startswith("file://"):
            return datasets.load_dataset(builder, data_files=storage.resolve(uri)[1], split="train")
        # datasets' cache keys a remote file by its URL, not its contents: an edited object would be read
        # from the cache. The cache key of our own dataset already says whether the inputs changed.
        return datasets.load_dataset(builder, data_files=uri, split="train", download_mode="force_redownload",
                                     storage_options=storage.resolve(uri)[0].storage_options)
    except DatasetGenerationError as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        raise TaskDataError(f"split {split!r}: {uri} cannot be parsed as {ext[1:]} "
                            f"({type(cause).__name__}: {cause}). Fix the file (one JSON object per line "
                            "for .jsonl) or convert it.") from exc


def load_raw(cfg: DataConfig, seed: int) -> datasets.DatasetDict:
    """The train and eval splits as a DatasetDict keyed 'train'/'eval', columns mapped, subsampled."""
    out: dict[str, datasets.Dataset] = {}
    for key, split in ((TRAIN, cfg.train_split), (EVAL, cfg.eval_split)):
        ds = load_split(cfg.source, split, cfg.config_name, cfg.revision, cfg.columns, key="data",
                        split_key=f"data.{'train' if key == TRAIN else 'eval'}_split")
        if key == TRAIN and cfg.max_train_examples and cfg.max_train_examples < len(ds):
            ds = ds.shuffle(seed=seed).select(range(cfg.max_train_examples))
        if key == EVAL and cfg.max_eval_examples and cfg.max_eval_examples < len(ds):
            ds = ds.select(range(cfg.max_eval_examples))
        out[key] = ds
    return datasets.DatasetDict(out)


def load_split(source: str, split: str, config_name: str | None = None, revision: str | None = None,
               columns: dict[str, str] | None = None, key: str = "predict.dataset",
               split_key: str | None = None) -> datasets.Dataset:
    """One split of a source ('hub:', 'offline:' or 'files:'), in source order, its columns renamed by
    ``columns`` ({task column: dataset column}). Training (through :func:`load_raw`) and batch prediction read
    their rows through this; ``key`` names the settings in messages (``split_key``: the split's setting, default
    ``<key>.split``)."""
    split_key = split_key or f"{key}.split"
    scheme, name = source.split(":", 1)
    if scheme == "hub":
        try:  # the commit the cache key names, even if main moved since
            ds = datasets.load_dataset(name, config_name, split=split, revision=hub_commit(name, revision))
        except ValueError as exc:
            if "split" in str(exc).lower():
                raise ConfigError(f"{split_key}: {split!r} is not a split of {name}: {exc}") from exc
            raise
    elif scheme == "offline":
        from nlpjobs.data import offline

        splits = offline._corpus(name).splits
        if split not in splits:
            raise ConfigError(f"{split_key}: offline corpus {name!r} has no split {split!r}; it has {sorted(splits)}")
        ds = offline.load(name, [split])[split]
    else:
        ds = _load_files(name, split, key)
    columns = columns or {}
    missing = [src for src in columns.values() if src not in ds.column_names]
    if missing:
        raise ConfigError(f"{key}.columns: column(s) {missing} not in split {split!r} of {source}; it has "
                          f"{ds.column_names}")
    renames = {src: dst for dst, src in columns.items() if src in ds.column_names and src != dst}
    return ds.rename_columns(renames) if renames else ds


def split_fingerprint(source: str, split: str, revision: str | None = None) -> dict[str, Any]:
    """What one split's input is now, as :func:`input_fingerprint` says it for the train and eval splits: the Hub
    commit, or the file's name, size and modification time (ETag on an object store); the corpus for offline."""
    scheme, name = source.split(":", 1)
    if scheme == "hub":
        return {"hub_commit": hub_commit(name, revision)}
    if scheme != "files":
        return {"corpus": name}
    found = _split_file(name, split)
    if found is None:
        raise ConfigError(f"split {split!r}: no {split}.jsonl/.json/.parquet/.csv under {name}")
    return file_version(found[0])
