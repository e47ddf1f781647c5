"""The copy baseline of translation: the eval sources scored as their own translations, beside the model."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from nlpjobs.data.shards import write_dataset
from nlpjobs.tasks.translation import TranslationTask, bleu, copy_baseline

SOURCES = ["Open the document", "Print the message", "Close the window", "KDE Plasma Desktop Shell"]
REFERENCES = ["Ouvrir le document", "Imprimer le message", "Fermer la fenêtre", "KDE Plasma Desktop Shell"]


def _manifest(tmp_path: Path, splits: dict[str, datasets.Dataset]) -> object:
    return write_dataset(f"file://{tmp_path}/ds", splits, num_shards=1, manifest={"task": "translation"},
                         scratch=tmp_path / "staging")


def test_copy_baseline_scores_the_sources_against_the_references(tmp_path: Path) -> None:
    texts = datasets.Dataset.from_dict({"source": SOURCES, "reference": REFERENCES})
    manifest = _manifest(tmp_path, {"eval_texts": texts})
    score = copy_baseline(manifest, REFERENCES)
    assert score == pytest.approx(bleu(SOURCES, REFERENCES)["score"])
    assert 0 < score < 100  # names and shared words pass through; the rest is not French
    assert copy_baseline(manifest, REFERENCES[:3]) == pytest.approx(bleu(SOURCES[:3], REFERENCES[:3])["score"])


def test_without_the_raw_sources_there_is_no_baseline(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, {"eval_texts": datasets.Dataset.from_dict({"reference": REFERENCES})})
    assert copy_baseline(manifest, REFERENCES) is None


def test_the_summary_puts_bleu_beside_the_copy_baseline() -> None:
    line = TranslationTask().summary({"bleu": 12.5, "copy_bleu": 4.25, "eval_loss": 2.0})
    assert line.startswith("BLEU=12.50 (copy baseline 4.25, +8.25)")
