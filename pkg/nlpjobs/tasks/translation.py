"""Translation (English → French by default): KDE4-shaped pairs, Marian, sacreBLEU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow as pa

from nlpjobs.config import ConfigError, JobConfig
from nlpjobs.tasks.base import EvalContext, Prepared, TaskDataError, fresh_fingerprint
from nlpjobs.tasks.seq2seq import (
    Seq2SeqPreprocessConfig,
    Seq2SeqTask,
    check_pairs_left,
    check_text,
    describe,
    eval_texts,
    is_blank,
    marian_tokenizer,
    preprocess_report,
    python_values,
    tokenize_pairs,
)

SRC, TGT = "_source", "_target"


@dataclass
class TranslationPreprocessConfig(Seq2SeqPreprocessConfig):
    """Pairs from a `translation` column {<source_lang>: ..., <target_lang>: ...} (the Hub's kde4 shape)."""

    source_lang: str = "en"
    """Key of the source text inside the translation column."""
    target_lang: str = "fr"
    """Key of the target text inside the translation column."""
    split_train_size: float | None = None
    """Carve the eval split out of the training split with train_test_split(train_size=<this>,
    seed=split_seed), as the course does for kde4 (train only): 0.9. Requires data.eval_split equal to
    data.train_split; data.max_eval_examples then caps the carved split. null: use data.eval_split as is."""
    split_seed: int = 20
    """Seed of the train/eval carve (the course uses 20)."""
    joint_vocab: bool = False
    """scratch: models only: one SentencePiece model trained on both languages (vocab_size pieces in all)
    instead of one per side. Names, placeholders, markup and paths, which UI strings keep untranslated, then
    have the same ids in the source and the target, so a model with tied embeddings can learn to copy them."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.split_train_size is not None and not 0 < self.split_train_size < 1:
            raise ConfigError(f"{prefix}.split_train_size: got {self.split_train_size}, must be in (0, 1)")
        if not self.source_lang or not self.target_lang or self.source_lang == self.target_lang:
            raise ConfigError(f"{prefix}.source_lang/target_lang: must be two different language keys, "
                              f"got {self.source_lang!r} → {self.target_lang!r}")


DROPPED_WHY = "dropped (missing or empty source or target)"


def extract_pairs(ds: datasets.Dataset, source_lang: str, target_lang: str, split: str) -> tuple[datasets.Dataset, int]:
    """Flat (_source, _target) string columns from the translation objects; rows with a missing, null or empty
    (whitespace-only) side are dropped and counted. A language key absent from every row, a translation value
    that is not an object, a text that is not a string, or no pair left is a TaskDataError."""
    feature = ds.features.get("translation")
    keys = set(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
    if keys and not {source_lang, target_lang} <= keys:
        raise TaskDataError(f"translation: split {split!r} has languages {sorted(keys)} in its translation column, "
                            f"not {source_lang!r} and {target_lang!r}; set preprocess.source_lang/target_lang")
    src, tgt, seen = [], [], set()
    pairs = python_values(ds, "translation")
    for i, pair in enumerate(pairs):
        if pair is not None and not isinstance(pair, dict):
            raise TaskDataError(f"translation: split {split!r} row {i}: the translation column holds {describe(pair)}, "
                                f'expected an object {{"{source_lang}": "...", "{target_lang}": "..."}} (the Hub\'s '
                                "kde4/opus_books shape); map the column holding such objects with data.columns.translation")
        pair = pair or {}
        seen.update(pair)
        s, t = pair.get(source_lang), pair.get(target_lang)
        row = repr(pair)
        where = f"translation: split {split!r} row {i} {row[:80]}{'...' if len(row) > 80 else ''}"
        check_text(s, f"{where}: the {source_lang!r} text")
        check_text(t, f"{where}: the {target_lang!r} text")
        if not (is_blank(s) or is_blank(t)):
            src.append(s)
            tgt.append(t)
    if not src and seen and not {source_lang, target_lang} <= seen:
        raise TaskDataError(f"translation: split {split!r} has languages {sorted(seen)} in its translation column, "
                            f"not {source_lang!r} and {target_lang!r}; set preprocess.source_lang/target_lang")
    check_pairs_left("translation", split, len(src), len(pairs),
                     f"lack a non-empty {source_lang!r} or {target_lang!r} text")
    flat = datasets.Dataset(pa.table({SRC: pa.array(src, pa.string()), TGT: pa.array(tgt, pa.string())}),
                            fingerprint=fresh_fingerprint())
    return flat, len(pairs) - len(src)


def bleu(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """sacreBLEU with one reference per prediction, passed as a list of references each."""
    from nlpjobs.metrics import load_metric

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return load_metric("sacrebleu").compute(predictions=predictions, references=[[r] for r in references])


def copy_baseline(manifest: Any, references: list[str]) -> float | None:
    """BLEU of the sources themselves scored as translations of the same rows: what a model that learned only
    to copy its input would get (names, paths and numbers pass through untranslated). None for datasets
    prepared without the raw eval texts."""
    sources = eval_texts(manifest, "source")
    return None if sources is None else float(bleu(sources[:len(references)], references)["score"])


class TranslationTask(Seq2SeqTask):
    name = "translation"
    description = "Translation (en→fr) with Marian and sacreBLEU"
    preprocess_config = TranslationPreprocessConfig
    required_columns = ("translation",)
    pipeline_task = "translation"
    output_key = "translation_text"
    predict_columns = ("translation",)
    preprocess_version = "2"  # 2: empty sides dropped; eval_texts split with the raw references
    headline_metric = "bleu"
    scratch_archs = ("marian",)

    def validate_job(self, job: JobConfig) -> None:
        super().validate_job(job)
        cfg: TranslationPreprocessConfig = job.preprocess  # type: ignore[assignment]
        if cfg.split_train_size is not None and job.data.eval_split != job.data.train_split:
            raise ConfigError(f"data.eval_split: preprocess.split_train_size carves the eval split out of "
                              f"{job.data.train_split!r}; set data.eval_split: {job.data.train_split} too "
                              f"(got {job.data.eval_split!r}), or drop split_train_size to use that split")

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: TranslationPreprocessConfig = job.preprocess  # type: ignore[assignment]
        self.check_columns(raw)
        train, eval_ = raw["train"], raw["eval"]
        if cfg.split_train_size is not None:
            # split = raw["train"].train_test_split(train_size=0.9, seed=20); "test" → validation
            carved = train.train_test_split(train_size=cfg.split_train_size, seed=cfg.split_seed)
            train, eval_ = carved["train"], carved["test"]
            if job.data.max_eval_examples and job.data.max_eval_examples < len(eval_):
                eval_ = eval_.select(range(job.data.max_eval_examples))
        pairs, dropped = {}, {}
        for split, ds in (("train", train), ("eval", eval_)):
            pairs[split], dropped[split] = extract_pairs(ds, cfg.source_lang, cfg.target_lang, split)
        trained = None
        if tokenizer is None:  # scratch: model: SentencePiece per side, trained on the training pairs only
            n = cfg.tokenizer_max_sentences
            trained = marian_tokenizer(pairs["train"][SRC][:n], pairs["train"][TGT][:n], cfg.vocab_size,
                                       max(cfg.max_source_length, cfg.max_target_length), joint=cfg.joint_vocab)
            tokenizer = trained
        splits, truncated, detail = {}, {}, {}
        for split, ds in pairs.items():
            splits[split], counts = tokenize_pairs(ds, tokenizer, SRC, TGT, cfg, f"tokenize {split}")
            truncated[split], detail[split] = counts["examples"], counts
        # the raw references, row for row with the eval features: evaluate scores against them, not against
        # the decoded (truncated) labels
        splits["eval_texts"] = pairs["eval"].rename_columns({SRC: "source", TGT: "reference"})
        totals = {split: len(ds) + dropped[split] for split, ds in pairs.items()}
        info = {"source_lang": cfg.source_lang, "target_lang": cfg.target_lang,
                "max_source_length": cfg.max_source_length, "max_target_length": cfg.max_target_length,
                "truncated_examples": truncated, "truncated_by_side": detail, "dropped_incomplete_pairs": dropped,
                "split_train_size": cfg.split_train_size, "tokenizer_trained": trained is not None,
                "report": preprocess_report("translation", totals,
                                            {split: [(n, DROPPED_WHY)] for split, n in dropped.items()}, detail, cfg)}
        return Prepared(splits=splits, info=info, tokenizer=trained)

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        out = self.generate_and_score(ctx, model, loader)
        result = bleu(out["predictions"], out["references"])
        copy = copy_baseline(ctx.manifest, out["references"])
        return {"bleu": float(result["score"]), **({"copy_bleu": copy} if copy is not None else {}),
                "eval_loss": out["eval_loss"], "gen_len": out["gen_len"],
                "examples": out["examples"], **self.generation_report(ctx, out),
                "samples": {str(i): {"prediction": p, "reference": r} for i, (p, r) in
                            enumerate(zip(out["predictions"][:3], out["references"][:3]))}}

    def dataset_inputs(self, job: JobConfig, columns: dict[str, list[Any]], first_row: int) -> list[Any]:
        """The source side (preprocess.source_lang) of each row's translation object."""
        lang = job.preprocess.source_lang  # type: ignore[attr-defined]
        out = []
        for i, pair in enumerate(columns["translation"]):
            text = pair.get(lang) if isinstance(pair, dict) else None
            if not isinstance(text, str):
                raise TaskDataError(f"translation: row {first_row + i}: the translation column holds {describe(pair)}, "
                                    f'expected an object with the source text under {lang!r} ({{"{lang}": "..."}}); '
                                    "set preprocess.source_lang, or map the column with predict.dataset.columns.translation")
            out.append(text)
        return out

    def summary(self, metrics: dict[str, Any]) -> str:
        parts = [f"BLEU={metrics['bleu']:.2f}"] if "bleu" in metrics else []
        if parts and isinstance(metrics.get("copy_bleu"), float):
            parts[0] += f" (copy baseline {metrics['copy_bleu']:.2f}, {metrics['bleu'] - metrics['copy_bleu']:+.2f})"
        if isinstance(metrics.get("eval_loss"), float):
            parts.append(f"eval_loss={metrics['eval_loss']:.4f}")
        if isinstance(metrics.get("gen_len"), float):
            parts.append(f"gen_len={metrics['gen_len']:.1f}")
        return "  ".join(parts) or str(metrics)
