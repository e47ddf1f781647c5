"""The seq2seq generation figure (bench.generation): the course's compute_metrics score the same
predictions as nlpjobs does, and the figure runs both engines on a tiny trained model. No timings asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import cli, generation
from bench.common import Sizes
from bench.records import aggregate
from nlpjobs.tasks.seq2seq import decode_pairs, marian_tokenizer, t5_tokenizer
from nlpjobs.tasks.summarization import rouge_scores
from nlpjobs.tasks.translation import bleu

EN = ["Open the file", "Save the document", "Close the window", "Delete the folder", "Print the image",
      "Open the folder", "Save the image", "Close the document", "Default to expanded threads"]
FR = ["Ouvrir le fichier", "Enregistrer le document", "Fermer la fenêtre", "Supprimer le dossier",
      "Imprimer l'image", "Ouvrir le dossier", "Enregistrer l'image", "Fermer le document",
      "Par défaut, développer les fils de discussion"]


def _trainer_arrays(tokenizer: object, predictions: list[str], references: list[str],
                    width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """What Seq2SeqTrainer hands compute_metrics: generated ids (decoder start first) padded with pad to
    max_length, labels padded with -100."""
    pad = tokenizer.pad_token_id
    preds = np.full((len(predictions), width), pad)
    labels = np.full((len(references), width), -100)
    for i, (p, r) in enumerate(zip(predictions, references)):
        ids = [pad, *tokenizer(text_target=p)["input_ids"]]
        preds[i, :len(ids)] = ids
        lab = tokenizer(text_target=r)["input_ids"]
        labels[i, :len(lab)] = lab
    return preds, labels


def test_course_sacrebleu_equals_nlpjobs_on_the_same_predictions() -> None:
    tok = marian_tokenizer(EN * 20, FR * 20, vocab_size=120, max_length=64)
    predictions = ["Par défaut, développer les fils", "Enregistrer le document", "Fermer le dossier", "Imprimer"]
    preds, labels = _trainer_arrays(tok, predictions, [FR[-1], *FR[1:4]])
    course = generation.course_translation_compute_metrics(tok)((preds, labels))
    ours = bleu(*decode_pairs(tok, list(preds), list(labels)))["score"]
    assert 0 < course["bleu"] < 100
    assert course["bleu"] == pytest.approx(ours)
    assert generation.course_translation_compute_metrics(tok)(((preds,), labels)) == course  # tuple preds


def test_course_rouge_equals_nlpjobs_on_english_predictions() -> None:
    bodies = ["The tool converts images. It supports PNG and JPEG.", "A library to read archives quickly.",
              "Fast text search for the command line. Written in C."] * 20
    tok = t5_tokenizer(bodies, vocab_size=150, max_length=64)
    references = ["converts images between formats", "library for compressed archives", "fast text search tool"]
    predictions = ["converts images. Supports PNG.", "a library for archives", "search tool"]
    preds, labels = _trainer_arrays(tok, predictions, references)
    course = generation.course_summarization_compute_metrics(tok)((preds, labels))
    ours = rouge_scores(*decode_pairs(tok, list(preds), list(labels)), ["en"] * 3)
    assert set(course) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert 0 < course["rouge1"] < 100
    for key, value in ours.items():
        assert course[key] == pytest.approx(value)


def test_generated_tokens_count_decoding_steps_up_to_eos() -> None:
    rows = [np.array([0, 5, 6, 1, 0, 0]), np.array([0, 1, 0]), np.array([0, 0, 0, 0])]  # pad 0, eos 1
    assert generation.generated_tokens(rows, eos=1) == 3 + 1 + 3  # a model may generate pad (mT5 from scratch)


def test_plan_and_option() -> None:
    assert cli.plan("all", ["generation"]) == [("generation", "translation"), ("generation", "summarization")]
    assert cli.plan("ner", ["generation"]) == []
    sizes = cli.sizes_from(cli.parser().parse_args(["--quick", "--generation-examples", "5"]))
    assert sizes.generation_examples == 5 and Sizes.quick().generation_examples < Sizes().generation_examples


def test_translation_figure_reports_both_engines(tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on a shared machine; the figure itself uses the caller's setting
    try:
        samples = generation.measure("translation", Sizes(repeats=1, train_steps=2, train_examples=100,
                                                          generation_examples=8), tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert [s.figure for s in samples] == [generation.FIGURE, generation.TOKENS_FIGURE]
    for record in aggregate(samples):
        assert record.nlpjobs and record.baseline and record.ratio
        assert record.metric["name"] == "eval sacreBLEU"
        assert record.metric["nlpjobs"] == pytest.approx(record.metric["baseline"])
        assert record.metric["differing predictions"] == 0  # same model, batches and generation settings
        assert record.metric["generated tokens/example"] > 0
    assert "8 eval examples" in samples[0].note
    assert not list(tmp_path.iterdir())  # the scratch store is removed
