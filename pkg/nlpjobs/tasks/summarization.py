"""Bilingual (English + Spanish) summarization: body → short title, mT5, ROUGE beside lead-3."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from nlpjobs.config import ConfigError, JobConfig
from nlpjobs.tasks.base import EvalContext, Prepared, TaskDataError, column_values, fresh_fingerprint
from nlpjobs.tasks.seq2seq import (
    Seq2SeqEvaluateConfig,
    Seq2SeqPreprocessConfig,
    Seq2SeqTask,
    check_pairs_left,
    check_text,
    is_blank,
    preprocess_report,
    python_values,
    t5_tokenizer,
    tokenize_pairs,
)
from nlpjobs.text.sentences import SUPPORTED, lead_n, sentences_newline

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass
class SummarizationPreprocessConfig(Seq2SeqPreprocessConfig):
    """Body → title pairs, short-title filter, bilingual mix."""

    max_source_length: int = 512
    """Body tokens per example (512); longer bodies are truncated and counted."""
    max_target_length: int = 30
    """Title tokens per example (30)."""
    min_target_words: int = 3
    """Keep examples whose title has at least this many whitespace-separated words (the course keeps
    len(title.split()) > 2, since 1-2 word titles teach the model to emit 1-2 words); 0 keeps all."""
    languages: list[str] = field(default_factory=lambda: ["en", "es"])
    """Languages kept (rows are matched on the 'language' column; en and es have sentence splitters)."""
    default_language: str = "en"
    """Language of data without a 'language' column."""
    language_configs: dict[str, str] = field(default_factory=dict)
    """Hub sources with one configuration per language, e.g. {en: english, es: spanish}: data.config_name
    is loaded by the stage, the other configurations here are loaded the same way (columns mapping and
    data.max_*_examples apply per language) and concatenated with a 'language' column."""
    shuffle_seed: int = 42
    """Seed of the shuffle after concatenating the languages (the course: .shuffle(seed=42))."""
    eval_sample: int | None = None
    """Keep the first N eval examples after filtering and the bilingual shuffle (data.max_eval_examples
    cuts before, in source order, which may drop a whole language)."""
    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        unsupported = [x for x in [*self.languages, self.default_language] if x not in SUPPORTED]
        if unsupported:
            raise ConfigError(f"{prefix}.languages/default_language: {unsupported} not supported; sentence "
                              f"splitting (ROUGE-Lsum, lead-3) exists for {list(SUPPORTED)}")
        if not self.languages:
            raise ConfigError(f"{prefix}.languages: must name at least one language")
        if self.min_target_words < 0:
            raise ConfigError(f"{prefix}.min_target_words must be >= 0")
        if self.eval_sample is not None and self.eval_sample < 1:
            raise ConfigError(f"{prefix}.eval_sample: must be >= 1 or null")


@dataclass
class SummarizationEvaluateConfig(Seq2SeqEvaluateConfig):
    """Generation for summaries (titles are short) and the lead-N baseline they are scored beside."""

    generation_max_length: int | None = 30
    """max_length passed to generate() (the target length, 30)."""
    lead_sentences: int = 3
    """Sentences of the lead-N baseline (lead-3), scored on the same eval rows and references as the model."""

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.lead_sentences < 1:
            raise ConfigError(f"{prefix}.lead_sentences: got {self.lead_sentences}, must be >= 1")


def long_titles(bodies: list[Any], titles: list[Any], min_words: int) -> np.ndarray:
    """Which rows have a non-empty body and a non-empty title of at least ``min_words`` words."""
    return np.fromiter((isinstance(b, str) and bool(b.strip()) and isinstance(t, str)
                        and len(t.split()) >= max(min_words, 1) for b, t in zip(bodies, titles)), bool, len(titles))


def complete_pairs(bodies: list[Any], titles: list[Any], split: str) -> np.ndarray:
    """Which rows have a non-empty body and title; a body or title that is not text (a number, a list...) is a
    TaskDataError naming the row."""
    for name, values in (("body", bodies), ("title", titles)):
        for i, value in enumerate(values):
            check_text(value, f"summarization: split {split!r} row {i}: the {name}")
    return np.fromiter((not (is_blank(b) or is_blank(t)) for b, t in zip(bodies, titles)), bool, len(titles))


ROUGE_BOOTSTRAP_SEED = 0


def rouge_scores(predictions: list[str], references: list[str], languages: list[str],
                 predictions_split: bool = False) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum F-measure × 100 (4 decimals), stemmed, one sentence per line;
    ``predictions_split``: the predictions already hold one sentence per line (lead-N).

    The bootstrap's resamples are seeded (``ROUGE_BOOTSTRAP_SEED``): the same predictions score the same in
    every run and process (evaluate would seed it from NumPy's state at load time, which differs from
    process to process), and the model and its lead-N baseline over the same rows are resampled with the
    same indices."""
    from nlpjobs.metrics import load_metric

    preds = predictions if predictions_split else [sentences_newline(p, lang) for p, lang in zip(predictions, languages)]
    refs = [sentences_newline(r, lang) for r, lang in zip(references, languages)]
    result = load_metric("rouge", seed=ROUGE_BOOTSTRAP_SEED).compute(predictions=preds, references=refs,
                                                                     use_stemmer=True)
    return {k: round(float(result[k]) * 100, 4) for k in ROUGE_KEYS}


def lead_baseline(bodies: list[str], references: list[str], languages: list[str], n: int = 3) -> dict[str, float]:
    """Lead-n ROUGE: the first n sentences of each body, one per line as split, scored against the references
    (as the course scores its three_sentence_summary, without splitting the lead again)."""
    leads = [lead_n(b, n, lang) for b, lang in zip(bodies, languages)]
    return rouge_scores(leads, references, languages, predictions_split=True)


def baseline_gate(model: dict[str, Any], baseline: dict[str, Any]) -> dict[str, bool]:
    """Per ROUGE variant: does the model reach the baseline? (check each, not only rouge1)."""
    return {k: float(model[k]) >= float(baseline[k]) for k in ROUGE_KEYS if k in model and k in baseline}


class SummarizationTask(Seq2SeqTask):
    name = "summarization"
    description = "Bilingual en+es summarization with mT5, ROUGE beside lead-3"
    preprocess_config = SummarizationPreprocessConfig
    evaluate_config = SummarizationEvaluateConfig
    required_columns = ("body", "title")
    pipeline_task = "summarization"
    output_key = "summary_text"
    predict_columns = ("body",)
    preprocess_version = "4"  # 4: empty pairs counted apart, raw references in eval_texts; 3: eval_texts split
    headline_metric = "rouge1"
    scratch_archs = ("mt5",)

    def validate_job(self, job: JobConfig) -> None:
        super().validate_job(job)
        cfg: SummarizationPreprocessConfig = job.preprocess  # type: ignore[assignment]
        if cfg.language_configs and not job.data.source.startswith("hub:"):
            raise ConfigError("preprocess.language_configs: only for hub: sources (one configuration per "
                              "language); offline and files: data carry a 'language' column instead")
        if cfg.language_configs and job.data.config_name not in cfg.language_configs.values():
            raise ConfigError(f"data.config_name: {job.data.config_name!r} must be one of the configurations in "
                              f"preprocess.language_configs {cfg.language_configs}")

    def _with_languages(self, job: JobConfig, raw: datasets.DatasetDict) -> dict[str, datasets.Dataset]:
        cfg: SummarizationPreprocessConfig = job.preprocess  # type: ignore[assignment]
        if not cfg.language_configs:
            out = {}
            for split, ds in raw.items():
                if "language" not in ds.column_names:
                    ds = ds.add_column("language", [cfg.default_language] * len(ds), new_fingerprint=fresh_fingerprint())
                out[split] = ds
            return out
        from nlpjobs.data import sources

        parts: dict[str, list[datasets.Dataset]] = {split: [] for split in raw}
        for lang, config_name in cfg.language_configs.items():
            if config_name == job.data.config_name:
                loaded = raw
            else:
                loaded = sources.load_raw(dataclasses.replace(job.data, config_name=config_name), job.train.seed)
            for split, ds in loaded.items():
                ds = ds.remove_columns("language") if "language" in ds.column_names else ds
                parts[split].append(ds.add_column("language", [lang] * len(ds), new_fingerprint=fresh_fingerprint()))
        return {split: datasets.concatenate_datasets(dss) for split, dss in parts.items()}

    def prepare(self, job: JobConfig, raw: datasets.DatasetDict, tokenizer: Any) -> Prepared:
        cfg: SummarizationPreprocessConfig = job.preprocess  # type: ignore[assignment]
        self.check_columns(raw)
        mixed, kept, short, empty, totals, removed = {}, {}, {}, {}, {}, {}
        for split, ds in self._with_languages(job, raw).items():
            # the course's two filters and shuffle as one row order, then one take of the Python values
            languages = python_values(ds, "language")
            in_languages = np.fromiter((x in cfg.languages for x in languages), bool, len(languages))
            if not in_languages.any():
                raise TaskDataError(f"summarization: split {split!r} has no rows in languages {cfg.languages}; "
                                    "check preprocess.languages and the data's 'language' column")
            bodies, titles = python_values(ds, "body"), python_values(ds, "title")
            complete = in_languages & complete_pairs(bodies, titles, split)
            rows = np.flatnonzero(complete & long_titles(bodies, titles, cfg.min_target_words))
            n_lang, n_complete = int(in_languages.sum()), int(complete.sum())
            totals[split], empty[split], short[split] = len(ds), n_lang - n_complete, n_complete - len(rows)
            check_pairs_left("summarization", split, n_complete, n_lang,
                             f"in {cfg.languages} lack a non-empty body or title")
            if len(rows) == 0:
                raise TaskDataError(f"summarization: every title of split {split!r} has fewer than "
                                    f"{cfg.min_target_words} words; lower preprocess.min_target_words")
            removed[split] = [(len(ds) - n_lang, f"skipped (language not in preprocess.languages {cfg.languages})"),
                              (empty[split], "dropped (missing or empty body or title)"),
                              (short[split], f"removed (titles of fewer than {cfg.min_target_words} words: "
                                             "preprocess.min_target_words)")]
            rows = rows[np.random.default_rng(cfg.shuffle_seed).permutation(len(rows))]  # = .shuffle(seed)
            if split == "eval" and cfg.eval_sample and cfg.eval_sample < len(rows):
                rows = rows[:cfg.eval_sample]
            # decoded values (a column mixing types is stored as JSON text), one chunk per column
            table = pa.table({name: pa.array([values[i] for i in rows], pa.string())
                              for name, values in (("body", bodies), ("title", titles), ("language", languages))})
            mixed[split] = datasets.Dataset(table, fingerprint=fresh_fingerprint())  # no hash of every row
            kept[split] = dict(sorted(Counter(column_values(mixed[split], "language")).items()))
        trained = None
        if tokenizer is None:  # scratch: mT5: one SentencePiece unigram model on bodies and titles of train
            n = cfg.tokenizer_max_sentences
            train = mixed["train"].select(range(min(n, len(mixed["train"]))))
            trained = t5_tokenizer(column_values(train, "body") + column_values(train, "title"), cfg.vocab_size,
                                   max(cfg.max_source_length, cfg.max_target_length))
            tokenizer = trained
        splits, truncated, detail = {}, {}, {}
        for split, ds in mixed.items():
            tokenized, counts = tokenize_pairs(ds, tokenizer, "body", "title", cfg, f"tokenize {split}")
            # a fresh fingerprint: datasets would otherwise pickle the whole column to name the result
            splits[split] = tokenized.add_column("language", column_values(ds, "language"),
                                                 new_fingerprint=fresh_fingerprint())
            truncated[split], detail[split] = counts["examples"], counts
        # the eval bodies, for the lead-N baseline evaluate scores beside the model (a metric, not tokenization),
        # and the raw titles: the references ROUGE scores against (not the decoded, truncated labels)
        splits["eval_texts"] = mixed["eval"].select_columns(["body", "language", "title"]).rename_column(
            "title", "reference")
        info = {"languages": kept, "short_titles_removed": short, "dropped_empty_pairs": empty,
                "min_target_words": cfg.min_target_words,
                "truncated_examples": truncated, "truncated_by_side": detail,
                "max_source_length": cfg.max_source_length, "max_target_length": cfg.max_target_length,
                "default_language": cfg.default_language, "tokenizer_trained": trained is not None,
                "report": preprocess_report("summarization", totals, removed, detail, cfg)}
        return Prepared(splits=splits, info=info, tokenizer=trained)

    def evaluate(self, ctx: EvalContext, model: Any, loader: Any) -> dict[str, Any]:
        from nlpjobs.data.shards import load_split

        out = self.generate_and_score(ctx, model, loader)
        eval_split = load_split(ctx.manifest, "eval")
        languages = (column_values(eval_split, "language")[:out["examples"]] if "language" in eval_split.column_names
                     else [ctx.manifest.info.get("default_language", "en")] * out["examples"])
        metrics: dict[str, Any] = rouge_scores(out["predictions"], out["references"], languages)
        # lead-N on the same rows and references as the model
        cfg: SummarizationEvaluateConfig = ctx.job.evaluate  # type: ignore[assignment]
        bodies = column_values(load_split(ctx.manifest, "eval_texts"), "body")[:out["examples"]]
        lead = lead_baseline(bodies, out["references"], languages, cfg.lead_sentences)
        gate = baseline_gate(metrics, lead)
        metrics.update({"eval_loss": out["eval_loss"], "gen_len": out["gen_len"], "examples": out["examples"],
                        **self.generation_report(ctx, out),
                        "lead3": lead, "beats_lead3": gate,
                        "beats_lead3_all": bool(gate) and all(gate.values()),
                        "samples": {str(i): {"prediction": p, "reference": r} for i, (p, r) in
                                    enumerate(zip(out["predictions"][:3], out["references"][:3]))}})
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        lead = metrics.get("lead3") or {}
        parts = []
        for key in ROUGE_KEYS:
            if key not in metrics:
                continue
            text = f"{key}={metrics[key]:.2f}"
            if key in lead:
                text += f" (lead-3 {lead[key]:.2f}, {metrics[key] - lead[key]:+.2f})"
            parts.append(text)
        gate = metrics.get("beats_lead3")
        if isinstance(gate, dict) and gate:
            below = [k for k, ok in gate.items() if not ok]
            parts.append("gate: beats lead-3 on every ROUGE variant" if not below
                         else f"gate: FAILS, below lead-3 on {', '.join(below)}")
        if isinstance(metrics.get("gen_len"), float):
            parts.append(f"gen_len={metrics['gen_len']:.1f}")
        return "  ".join(parts) or str(metrics)
