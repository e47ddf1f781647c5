"""Shared base of the sequence-to-sequence tasks (translation and summarization).

What both tasks share: source/target tokenization with ``text_target`` and per-side max lengths
(truncations counted), ``DataCollatorForSeq2Seq(model=...)`` (labels padded with -100,
``decoder_input_ids`` from the model's own shift), generation-based evaluation with the unwrapped
model's ``generate`` (generated tokens padded across processes with the pad id, labels with -100,
gathered, truncated to the eval set, -100 → pad before decoding), a token-weighted eval loss, and
models built from a config with a SentencePiece tokenizer trained by preprocess (``scratch:<arch>``).

What they report: pairs dropped for a missing or empty side and truncations (manifest and the preprocess
summary), the truncated eval sources/references and empty or collapsed generations (evaluate's metrics and
warnings; references are scored as the raw texts, not the decoded truncated labels), and predict inputs longer
than the model's source limit (a warning).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import pyarrow as pa

from nlpjobs.config import ConfigError, EvaluateConfig, JobConfig, PreprocessConfig
from nlpjobs.tasks.base import EvalContext, Task, TaskDataError, column_values, fresh_fingerprint, list_column
from nlpjobs.text.encode import rust_backend
from nlpjobs.text.marian import MarianIds

log = logging.getLogger(__name__)

SCRATCH_PREFIX = "scratch:"

#: Model sizes built from a config (random weights) for offline runs: arch → size → config overrides.
SCRATCH_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "marian": {
        "tiny": {"d_model": 256, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                 "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024,
                 "max_position_embeddings": 512, "scale_embedding": True},
        "small": {"d_model": 512, "encoder_layers": 3, "decoder_layers": 3, "encoder_attention_heads": 8,
                  "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
                  "max_position_embeddings": 512, "scale_embedding": True},
    },
    "mt5": {
        "tiny": {"d_model": 256, "d_kv": 32, "d_ff": 512, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4},
        "small": {"d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 4, "num_decoder_layers": 4,
                  "num_heads": 6},
    },
}


@dataclass
class Seq2SeqPreprocessConfig(PreprocessConfig):
    """Source/target tokenization for encoder-decoder models."""

    max_source_length: int = 128
    """Source tokens per example (longer inputs are truncated and counted in the manifest)."""
    max_target_length: int = 128
    """Target (label) tokens per example (longer targets are truncated and counted)."""
    source_prefix: str = ""
    """Text prepended to every source, e.g. 'translate English to French: ' for T5; empty for Marian/mT5."""
    vocab_size: int = 8000
    """scratch: models only: SentencePiece vocabulary size to train (per side for Marian)."""
    tokenizer_max_sentences: int = 200_000
    """scratch: models only: at most this many training texts (per side) feed SentencePiece training."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key in ("max_source_length", "max_target_length"):
            if getattr(self, key) < 2:
                raise ConfigError(f"{prefix}.{key}: got {getattr(self, key)}, must be >= 2 (room for EOS)")
        if self.vocab_size < 100:
            raise ConfigError(f"{prefix}.vocab_size: got {self.vocab_size}, must be >= 100")
        if self.tokenizer_max_sentences < 1:
            raise ConfigError(f"{prefix}.tokenizer_max_sentences: must be >= 1")


@dataclass
class Seq2SeqEvaluateConfig(EvaluateConfig):
    """Generation used by evaluation (and stored in the model's generation config for predict)."""

    generation_max_length: int | None = 128
    """max_length passed to generate(); null keeps the model's generation config."""
    num_beams: int | None = None
    """Beam search width; null keeps the model's generation config (opus-mt: 4, models from config: 1)."""
    no_repeat_ngram_size: int | None = None
    """Never generate an n-gram of this many tokens twice in one output (e.g. 3 stops a small model's
    'for the for the ...' loops); null keeps the model's generation config (0: off)."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.generation_max_length is not None and self.generation_max_length < 2:
            raise ConfigError(f"{prefix}.generation_max_length: got {self.generation_max_length}, must be >= 2")
        if self.num_beams is not None and self.num_beams < 1:
            raise ConfigError(f"{prefix}.num_beams: got {self.num_beams}, must be >= 1")
        if self.no_repeat_ngram_size is not None and self.no_repeat_ngram_size < 0:
            raise ConfigError(f"{prefix}.no_repeat_ngram_size: got {self.no_repeat_ngram_size}, must be >= 0 "
                              "(0 turns it off)")

    def generation_options(self) -> dict[str, Any]:
        """The options above that are set, as generate() and the model's generation config name them."""
        options = {"max_length": self.generation_max_length, "num_beams": self.num_beams,
                   "no_repeat_ngram_size": self.no_repeat_ngram_size}
        return {k: v for k, v in options.items() if v is not None}


def scratch_spec(name: str, allowed: tuple[str, ...]) -> tuple[str, str] | None:
    """(arch, size) for 'scratch:<arch>-<size>' model names; None for pretrained models."""
    if not name.startswith(SCRATCH_PREFIX):
        return None
    arch, _, size = name[len(SCRATCH_PREFIX):].partition("-")
    known = [f"{SCRATCH_PREFIX}{a}-{s}" for a in allowed for s in SCRATCH_SIZES[a]]
    if arch not in allowed or size not in SCRATCH_SIZES.get(arch, {}):
        raise ConfigError(f"model.name: unknown model {name!r} for this task; models built from a config: "
                          f"{', '.join(known)} (or a Hub id / local directory)")
    return arch, size


# ---- raw texts: types, empty sides, what preprocess reports ------------------------------------


def holds_json(feature: Any) -> bool:
    """Whether ``feature`` is, or nests, datasets' ``Json`` feature (JSON values of mixed types, stored as text)."""
    if type(feature).__name__ == "Json":
        return True
    if isinstance(feature, dict):
        return any(holds_json(f) for f in feature.values())
    if isinstance(feature, list | tuple):
        return any(holds_json(f) for f in feature)
    inner = getattr(feature, "feature", None)
    return inner is not None and holds_json(inner)


def python_values(ds: datasets.Dataset, name: str) -> list[Any]:
    """Column ``name`` as Python objects. A JSON column mixing types (strings beside numbers or objects, at any
    depth) has datasets' ``Json`` feature, stored as JSON text that ``column_values`` would return undecoded."""
    if holds_json(ds.features.get(name)):
        return list(ds.select_columns([name])[:][name])
    return column_values(ds, name)


def describe(value: Any) -> str:
    """A value as an error message shows it: its JSON kind and a short repr."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
             str: "a string"}
    text = repr(value)
    return f"{kinds.get(type(value), type(value).__name__)} ({text[:60]}{'...' if len(text) > 60 else ''})"


def check_text(value: Any, where: str) -> None:
    """``value`` must be a string or missing (null): a number, list or object where text belongs is bad data."""
    if value is not None and not isinstance(value, str):
        raise TaskDataError(f"{where} is {describe(value)}, expected text (a JSON string); fix or remove the row")


def is_blank(value: str | None) -> bool:
    """A missing (null) or empty / whitespace-only text."""
    return value is None or not value.strip()


def preprocess_report(task: str, totals: dict[str, int], removed: dict[str, list[tuple[int, str]]],
                      truncation: dict[str, dict[str, int]], cfg: Seq2SeqPreprocessConfig) -> list[str]:
    """The lines `nlpjobs preprocess` prints under its table (kept in the manifest's info as ``report``).

    ``totals``: rows read per split; ``removed``: per split, (rows, why) for each reason rows were left out, e.g.
    (3, "dropped (missing or empty source or target)"); ``truncation``: tokenize_pairs' counts per split.
    """
    lines = [f"{task}: {n:,} of {totals[split]:,} {split} pairs {why}"
             for split, reasons in removed.items() for n, why in reasons if n]
    for split, counts in truncation.items():
        if counts["source"] or counts["target"]:
            kept = totals[split] - sum(n for n, _ in removed.get(split, []))
            lines.append(f"{task}: {split}: of {kept:,} pairs, {counts['source']:,} sources truncated to "
                         f"max_source_length {cfg.max_source_length} and {counts['target']:,} targets to "
                         f"max_target_length {cfg.max_target_length} (raise them to keep more)")
    return lines


def check_pairs_left(task: str, split: str, kept: int, total: int, why: str) -> None:
    """TaskDataError when a split has no pair left after dropping the incomplete ones."""
    if kept == 0:
        use = "train" if split == "train" else "evaluate"
        raise TaskDataError(f"{task}: split {split!r} has no pair left to {use} on: all {total:,} rows {why}; "
                            "check the data and data.columns")


# ---- tokenizers trained by preprocess ------------------------------------------------------


def train_sentencepiece(texts: Iterable[str], vocab_size: int, **options: Any) -> bytes:
    """A unigram SentencePiece model trained in memory (vocab_size is a soft limit on small data)."""
    import sentencepiece as spm

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise TaskDataError("cannot train a SentencePiece tokenizer: no non-empty training texts")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                   input_sentence_size=0, minloglevel=2, num_threads=2, **options)
    return buf.getvalue()


def _pieces(model: bytes) -> list[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]


def marian_tokenizer(sources: list[str], targets: list[str], vocab_size: int, max_length: int,
                     joint: bool = False) -> Any:
    """A MarianTokenizer with one SentencePiece model per side (source.spm on the source language,
    target.spm on the target language) and the shared vocab.json Marian uses: </s>=0, <unk>=1, the
    pieces of both models, <pad> last (pad = decoder start, as in opus-mt). ``joint``: one model trained on
    both sides serves as both, so a string written alike in both languages has the same ids on each side."""
    import json

    from transformers import AutoTokenizer, MarianTokenizer

    if joint:
        source_model = target_model = train_sentencepiece([*sources, *targets], vocab_size)
    else:
        source_model = train_sentencepiece(sources, vocab_size)
        target_model = train_sentencepiece(targets, vocab_size)
    vocab: dict[str, int] = {"</s>": 0, "<unk>": 1}
    for piece in _pieces(source_model) + _pieces(target_model):
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="nlpjobs-marian-") as tmp:
        d = Path(tmp)
        (d / "source.spm").write_bytes(source_model)
        (d / "target.spm").write_bytes(target_model)
        (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        MarianTokenizer(source_spm=str(d / "source.spm"), target_spm=str(d / "target.spm"),
                        vocab=str(d / "vocab.json"), model_max_length=max_length).save_pretrained(str(d / "tok"))
        tokenizer = AutoTokenizer.from_pretrained(str(d / "tok"))  # reload: what later stages will see
    check_tokenizer_size(tokenizer, len(vocab), "MarianTokenizer")
    return tokenizer


def t5_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    """A fast T5 tokenizer (pad=0, </s>=1, <unk>=2, no sentinel tokens) on a SentencePiece unigram model
    trained on ``texts``; saved to a folder and reloaded with from_pretrained."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, T5Tokenizer, T5TokenizerFast

    model = train_sentencepiece(texts, vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    # The files must outlive this function: saving copies spiece.model from the tokenizer's vocab_file, and
    # the saved T5 config makes a reload convert from spiece.model. They go when the tokenizer does.
    files = tempfile.TemporaryDirectory(prefix="nlpjobs-t5tok-")
    d = Path(files.name)
    (d / "spiece.model").write_bytes(model)
    T5Tokenizer(vocab_file=str(d / "spiece.model"), extra_ids=0, legacy=False,
                model_max_length=max_length).save_pretrained(str(d / "slow"))
    T5TokenizerFast.from_pretrained(str(d / "slow"), legacy=False).save_pretrained(str(d / "fast"))
    tokenizer = AutoTokenizer.from_pretrained(str(d / "fast"))
    tokenizer._nlpjobs_files = files
    check_tokenizer_size(tokenizer, size, "T5TokenizerFast")
    return tokenizer


def check_tokenizer_size(tokenizer: Any, expected: int, what: str) -> None:
    if len(tokenizer) != expected:
        raise ConfigError(f"{what} reloaded with {len(tokenizer)} tokens but its vocabulary has {expected}; the "
                          "saved tokenizer files are inconsistent (tokenizers must be saved to a folder and loaded with "
                          "from_pretrained(folder))")


def check_model_vocab(tokenizer: Any, model: Any, exact: bool) -> None:
    """The model's embedding must cover every token id (exactly, for models built from a config).

    Hub checkpoints may pad their embedding (mt5-small: 250,112 rows for 250,100 tokens), so only a
    tokenizer larger than the embedding is an error for them.
    """
    n_tok, n_model = len(tokenizer), int(model.config.vocab_size)
    if n_tok > n_model or (exact and n_tok != n_model):
        raise ConfigError(f"model.name: the tokenizer has {n_tok} tokens but the model's vocabulary has {n_model}; "
                          "token ids would index outside the embedding. Use the tokenizer that belongs to the "
                          "model (rerun preprocess with the same model.name).")
    pad = tokenizer.pad_token_id
    if pad is None or pad != model.config.pad_token_id:
        raise ConfigError(f"model.name: tokenizer pad id {pad} differs from the model's pad_token_id "
                          f"{model.config.pad_token_id}; labels would be shifted with the wrong token")


# ---- tokenization -------------------------------------------------------------------------


def special_token_suffix(tokenizer: Any) -> int | None:
    """How many special tokens the tokenizer appends after a sequence's content (T5/Marian: 1, </s>), or None
    when ``build_inputs_with_special_tokens`` does not say."""
    marker = -7
    try:
        built = list(tokenizer.build_inputs_with_special_tokens([marker]))
    except Exception:  # noqa: BLE001 - any tokenizer that cannot tell falls back to tokenizing again
        return None
    return len(built) - built.index(marker) - 1 if built.count(marker) == 1 else None


def has_target_mode(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text_target=...)`` tokenizes differently from ``tokenizer(text)``: the tokenizer
    class overrides ``_switch_to_target_mode`` (mBART, NLLB, M2M100, Marian... switch special tokens or the
    SentencePiece model); T5/mT5, BART, Pegasus and most others do not."""
    from transformers import PreTrainedTokenizerBase

    return type(tokenizer)._switch_to_target_mode is not PreTrainedTokenizerBase._switch_to_target_mode


def _cut_one_token(row: list[int], suffix: int) -> list[int]:
    """A row truncated to n+1 tokens, as truncation to n would give it: one content token fewer before the
    ``suffix`` special tokens (right-side truncation of a single sequence)."""
    return row[:len(row) - 1 - suffix] + row[len(row) - suffix:]


def _truncate_again(rows: list[list[int]], cut: list[bool], texts: list[str], limit: int, suffix: int | None,
                    tokenize: Callable[[list[str]], list[list[int]]]) -> None:
    """Rows tokenized with ``limit + 1`` tokens whose ``cut`` flag is set are shortened to ``limit`` in place.

    One content token is dropped before the special-token suffix; the first such row of the batch is checked
    against the tokenizer itself, and when they differ (left truncation, unusual post-processors) every
    cut row is tokenized again at ``limit``.
    """
    idx = [i for i, c in enumerate(cut) if c]
    if not idx:
        return
    if suffix is not None and _cut_one_token(rows[idx[0]], suffix) == tokenize([texts[idx[0]]])[0]:
        for i in idx:
            rows[i] = _cut_one_token(rows[i], suffix)
        return
    for i, row in zip(idx, tokenize([texts[i] for i in idx]), strict=True):
        rows[i] = row


def tokenize_pairs(ds: datasets.Dataset, tokenizer: Any, sources: str, targets: str, cfg: Seq2SeqPreprocessConfig,
                   desc: str) -> tuple[datasets.Dataset, dict[str, int]]:
    """input_ids/attention_mask from ``sources``, labels from ``targets`` through the target side
    (``text_target``), each truncated to its own max length; returns (dataset, truncation counts).

    Each side is tokenized once, one token over its limit: a row that reaches limit + 1 was truncated
    (counted), and is shortened by one content token (checked against the tokenizer on one row per batch).
    """
    ls, lt = cfg.max_source_length, cfg.max_target_length
    suffix = special_token_suffix(tokenizer)
    marian = MarianIds(tokenizer) if MarianIds.handles(tokenizer) else None

    def source_ids(texts: list[str], max_length: int) -> list[list[int]]:
        if marian is not None:  # straight from its SentencePiece model (text/marian.py)
            return marian(texts, max_length)
        if not tokenizer.is_fast:
            return tokenizer(texts, max_length=max_length, truncation=True, return_attention_mask=False)["input_ids"]
        # the same ids from the Rust backend, without offsets and the call's per-row dicts; the backend is in
        # source mode outside a text_target call
        with rust_backend(tokenizer, max_length) as backend:
            return [e.ids for e in backend.encode_batch_fast(texts)]

    same_sides = not has_target_mode(tokenizer)

    def target_ids(texts: list[str], max_length: int) -> list[list[int]]:
        if marian is not None:
            return marian(texts, max_length, target=True)
        if same_sides:  # text_target would tokenize exactly as the source side does
            return source_ids(texts, max_length)
        return tokenizer(text_target=texts, max_length=max_length, truncation=True,
                         return_attention_mask=False)["input_ids"]

    def encode(batch: dict[str, list]) -> pa.Table:
        src = [cfg.source_prefix + s for s in batch[sources]]
        tgt = batch[targets]
        ids = source_ids(src, ls + 1)
        lab = target_ids(tgt, lt + 1)
        src_cut = [len(x) > ls for x in ids]
        tgt_cut = [len(x) > lt for x in lab]
        _truncate_again(ids, src_cut, src, ls, suffix, lambda texts: source_ids(texts, ls))
        _truncate_again(lab, tgt_cut, tgt, lt, suffix, lambda texts: target_ids(texts, lt))
        # an Arrow table with the column types datasets would infer, without its scan of every Python value
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int32())),
                         "attention_mask": list_column(np.ones(int(lengths.sum()), np.int8), lengths),
                         "labels": pa.array(lab, type=pa.list_(pa.int64())),
                         "_src_cut": pa.array(src_cut, type=pa.bool_()), "_tgt_cut": pa.array(tgt_cut, type=pa.bool_())})

    mapped = ds.map(encode, batched=True, batch_size=cfg.map_batch_size,
                    num_proc=cfg.num_proc if cfg.num_proc > 1 else None, remove_columns=ds.column_names, desc=desc,
                    new_fingerprint=fresh_fingerprint())
    src_cut = np.asarray(column_values(mapped, "_src_cut"), dtype=bool)
    tgt_cut = np.asarray(column_values(mapped, "_tgt_cut"), dtype=bool)
    counts = {"source": int(src_cut.sum()), "target": int(tgt_cut.sum()), "examples": int((src_cut | tgt_cut).sum())}
    return mapped.remove_columns(["_src_cut", "_tgt_cut"]), counts


def decode_pairs(tokenizer: Any, preds: list[np.ndarray], labels: list[np.ndarray]) -> tuple[list[str], list[str]]:
    """Decoded (stripped) predictions and references: -100 → pad id before decoding."""
    pad = tokenizer.pad_token_id
    labels = [np.where(row != -100, row, pad) for row in labels]
    decoded_preds = tokenizer.batch_decode([row.tolist() for row in preds], skip_special_tokens=True)
    decoded_labels = tokenizer.batch_decode([row.tolist() for row in labels], skip_special_tokens=True)
    return [p.strip() for p in decoded_preds], [r.strip() for r in decoded_labels]


def generated(pipe: Any, texts: Any, batch_size: int) -> Any:
    """One output dict per text from a translation/summarization pipeline, in order, inputs truncated to the
    model's limit, ``batch_size`` texts per generate() call."""
    for out in pipe((x for x in texts), batch_size=batch_size, truncation=True):
        yield out[0] if isinstance(out, list) else out


def eval_texts(manifest: Any, column: str) -> list[str] | None:
    """A column of the 'eval_texts' split (the eval rows' texts as written in the data), stripped, row for row
    with the eval features; None for datasets prepared before the column was kept."""
    from nlpjobs.data.shards import load_split

    if "eval_texts" not in manifest.splits or column not in manifest.splits["eval_texts"].get("columns", []):
        return None
    return [t.strip() for t in column_values(load_split(manifest, "eval_texts"), column)]


def raw_references(manifest: Any, examples: int) -> list[str] | None:
    """The eval references as written in the data (the 'reference' column of the 'eval_texts' split), row for row
    with the eval features; None for datasets prepared before they were kept (their references are decoded
    from the truncated labels)."""
    from nlpjobs.data.shards import DatasetError

    refs = eval_texts(manifest, "reference")
    if refs is not None and len(refs) != examples:
        raise DatasetError(f"dataset {manifest.uri}: {len(refs)} eval references for {examples} eval rows; rerun "
                           "`nlpjobs preprocess`")
    return refs


def eval_truncation(manifest: Any) -> dict[str, int]:
    """How many eval sources and references preprocess truncated (from the manifest), with the limits."""
    info = manifest.info
    counts = (info.get("truncated_by_side") or {}).get("eval") or {}
    return {"sources": int(counts.get("source", 0)), "references": int(counts.get("target", 0)),
            "max_source_length": info.get("max_source_length"), "max_target_length": info.get("max_target_length")}


def output_checks(outputs: list[str], inputs: list[str], what: str = "generated outputs") -> dict[str, Any]:
    """Empty and collapsed generations: ``empty_outputs`` (empty or whitespace-only), ``distinct_outputs`` and
    ``warnings``: more than half empty, or one output for more than half of the rows (a collapsed model) while
    no input (or reference) repeats that often."""
    n = len(outputs)
    empty = sum(1 for o in outputs if not o.strip())
    counts = Counter(o.strip() for o in outputs if o.strip())
    warnings = []
    if n and empty * 2 > n:
        warnings.append(f"{empty} of {n} {what} are empty: the model generates no text (undertrained, or "
                        "generation_max_length too small); check the train loss")
    if counts:
        text, top = counts.most_common(1)[0]
        same_inputs = Counter(inputs).most_common(1)[0][1] if inputs else 0
        if n >= 3 and top * 2 > n and top > same_inputs:
            warnings.append(f"{top} of {n} {what} are the same text {text[:60]!r}: the model has collapsed to "
                            "one output whatever the input (undertrained); check the train loss")
    return {"empty_outputs": empty, "distinct_outputs": len(counts) + (1 if empty else 0), "warnings": warnings}


def long_inputs(tokenizer: Any, texts: list[str]) -> int | None:
    """The source limit predict truncates to (the tokenizer's model_max_length), when some of ``texts`` exceed it:
    how many do is logged as a warning. None when none is cut (or the tokenizer has no limit)."""
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if not 0 < limit < 1_000_000:
        return None
    lengths = [len(ids) for ids in tokenizer(texts, max_length=limit + 1, truncation=True)["input_ids"]]
    cut = sum(1 for n in lengths if n > limit)
    if cut:
        log.warning("predict: %d of %d inputs are longer than the model's source limit of %d tokens and are "
                    "truncated to it (the output ignores the rest); split long inputs", cut, len(texts), limit)
        return limit
    return None


# ---- the task base ----------------------------------------------------------------------------


class Seq2SeqTask(Task):
    """Shared behaviour of translation and summarization; subclasses add data handling and the metric."""

    preprocess_config: ClassVar[type[PreprocessConfig]] = Seq2SeqPreprocessConfig
    evaluate_config: ClassVar[type[EvaluateConfig]] = Seq2SeqEvaluateConfig
    scratch_archs: ClassVar[tuple[str, ...]] = ()
    """Architectures this task can build from a config ('scratch:<arch>-<size>')."""
    groups_by_length = False  # batches of like-length KDE strings halved BLEU at equal epochs (bench/quality.md)
    output_key: ClassVar[str] = ""
    """The key of the text in each answer of the task's pipeline ('translation_text', 'summary_text')."""

    def validate_job(self, job: JobConfig) -> None:
        super().validate_job(job)
        scratch_spec(job.model.name, self.scratch_archs)

    def is_scratch(self, job: JobConfig) -> bool:
        return scratch_spec(job.model.name, self.scratch_archs) is not None

    def load_tokenizer(self, job: JobConfig) -> Any:
        """The checkpoint's tokenizer; None for scratch: models, whose tokenizer prepare() trains."""
        if self.is_scratch(job):
            return None
        from transformers import AutoTokenizer

        from nlpjobs.models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(job.model.name), revision=job.model.revision)

    def train_tokenizer(self, job: JobConfig, train: datasets.Dataset) -> Any:
        """Train the tokenizer of a scratch: model on the training split (subclasses)."""
        raise NotImplementedError

    # ---- model -----------------------------------------------------------------------------
    def build_model(self, job: JobConfig, manifest: Any, tokenizer: Any) -> Any:
        spec = scratch_spec(job.model.name, self.scratch_archs)
        if spec is None:
            from transformers import AutoModelForSeq2SeqLM

            from nlpjobs.models import resolve_model

            model = AutoModelForSeq2SeqLM.from_pretrained(resolve_model(job.model.name), revision=job.model.revision)
        else:
            model = self.scratch_model(spec[0], SCRATCH_SIZES[spec[0]][spec[1]], tokenizer, manifest)
        check_model_vocab(tokenizer, model, exact=spec is not None)
        if model.config.decoder_start_token_id is None and model.generation_config.decoder_start_token_id is None:
            raise ConfigError(f"model.name: {job.model.name} defines no decoder_start_token_id; "
                              "DataCollatorForSeq2Seq cannot build decoder_input_ids")
        cfg: Seq2SeqEvaluateConfig = job.evaluate  # type: ignore[assignment]
        # stored with the model, so predict generates like evaluation does
        for key, value in cfg.generation_options().items():
            setattr(model.generation_config, key, value)
        return model

    def scratch_model(self, arch: str, sizes: dict[str, Any], tokenizer: Any, manifest: Any) -> Any:
        from transformers import GenerationConfig

        vocab = len(tokenizer)
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        if arch == "marian":
            from transformers import MarianConfig, MarianMTModel

            config = MarianConfig(vocab_size=vocab, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
                                  forced_eos_token_id=eos, **sizes)
            model = MarianMTModel(config)
            # as opus-mt: never generate <pad> (it is the decoder start token)
            model.generation_config = GenerationConfig(decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos,
                                                       forced_eos_token_id=eos, bad_words_ids=[[pad]],
                                                       max_length=sizes["max_position_embeddings"], num_beams=1)
            return model
        if arch == "mt5":
            from transformers import MT5Config, MT5ForConditionalGeneration

            # tied embeddings rescale the decoder output by d_model**-0.5: a sane initial loss from random
            # weights (an untied T5 head starts near loss 30)
            config = MT5Config(vocab_size=vocab, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
                               tie_word_embeddings=True, **sizes)
            model = MT5ForConditionalGeneration(config)
            model.generation_config = GenerationConfig(decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos,
                                                       max_length=64, num_beams=1)
            return model
        raise ConfigError(f"model.name: cannot build architecture {arch!r} from a config")

    def load_trained(self, model_dir: str) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(model_dir)

    def collator(self, tokenizer: Any, model: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def head_batch(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        if "decoder_input_ids" not in batch or "labels" not in batch:
            return None
        return {k: v for k, v in batch.items() if k != "labels"}, batch["labels"]

    # ---- evaluation ------------------------------------------------------------------------
    def generate_and_score(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        """Generate for the whole eval split; decoded predictions/references plus loss and lengths.

        Every process gets the same gathered rows in dataset order (duplicates from uneven batches dropped).
        """
        import torch

        from nlpjobs.tasks.evaluation import collect

        cfg: Seq2SeqEvaluateConfig = ctx.job.evaluate  # type: ignore[assignment]
        acc, tokenizer = ctx.accelerator, ctx.tokenizer
        pad = tokenizer.pad_token_id
        gen_kwargs = cfg.generation_options()

        def forward(wrapped: Any, batch: dict[str, Any]) -> dict[str, Any]:
            # generate() lives on the unwrapped model only
            generated = acc.unwrap_model(wrapped).generate(input_ids=batch["input_ids"],
                                                           attention_mask=batch["attention_mask"], **gen_kwargs)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids") if k in batch}
            if "decoder_input_ids" not in inputs:  # the model shifts the labels itself (and adds a loss we drop)
                inputs["labels"] = batch["labels"]
            logits = wrapped(**inputs).logits
            labels = batch["labels"]
            # [tokens, vocab] rows: cross-entropy over logits.transpose(1, 2) ([batch, vocab, length]) is ~5x slower
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                    ignore_index=-100, reduction="none").view_as(labels)
            return {"generated": generated, "loss_sum": nll.sum(dim=1), "tokens": (labels != -100).sum(dim=1)}

        def step(batch: dict[str, Any], out: dict[str, Any]) -> dict[str, tuple[Any, int]]:
            return {"pred": (out["generated"], pad), "label": (batch["labels"], -100),
                    "loss_sum": (out["loss_sum"], 0), "tokens": (out["tokens"], 0)}

        rows = collect(ctx, model, loader, step, forward=forward)
        preds, refs = decode_pairs(tokenizer, rows["pred"], rows["label"])
        refs = raw_references(ctx.manifest, len(preds)) or refs  # the full references, not the truncated labels
        tokens = float(np.sum(rows["tokens"]))
        special = set(tokenizer.all_special_ids)
        gen_len = float(np.mean([sum(1 for t in row.tolist() if t not in special) for row in rows["pred"]]))
        return {"predictions": preds, "references": refs,
                "eval_loss": float(np.sum(rows["loss_sum"]) / tokens) if tokens else float("nan"),
                "gen_len": gen_len, "examples": len(preds)}

    def generation_report(self, ctx: EvalContext, out: dict[str, Any]) -> dict[str, Any]:
        """The metrics both tasks add: truncated eval sources/references, empty and distinct outputs, warnings."""
        checks = output_checks(out["predictions"], out["references"])
        return {"truncated": eval_truncation(ctx.manifest), **checks}

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        """The task's pipeline ('translation' or 'summarization'), inputs truncated to the model's limit."""
        from transformers import pipeline

        texts = list(inputs)
        pipe = pipeline(self.pipeline_task, model=model_dir, tokenizer=model_dir, device=-1)
        long_inputs(pipe.tokenizer, texts)
        outputs = list(generated(pipe, texts, batch_size=1))
        for warning in output_checks([str(o.get(self.output_key, "")) for o in outputs], texts, "outputs")["warnings"]:
            log.warning("predict: %s", warning)
        return outputs

    def batch_predictor(self, model_dir: str, device: int, batch_size: int) -> Any:
        """The task's pipeline on ``device``, inputs truncated to the model's limit, as :meth:`predict`."""
        from transformers import pipeline

        pipe = pipeline(self.pipeline_task, model=model_dir, tokenizer=model_dir, device=device)
        return lambda inputs: generated(pipe, inputs, batch_size)
