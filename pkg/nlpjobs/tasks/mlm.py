"""Masked-LM domain adaptation: untruncated tokenization, group_texts chunks, random or
whole-word masking, a fixed-mask eval set, and perplexity = exp(mean masked-token cross-entropy)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import torch

from nlpjobs.config import ConfigError, EvaluateConfig, JobConfig, PreprocessConfig
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
from nlpjobs.text.encode import encode_ids, flat_ids, rust_backend

DEFAULT_PROBABILITY = {"standard": 0.15, "whole_word": 0.2}
MODEL_COLUMNS = ("input_ids", "attention_mask", "labels")
MASK_PLACEHOLDERS = ("[MASK]", "<mask>")


@dataclass
class MlmPreprocessConfig(PreprocessConfig):
    """Untruncated tokenization, chunking into fixed-size blocks, downsampling and the fixed eval masks."""

    chunk_size: int = 128
    """Tokens per block. The texts of each map batch (map_batch_size) are concatenated and cut into blocks;
    the remainder of each batch is dropped. At most the model's maximum positions."""
    collator: Literal["standard", "whole_word"] = "standard"
    """'standard': DataCollatorForLanguageModeling (per token, 80% [MASK] / 10% random / 10% kept);
    'whole_word': all tokens of a selected word become [MASK]."""
    mlm_probability: float | None = None
    """Masking probability, per token (standard) or per word (whole_word); null: 0.15 / 0.2 as the course."""
    train_size: int | None = None
    """Keep this many training chunks (seeded random sample); null keeps all."""
    test_size: int | None = None
    """Keep this many evaluation chunks (seeded random sample); null keeps all (required with eval_from=train)."""
    eval_from: Literal["eval_split", "train"] = "eval_split"
    """Where eval chunks come from: the data.eval_split, or, as the course does, a disjoint seeded
    train_test_split of the training chunks (train_size + test_size; the eval split is then not used)."""
    seed: int = 42
    """Seed of the downsampling and of the fixed eval masks (the same seed gives the same eval set)."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.chunk_size < 8:
            raise ConfigError(f"{prefix}.chunk_size: got {self.chunk_size}, must be >= 8")
        if self.mlm_probability is not None and not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"{prefix}.mlm_probability: got {self.mlm_probability}, must be in (0, 1)")
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{prefix}.{key}: got {value}, must be >= 1 (or null to keep all chunks)")
        if self.eval_from == "train" and self.test_size is None:
            raise ConfigError(f"{prefix}.test_size: eval_from=train carves the eval chunks out of the training "
                              "chunks and needs their number, e.g. test_size: 1000")

    @property
    def probability(self) -> float:
        return self.mlm_probability if self.mlm_probability is not None else DEFAULT_PROBABILITY[self.collator]


# ---- preprocessing ------------------------------------------------------------------------------


def group_flat(ids: np.ndarray, chunk_size: int, word_ids: list[list[int | None]] | None = None) -> dict[str, Any]:
    """The course's ``group_texts`` of one unpadded tokenized batch, given as its ids row after row
    (``ids``, flat) and, for whole-word masking, its word ids per row: the batch concatenated, the remainder
    after the last full ``chunk_size`` block dropped, sliced into blocks, ``labels`` a copy of ``input_ids``.

    Integer columns come back as [chunks, chunk_size] int64 arrays (datasets stores them without inspecting
    every Python int), the attention mask all ones as the tokenizer gives it without padding; ``word_ids``,
    which holds None for special tokens, as lists of lists.
    """
    total = len(ids) // chunk_size * chunk_size
    input_ids = ids[:total].astype(np.int64).reshape(-1, chunk_size)
    result: dict[str, Any] = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
    if word_ids is not None:
        words = list(itertools.islice(itertools.chain.from_iterable(word_ids), total))
        result["word_ids"] = [words[i:i + chunk_size] for i in range(0, total, chunk_size)]
    result["labels"] = input_ids.copy()
    return result


def word_groups(word_ids: list[int | None]) -> list[list[int]]:
    """Token positions of each word. Special tokens (None) belong to no word; a word starts where the
    word id changes or after a special token (so words of two documents joined in one chunk never merge)."""
    groups: list[list[int]] = []
    previous: int | None = None
    for position, word_id in enumerate(word_ids):
        if word_id is None:
            previous = None
            continue
        if word_id != previous:
            groups.append([])
        groups[-1].append(position)
        previous = word_id
    return groups


def whole_word_mask(input_ids: list[int], word_ids: list[int | None], probability: float, mask_token_id: int,
                    generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
    """select each word with ``probability``; all its tokens become [MASK] (never random or kept)
    and carry the original id as label; every other label is -100."""
    groups = word_groups(word_ids)
    selected = torch.rand(len(groups), generator=generator) < probability
    new_ids, labels = list(input_ids), [-100] * len(input_ids)
    for group, chosen in zip(groups, selected.tolist()):
        if chosen:
            for position in group:
                labels[position] = input_ids[position]
                new_ids[position] = mask_token_id
    return new_ids, labels


class MlmCollator:
    """Masks raw chunks (labels == input_ids, as group_texts leaves them) on the fly; rows of the fixed-mask
    eval set (already masked at preprocess time) pass through unchanged, so evaluation is deterministic.

    ``word_ids`` is popped from every row and only used by whole-word masking.
    """

    def __init__(self, tokenizer: Any, kind: str = "standard", probability: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token_id is None:
            raise ConfigError("model.name: the tokenizer has no mask token; masked-LM training needs one")
        self.kind = kind
        self.probability = probability if probability is not None else DEFAULT_PROBABILITY[kind]
        self.mask_token_id = tokenizer.mask_token_id
        self.generator = generator
        self.standard = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=self.probability)
        # A dedicated generator (not the library's `seed`, which ignores 0); None: the global RNG, which the
        # training loop seeds and restores on resume.
        self.standard.generator = generator

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        from transformers import default_data_collator

        rows = [{k: v for k, v in f.items() if k in MODEL_COLUMNS} for f in features]
        word_ids = [f.get("word_ids") for f in features]
        raw = [_as_list(r["labels"]) == _as_list(r["input_ids"]) for r in rows]
        if not any(raw):
            return default_data_collator(rows)
        if not all(raw):
            raise TaskDataError("mlm: a batch mixes raw and pre-masked chunks; the train split must hold raw "
                                "chunks (labels == input_ids) and the eval split pre-masked ones")
        if self.kind == "standard":
            return self.standard(rows)
        if any(w is None for w in word_ids):
            raise TaskDataError("mlm: whole-word masking needs the word_ids column in the train split; "
                                "preprocess again with preprocess.collator=whole_word")
        for row, ids in zip(rows, word_ids):
            row["input_ids"], row["labels"] = whole_word_mask(_as_list(row["input_ids"]), _as_list(ids),
                                                              self.probability, self.mask_token_id, self.generator)
        return default_data_collator(rows)


@contextlib.contextmanager
def head_on_masked_positions(model: Any, masked: torch.Tensor) -> Iterator[bool]:
    """While active, the encoder's output is cut to the ``masked`` positions before the masked-LM head, so the
    head (its transform and the vocabulary-sized projection, about half the FLOPs of a small encoder) runs on
    the ~15% of tokens that carry a label instead of all of them. ``model(...)`` then returns logits of shape
    [1, masked.sum(), vocab], in ``masked``'s row-major order. Yields False (and changes nothing) for a model
    without a separate base model; the call still goes through ``model`` itself, so DDP/DeepSpeed wrappers run.
    """
    inner = getattr(model, "module", model)  # DDP / DeepSpeed wrap the module
    base = getattr(inner, "base_model", None)
    if not isinstance(base, torch.nn.Module) or base is inner:
        yield False
        return

    def keep_masked(_module: Any, _args: Any, output: Any) -> Any:
        hidden = output[0][masked].unsqueeze(0)
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        output[next(iter(output.keys()))] = hidden
        return output

    handle = base.register_forward_hook(keep_masked)
    try:
        yield True
    finally:
        handle.remove()


def masked_lm_loss(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Mean cross-entropy over the labelled (masked) tokens, the masked-LM head run on those tokens only; the
    same loss as ``model(**batch).loss`` (which runs the head on every token)."""
    import torch.nn.functional as F

    labels = batch["labels"]
    masked = labels != -100
    with head_on_masked_positions(model, masked) as sparse:
        if not sparse:
            return model(**batch).loss
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[masked])


def _as_list(value: Any) -> list[Any]:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def mask_eval_split(ds: datasets.Dataset, tokenizer: Any, kind: str, probability: float, seed: int,
                    batch_size: int = 1000) -> datasets.Dataset:
    """The fixed-mask eval set: every chunk masked once, with a generator seeded by ``seed``, so two
    preprocess runs give identical masks and evaluation needs no further randomness."""
    collator = MlmCollator(tokenizer, kind, probability, torch.Generator().manual_seed(seed))
    columns = ["input_ids", "attention_mask", "labels"] + (["word_ids"] if kind == "whole_word" else [])
    out: dict[str, list[np.ndarray]] = {"input_ids": [], "attention_mask": [], "labels": []}
    grid = _chunk_grid(ds) if kind == "standard" else None
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    for start in range(0, len(ds), batch_size):
        if grid is not None:  # the collator's masking on whole arrays: same generator draws, same masks
            ids, attention = grid[0][start:start + batch_size], grid[1][start:start + batch_size]
            inputs = torch.from_numpy(ids.astype(np.int64))
            masked = dict(zip(("input_ids", "labels"), collator.standard.torch_mask_tokens(
                inputs, special_tokens_mask=torch.isin(inputs, special_ids))))
            masked["attention_mask"] = torch.from_numpy(attention)
        else:
            batch = ds.select_columns(columns)[start:start + batch_size]
            masked = collator([dict(zip(batch, values)) for values in zip(*batch.values())])
        for key in out:
            out[key].append(masked[key].numpy())  # [rows, chunk_size]: every chunk has the same length
    dtypes = {"input_ids": np.int32, "attention_mask": np.int8, "labels": np.int64}
    arrays = {k: np.concatenate(v).astype(dtypes[k], copy=False) if v else np.zeros((0, 0), dtypes[k])
              for k, v in out.items()}
    return datasets.Dataset(pa.table({k: list_column(v.reshape(-1), np.full(len(v), v.shape[1]))
                                      for k, v in arrays.items()}), fingerprint=fresh_fingerprint())


def _chunk_grid(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(input_ids, attention_mask) as [rows, chunk_size] arrays read from Arrow, when every chunk is raw
    (labels == input_ids) and equally long; else None (the collator then pads and checks row by row)."""
    import pyarrow.compute as pc

    if len(ds) == 0:
        return None
    table = ds.select_columns(["input_ids", "attention_mask", "labels"]).with_format("arrow")[:]
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max() or lengths[0] == 0:
        return None
    flat = {k: pc.list_flatten(table.column(k)).to_numpy(zero_copy_only=False).reshape(len(ds), -1)
            for k in table.column_names}
    if flat["attention_mask"].shape != flat["input_ids"].shape or not np.array_equal(flat["labels"], flat["input_ids"]):
        return None
    return flat["input_ids"], flat["attention_mask"].astype(np.int64)


def max_positions(model_name: str, revision: str | None, tokenizer: Any) -> int | None:
    """The longest input the model accepts: the smaller of the tokenizer's model_max_length and the model's
    position embeddings (None when neither is known)."""
    from transformers import AutoConfig

    from nlpjobs.models import resolve_model

    limits = []
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    config = AutoConfig.from_pretrained(resolve_model(model_name), revision=revision)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    return min(limits) if limits else None


def check_chunk_size(chunk_size: int, limit: int | None, model_name: str) -> None:
    if limit is not None and chunk_size > limit:
        raise ConfigError(f"preprocess.chunk_size: {chunk_size} is larger than the {limit} positions "
                          f"{model_name} accepts; set preprocess.chunk_size <= {limit} (the course uses 128)")


class MlmTask(Task):
    name = "mlm"
    description = "Masked-LM domain adaptation with fixed-mask perplexity"
    preprocess_config = MlmPreprocessConfig
    evaluate_config = EvaluateConfig
    required_columns = ("text",)
    model_columns = ("input_ids", "attention_mask", "labels", "word_ids")
    pipeline_task = "fill-mask"
    batch_predict_unsupported = ("fill-mask predicts the words behind [MASK] placeholders, which a dataset's texts do "
                                 "not hold; predict chosen texts with `nlpjobs predict --input-file`")
    preprocess_version = "1"
    headline_metric = "perplexity"

    def __init__(self) -> None:
        self.masking: tuple[str, float] = ("standard", DEFAULT_PROBABILITY["standard"])

    def input_problem(self, item: Any) -> str | None:
        """Text with a mask placeholder ([MASK] or <mask>; predict puts the model's own mask token there)."""
        problem = super().input_problem(item)
        if problem is None and not any(placeholder in item for placeholder in MASK_PLACEHOLDERS):
            problem = f"{item!r} has no [MASK] token to fill; e.g. 'This is a great [MASK].' ([MASK] or <mask>)"
        return problem

    def load_tokenizer(self, job: JobConfig) -> Any:
        tok = super().load_tokenizer(job)
        if tok.mask_token is None:
            raise ConfigError(f"model.name: {job.model.name!r} has no mask token; masked-LM adaptation needs an "
                              "encoder trained with one (BERT, DistilBERT, RoBERTa...)")
        # preprocess loads the tokenizer before the raw data: a chunk_size the model cannot take fails here
        check_chunk_size(job.preprocess.chunk_size,  # type: ignore[attr-defined]
                         max_positions(job.model.name, job.model.revision, tok), job.model.name)
        return tok

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: MlmPreprocessConfig = job.preprocess  # type: ignore[assignment]
        self.check_columns(raw)
        check_chunk_size(cfg.chunk_size, max_positions(job.model.name, job.model.revision, tokenizer),
                         job.model.name)
        # Texts longer than the model's limit are expected here: they are cut into chunks.
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
        num_proc = cfg.num_proc if cfg.num_proc > 1 else None

        whole_word = cfg.collator == "whole_word"

        def tokenize_and_group(batch: dict[str, list]) -> dict[str, Any]:
            texts = batch["text"]
            if any(not isinstance(t, str) for t in texts):
                bad = next(t for t in texts if not isinstance(t, str))
                raise TaskDataError(f"mlm: the text column holds a {type(bad).__name__} ({bad!r}); every row "
                                    "needs a string")
            # no truncation: long texts are chunked
            if not whole_word:
                return group_flat(encode_ids(tokenizer, texts)[0], cfg.chunk_size)
            with rust_backend(tokenizer) as backend:  # only whole-word masking needs to know where words start
                encodings = backend.encode_batch(texts)
            return group_flat(flat_ids(encodings)[0], cfg.chunk_size, [e.word_ids for e in encodings])

        def chunks(split: str) -> datasets.Dataset:
            # one map: the course tokenizes in batches of map_batch_size rows and then groups the same batches
            ds = raw[split]
            grouped = ds.map(tokenize_and_group, batched=True, batch_size=cfg.map_batch_size, num_proc=num_proc,
                             remove_columns=ds.column_names, desc=f"tokenize and group {split}",
                             new_fingerprint=fresh_fingerprint())
            if len(grouped) == 0:
                tokens = sum(len(x) for x in tokenizer(column_values(ds, "text"))["input_ids"])
                raise TaskDataError(f"mlm: the {split} split has {tokens} tokens, not one chunk of "
                                    f"{cfg.chunk_size}; use more text or a smaller preprocess.chunk_size")
            return grouped

        train = chunks("train")
        available = {"train": len(train)}
        if cfg.eval_from == "train":
            test_size = int(cfg.test_size or 0)
            n_train = cfg.train_size if cfg.train_size is not None else len(train) - test_size
            if n_train < 1 or n_train + test_size > len(train):
                raise TaskDataError(f"mlm: preprocess.train_size + test_size = {n_train + test_size} but the "
                                    f"training data gives only {len(train)} chunks of {cfg.chunk_size}; lower them")
            parts = train.train_test_split(train_size=cfg.train_size, test_size=cfg.test_size, seed=cfg.seed)
            train, evaluation = parts["train"], parts["test"]
        else:
            evaluation = chunks("eval")
            available["eval"] = len(evaluation)
            train = _downsample(train, cfg.train_size, cfg.seed, "train_size")
            evaluation = _downsample(evaluation, cfg.test_size, cfg.seed, "test_size")
        train, evaluation = train.flatten_indices(), evaluation.flatten_indices()

        kind, probability = cfg.collator, cfg.probability
        eval_masked = mask_eval_split(evaluation, tokenizer, kind, probability, cfg.seed)
        masked_tokens = int(np.count_nonzero(np.asarray(column_values(eval_masked, "labels")) != -100))  # equal-length rows
        if masked_tokens == 0:
            raise TaskDataError("mlm: the fixed eval masks hide no token; use more eval chunks or a higher "
                                "preprocess.mlm_probability")
        return Prepared(splits={"train": train, "eval": eval_masked},
                        info={"chunk_size": cfg.chunk_size, "collator": kind, "mlm_probability": probability,
                              "chunks_available": available, "eval_masked_tokens": masked_tokens,
                              "eval_from": cfg.eval_from, "seed": cfg.seed})

    def build_model(self, job: JobConfig, manifest: Any, tokenizer: Any) -> Any:
        from transformers import AutoModelForMaskedLM

        from nlpjobs.models import resolve_model

        info = manifest.info
        self.masking = (info.get("collator", "standard"), float(info.get("mlm_probability", 0.15)))
        model = AutoModelForMaskedLM.from_pretrained(resolve_model(job.model.name), revision=job.model.revision)
        limit = getattr(model.config, "max_position_embeddings", None)
        check_chunk_size(int(info.get("chunk_size", 0)), limit, job.model.name)
        if len(tokenizer) > model.config.vocab_size:
            raise TaskDataError(f"mlm: the dataset's tokenizer has {len(tokenizer)} tokens but {job.model.name} "
                                f"embeds only {model.config.vocab_size}; preprocess with this model's tokenizer")
        return model

    def load_trained(self, model_dir: str) -> Any:
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_pretrained(model_dir)

    def collator(self, tokenizer: Any, model: Any) -> Any:
        kind, probability = self.masking
        return MlmCollator(tokenizer, kind, probability)

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        return masked_lm_loss(model, batch)

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        import torch.nn.functional as F

        from nlpjobs.tasks.evaluation import collect

        def forward(m: Any, batch: dict[str, Any]) -> Any:
            with head_on_masked_positions(m, batch["labels"] != -100):
                return m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

        def step(batch: dict[str, Any], outputs: Any) -> dict[str, tuple[torch.Tensor, int]]:
            labels = batch["labels"]
            masked = labels != -100
            logits = outputs.logits  # [1, masked tokens, vocab] (head on masked positions) or [rows, length, vocab]
            logits = logits[masked] if logits.shape[:-1] == labels.shape else logits.reshape(-1, logits.size(-1))
            token_nll = F.cross_entropy(logits.float(), labels[masked], reduction="none")
            rows = masked.nonzero()[:, 0]
            nll = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
            nll.index_add_(0, rows, token_nll.double())
            return {"nll": (nll, 0), "count": (masked.sum(dim=1), 0)}

        rows = collect(ctx, model, loader, step, forward=forward)
        total_nll = float(sum(float(x) for x in rows["nll"]))
        count = int(sum(int(x) for x in rows["count"]))
        if count == 0:
            raise TaskDataError("mlm: the eval split has no masked token to score")
        mean_loss = total_nll / count
        metrics: dict[str, Any] = {"perplexity": perplexity(mean_loss), "eval_loss": mean_loss,
                                   "examples": len(rows["nll"]), "masked_tokens": count}
        before = _before_training(ctx.job)
        if before is not None:
            metrics["perplexity_before_training"] = before
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        text = f"perplexity={metrics.get('perplexity', float('nan')):.4f}"
        if "eval_loss" in metrics:
            text += f"  eval_loss={metrics['eval_loss']:.4f}"
        if "perplexity_before_training" in metrics:
            text += f"  (before training: perplexity={metrics['perplexity_before_training']:.4f})"
        return text

    def predict(self, model_dir: str, inputs: list[Any]) -> list[Any]:
        from transformers import pipeline

        pipe = pipeline("fill-mask", model=model_dir, tokenizer=model_dir, device=-1, top_k=5)
        mask = pipe.tokenizer.mask_token
        out = []
        for text in inputs:
            for placeholder in MASK_PLACEHOLDERS:
                text = text.replace(placeholder, mask)
            result = pipe(text)
            per_mask = result if isinstance(result[0], list) else [result]
            fills = [[{"token_str": r["token_str"], "score": round(float(r["score"]), 6)} for r in options]
                     for options in per_mask]
            out.append(fills[0] if len(fills) == 1 else fills)
        return out


def _downsample(ds: datasets.Dataset, size: int | None, seed: int, key: str) -> datasets.Dataset:
    if size is None:
        return ds
    if size > len(ds):
        raise TaskDataError(f"mlm: preprocess.{key}={size} but only {len(ds)} chunks exist; lower it or set null")
    return ds.shuffle(seed=seed).select(range(size))


def _before_training(job: JobConfig) -> float | None:
    """The perplexity measured before training (train.eval_before_training) recorded in the run, if any."""
    from nlpjobs import paths, storage

    uri = storage.join(paths.run_uri(job), "metrics.json")
    try:
        if not storage.exists(uri):
            return None
        value = storage.read_json(uri).get("train", {}).get("before_training", {}).get("perplexity")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None
