"""What translation and summarization say about their data and outputs: pairs dropped for a missing or empty
side (counted and printed), text that is not text (bad data), the raw references kept for scoring (not the
truncated labels), empty and collapsed generations, and predict inputs longer than the source limit."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest

from nlpjobs.jobfile import job_from_dict
from nlpjobs.tasks import get_task
from nlpjobs.tasks.base import TaskDataError
from nlpjobs.tasks.seq2seq import decode_pairs
from nlpjobs.tasks.summarization import rouge_scores
from nlpjobs.tasks.translation import bleu

EN = ["Open the file", "Save the document", "Close the window", "Delete the folder", "Print the image",
      "Open the folder", "Save the image", "Close the document"]
FR = ["Ouvrir le fichier", "Enregistrer le document", "Fermer la fenêtre", "Supprimer le dossier",
      "Imprimer l'image", "Ouvrir le dossier", "Enregistrer l'image", "Fermer le document"]
LONG_FR = "Par défaut, développer les fils de discussion et afficher les messages non lus en premier"


def _translation_job(**preprocess: Any) -> Any:
    return job_from_dict({"task": "translation", "data": {"source": "files:/nonexistent", "eval_split": "validation"},
                          "model": {"name": "scratch:marian-tiny"},
                          "preprocess": {"vocab_size": 120, "split_train_size": None, **preprocess}})


def _summarization_job(**preprocess: Any) -> Any:
    return job_from_dict({"task": "summarization", "data": {"source": "files:/nonexistent"},
                          "model": {"name": "scratch:mt5-tiny"},
                          "preprocess": {"vocab_size": 100, "eval_sample": None, **preprocess}})


def _pairs(extra: list[Any]) -> datasets.Dataset:
    rows = [{"translation": {"en": e, "fr": f}} for e, f in zip(EN * 3, FR * 3)] + extra
    return datasets.Dataset.from_list(rows)


def _summaries(n: int, extra: list[dict] | None = None) -> datasets.Dataset:
    rows = [{"body": f"This package provides the tool {i}. It is free.", "title": f"the tool number {i}",
             "language": "en"} for i in range(n)]
    return datasets.Dataset.from_list(rows + (extra or []))


# ---- pairs with a missing or empty side: dropped, counted, printed --------------------------------------


def test_translation_drops_missing_null_and_blank_sides_and_reports_them() -> None:
    extra = [{"translation": {"en": "", "fr": "Vide"}}, {"translation": {"en": "Blank", "fr": "  \n"}},
             {"translation": {"en": "No French", "fr": None}}, {"translation": None}]
    raw = datasets.DatasetDict({"train": _pairs(extra), "eval": _pairs([])})
    prepared = get_task("translation").prepare(_translation_job(), raw, None)
    assert prepared.info["dropped_incomplete_pairs"] == {"train": 4, "eval": 0}
    assert len(prepared.splits["train"]) == 24
    assert "translation: 4 of 28 train pairs dropped (missing or empty source or target)" in prepared.info["report"]
    assert not any(" eval pairs " in line for line in prepared.info["report"])  # nothing dropped there


def test_summarization_counts_empty_pairs_apart_from_short_titles() -> None:
    extra = [{"body": "", "title": "a fine long title", "language": "en"},
             {"body": "Some body.", "title": None, "language": "en"},
             {"body": "Some body.", "title": "   ", "language": "en"},
             {"body": "Some body.", "title": "tool", "language": "en"},
             {"body": "Ein Paket.", "title": "ein gutes Paket", "language": "de"}]
    raw = datasets.DatasetDict({"train": _summaries(12, extra), "eval": _summaries(6)})
    prepared = get_task("summarization").prepare(_summarization_job(), raw, None)
    info = prepared.info
    assert info["dropped_empty_pairs"] == {"train": 3, "eval": 0}
    assert info["short_titles_removed"] == {"train": 1, "eval": 0}
    assert len(prepared.splits["train"]) == 12
    report = info["report"]
    assert "summarization: 3 of 17 train pairs dropped (missing or empty body or title)" in report
    assert any(line.startswith("summarization: 1 of 17 train pairs removed (titles of fewer than 3 words")
               for line in report)
    assert any(line.startswith("summarization: 1 of 17 train pairs skipped (language not in") for line in report)
    # with no minimum title length, an empty title is still no summary to learn
    again = get_task("summarization").prepare(_summarization_job(min_target_words=0), raw, None)
    assert again.info["dropped_empty_pairs"]["train"] == 3 and len(again.splits["train"]) == 13


def test_truncation_is_in_the_report_with_its_limits() -> None:
    raw = datasets.DatasetDict({"train": _pairs([]), "eval": _pairs([{"translation": {"en": "Long", "fr": LONG_FR}}])})
    prepared = get_task("translation").prepare(_translation_job(max_target_length=6), raw, None)
    cut = prepared.info["truncated_by_side"]["eval"]["target"]
    assert cut >= 1
    assert any(line.startswith(f"translation: eval: of 25 pairs, 0 sources truncated to max_source_length 128 and "
                               f"{cut} targets to max_target_length 6") for line in prepared.info["report"])


# ---- text that is not text: one error naming the row ----------------------------------------------------


@pytest.mark.parametrize(("task", "bad", "says"), [
    ("translation", {"translation": "Open the file"}, "row 24: the translation column holds a string ('Open the file'), "
                                                      'expected an object {"en": "...", "fr": "..."}'),
    ("translation", {"translation": {"en": 5, "fr": "Cinq"}}, "the 'en' text is a number (5), expected text"),
    ("translation", {"translation": {"en": "Five", "fr": ["Cinq"]}}, "the 'fr' text is a list (['Cinq'])"),
    ("summarization", {"body": 12345, "title": "a numbered package", "language": "en"},
     "row 12: the body is a number (12345), expected text"),
    ("summarization", {"body": "A body.", "title": {"text": "nested"}, "language": "en"}, "the title is an object"),
])
def test_a_value_that_is_not_text_is_bad_data(task: str, bad: dict, says: str, tmp_path: Path) -> None:
    """Read from a JSON-lines file as users give it: a column mixing strings and numbers comes back from datasets as
    JSON text (its Json feature), which must be decoded before it is checked, not trained on as '"text"'."""
    good = ([{"translation": {"en": e, "fr": f}} for e, f in zip(EN * 3, FR * 3)] if task == "translation"
            else _summaries(12).to_list())
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*good, bad]))
    train = datasets.load_dataset("json", data_files=str(path), split="train")
    raw = datasets.DatasetDict({"train": train, "eval": datasets.Dataset.from_list(good)})
    job = _translation_job() if task == "translation" else _summarization_job()
    with pytest.raises(TaskDataError) as exc:
        get_task(task).prepare(job, raw, None)
    assert f"{task}: split 'train' " in str(exc.value) and says in str(exc.value)


def test_nothing_left_to_train_on_is_bad_data() -> None:
    blank = [{"translation": {"en": " ", "fr": ""}}] * 3
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(blank), "eval": _pairs([])})
    with pytest.raises(TaskDataError, match="split 'train' has no pair left to train on: all 3 rows lack a non-empty "
                                            "'en' or 'fr' text"):
        get_task("translation").prepare(_translation_job(), raw, None)
    empty = datasets.Dataset.from_list([{"body": None, "title": "a long title", "language": "en"}] * 2)
    raw = datasets.DatasetDict({"train": _summaries(6), "eval": empty})
    with pytest.raises(TaskDataError, match="split 'eval' has no pair left to evaluate on"):
        get_task("summarization").prepare(_summarization_job(), raw, None)


# ---- references: the raw texts, not the truncated labels ------------------------------------------------


def test_translation_references_are_scored_in_full() -> None:
    raw = datasets.DatasetDict({"train": _pairs([]), "eval": _pairs([{"translation": {"en": "Long", "fr": LONG_FR}}])})
    prepared = get_task("translation").prepare(_translation_job(max_target_length=6), raw, None)
    refs = list(prepared.splits["eval_texts"]["reference"])
    assert refs == [*FR * 3, LONG_FR] and list(prepared.splits["eval_texts"]["source"])[-1] == "Long"
    label = prepared.splits["eval"]["labels"][-1]
    [truncated] = decode_pairs(prepared.tokenizer, [np.array(label)], [np.array(label)])[1]
    assert len(label) == 6 and truncated != LONG_FR and LONG_FR.startswith(truncated.rstrip(".")[:5])
    assert bleu([LONG_FR], [refs[-1]])["score"] == pytest.approx(100.0)
    assert bleu([LONG_FR], [truncated])["score"] < 50  # what the decoded label would have scored


def test_summarization_references_are_scored_in_full() -> None:
    long_title = "a tool that converts images between many formats and resizes whole folders of them in batch"
    eval_ = _summaries(4, [{"body": "This package converts images. It is free.", "title": long_title,
                            "language": "en"}])
    raw = datasets.DatasetDict({"train": _summaries(12), "eval": eval_})
    prepared = get_task("summarization").prepare(_summarization_job(max_target_length=6, shuffle_seed=1), raw, None)
    texts = prepared.splits["eval_texts"]
    i = list(texts["reference"]).index(long_title)
    assert sorted(texts["reference"]) == sorted(eval_["title"])
    label = prepared.splits["eval"]["labels"][i]
    [truncated] = decode_pairs(prepared.tokenizer, [np.array(label)], [np.array(label)])[1]
    assert len(label) == 6 and truncated != long_title
    assert rouge_scores([long_title], [texts["reference"][i]], ["en"])["rouge1"] == pytest.approx(100.0)
    assert rouge_scores([long_title], [truncated], ["en"])["rouge1"] < 60


# ---- empty and collapsed outputs ------------------------------------------------------------------------


def test_output_checks_count_empty_and_distinct_outputs_and_warn() -> None:
    from nlpjobs.tasks.seq2seq import output_checks

    fine = output_checks(["a", "b", "", "c"], ["w", "x", "y", "z"])
    assert fine == {"empty_outputs": 1, "distinct_outputs": 4, "warnings": []}
    empty = output_checks(["", " ", "\n", "a"], ["w", "x", "y", "z"])
    assert empty["empty_outputs"] == 3 and len(empty["warnings"]) == 1
    assert empty["warnings"][0].startswith("3 of 4 generated outputs are empty")
    collapsed = output_checks(["le le le"] * 3 + ["a"], ["w", "x", "y", "z"])
    assert collapsed["distinct_outputs"] == 2
    assert collapsed["warnings"] == ["3 of 4 generated outputs are the same text 'le le le': the model has collapsed "
                                     "to one output whatever the input (undertrained); check the train loss"]
    # the same output for the same reference is no collapse; nor are two outputs out of two
    assert output_checks(["Ouvrir"] * 3 + ["a"], ["Ouvrir"] * 3 + ["b"])["warnings"] == []
    assert output_checks(["x", "x"], ["a", "b"])["warnings"] == []


def _biased_model(tmp_path: Path, token: str | None) -> tuple[str, Any, int]:
    """A tiny Marian saved with its tokenizer, whose output bias makes it generate ``token`` at every step (</s>:
    empty outputs; None: a piece of a French word, a collapsed model). The tokenizer's model_max_length, what the pipeline truncates to,
    is the length of the longest of EN[:3]."""
    from nlpjobs.tasks.seq2seq import marian_tokenizer

    tok = marian_tokenizer(EN * 20, FR * 20, vocab_size=120, max_length=64)
    tok.model_max_length = limit = max(len(tok(x)["input_ids"]) for x in EN[:3])
    sizes = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 16, "decoder_ffn_dim": 16, "max_position_embeddings": 64}
    model = get_task("translation").scratch_model("marian", sizes, tok, None)
    token_id = tok(text_target=FR[0])["input_ids"][1] if token is None else tok.convert_tokens_to_ids(token)
    model.final_logits_bias[0, token_id] = 1e4
    model.generation_config.max_length = 4
    model.save_pretrained(str(tmp_path / "model"))
    tok.save_pretrained(str(tmp_path / "model"))
    return str(tmp_path / "model"), tok, limit


def test_predict_warns_of_inputs_over_the_source_limit_and_of_empty_outputs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir, tok, limit = _biased_model(tmp_path, "</s>")
    long = " ".join(EN)
    assert len(tok(long)["input_ids"]) > limit
    with caplog.at_level(logging.WARNING, logger="nlpjobs"):
        out = get_task("translation").predict(model_dir, [EN[0], long, EN[1]])
    assert out == [{"translation_text": ""}] * 3
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("nlpjobs")]
    assert messages == [
        f"predict: 1 of 3 inputs are longer than the model's source limit of {limit} tokens and are truncated to it "
        "(the output ignores the rest); split long inputs",
        "predict: 3 of 3 outputs are empty: the model generates no text (undertrained, or generation_max_length "
        "too small); check the train loss"]


def test_predict_warns_of_a_collapsed_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_dir, tok, _ = _biased_model(tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="nlpjobs"):
        out = get_task("translation").predict(model_dir, EN[:3])
    [text] = {o["translation_text"] for o in out}
    assert text.strip()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("nlpjobs")] == [
        f"predict: 3 of 3 outputs are the same text {text!r}: the model has collapsed to one output whatever the "
        "input (undertrained); check the train loss"]


def test_summarization_predict_checks_the_summaries_it_returns(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    model_dir, _, _ = _biased_model(tmp_path, None)
    with caplog.at_level(logging.WARNING, logger="nlpjobs"):
        out = get_task("summarization").predict(model_dir, EN[:3])
    [text] = {o["summary_text"] for o in out}
    assert text.strip()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("nlpjobs")]
    assert [m for m in messages if "empty" in m] == []  # the summaries are read, not a missing key
    assert any(f"3 of 3 outputs are the same text {text!r}" in m for m in messages)


def test_generation_options_are_stored_with_the_model_and_checked() -> None:
    from nlpjobs.config import ConfigError
    from nlpjobs.tasks.seq2seq import marian_tokenizer

    tok = marian_tokenizer(EN * 20, FR * 20, vocab_size=120, max_length=64)
    job = job_from_dict({"task": "translation", "data": {"source": "files:/nonexistent"},
                         "model": {"name": "scratch:marian-tiny"},
                         "evaluate": {"generation_max_length": 20, "num_beams": 3, "no_repeat_ngram_size": 2}})
    generation = get_task("translation").build_model(job, None, tok).generation_config
    assert (generation.max_length, generation.num_beams, generation.no_repeat_ngram_size) == (20, 3, 2)
    assert job.evaluate.generation_options() == {"max_length": 20, "num_beams": 3, "no_repeat_ngram_size": 2}
    with pytest.raises(ConfigError, match="evaluate.no_repeat_ngram_size: got -1"):
        job_from_dict({"task": "translation", "data": {"source": "files:/nonexistent"},
                       "evaluate": {"no_repeat_ngram_size": -1}})
