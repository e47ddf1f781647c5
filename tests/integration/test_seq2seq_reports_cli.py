"""What `nlpjobs preprocess` and `nlpjobs evaluate` say about a translation job's data and outputs, through the
CLI (in-process) on file:// storage: dropped and truncated pairs in the preprocess summary, truncation counts,
empty/distinct outputs and warnings in evaluate's metrics and lines, references scored in full."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clitools import job_file
from nlpjobs.cli import main

pytestmark = pytest.mark.slow

EN = ["Open the file", "Save the document", "Close the window", "Delete the folder", "Print the image"]
FR = ["Ouvrir le fichier", "Enregistrer le document", "Fermer la fenêtre", "Supprimer le dossier", "Imprimer l'image"]
LONG = ("Default to expanded threads and show the unread messages first in every folder of the account",
        "Par défaut, développer les fils de discussion et afficher d'abord les messages non lus de chaque dossier")


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _pair(en: str | None, fr: str | None) -> dict[str, Any]:
    return {"translation": {"en": en, "fr": fr}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A translation run trained one step on files with 2 empty train pairs and one long eval pair."""
    tmp = tmp_path_factory.mktemp("seq2seq-reports")
    raw = tmp / "raw"
    _write(raw / "train.jsonl", [_pair(e, f) for e, f in zip(EN * 6, FR * 6)] + [_pair("", "Vide"), _pair("Blank", None)])
    _write(raw / "validation.jsonl", [_pair(*LONG)] + [_pair(e, f) for e, f in zip(EN, FR)])
    job = job_file(tmp, "jobs/local/translation.yaml", f"file://{tmp / 'store'}", name="reports",
                   data={"source": f"files:{raw}", "eval_split": "validation", "max_train_examples": None,
                         "max_eval_examples": None},
                   preprocess={"split_train_size": None, "vocab_size": 100, "max_source_length": 12,
                               "max_target_length": 12, "num_shards": 1},
                   train={"max_steps": 1, "batch_size": 8, "eval_every": "never", "save_every": "never",
                          "eval_before_training": False, "warmup_steps": 0},
                   evaluate={"batch_size": 8, "generation_max_length": 6})
    pre = CliRunner().invoke(main, ["preprocess", "-q", "-c", str(job)])
    assert pre.exit_code == 0, pre.output
    result = CliRunner().invoke(main, ["train", "-q", "-c", str(job)])
    assert result.exit_code == 0, result.output
    return tmp, str(job), pre.stdout


def _manifest(tmp: Path) -> dict[str, Any]:
    [manifest] = (tmp / "store" / "datasets" / "translation").glob("*/manifest.json")
    return json.loads(manifest.read_text())


def test_preprocess_prints_the_dropped_and_truncated_pairs(trained: tuple[Path, str, str]) -> None:
    tmp, _, out = trained
    info = _manifest(tmp)["info"]
    assert info["dropped_incomplete_pairs"] == {"train": 2, "eval": 0}
    assert "  translation: 2 of 32 train pairs dropped (missing or empty source or target)" in out.splitlines()
    cut = info["truncated_by_side"]["eval"]
    assert cut["source"] >= 1 and cut["target"] >= 1
    assert (f"  translation: eval: of 6 pairs, {cut['source']} sources truncated to max_source_length 12 and "
            f"{cut['target']} targets to max_target_length 12 (raise them to keep more)") in out.splitlines()
    assert "truncated examples (longer than max_length)" not in out  # said once, in words


def test_evaluate_records_truncation_and_outputs_and_scores_full_references(trained: tuple[Path, str, str]) -> None:
    tmp, job, _ = trained
    result = CliRunner().invoke(main, ["evaluate", "-q", "-c", job])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp / "store" / "runs" / "reports" / "metrics.json").read_text())["evaluate"]
    cut = _manifest(tmp)["info"]["truncated_by_side"]["eval"]
    assert metrics["truncated"] == {"sources": cut["source"], "references": cut["target"],
                                    "max_source_length": 12, "max_target_length": 12}
    assert (f"  truncated: {cut['source']} of 6 eval sources to max_source_length 12 (the model saw them cut), "
            f"{cut['target']} references to max_target_length 12 (scored in full)") in result.stdout.splitlines()
    assert metrics["samples"]["0"]["reference"] == LONG[1]  # the raw text, not the decoded 12-token label
    assert 0 <= metrics["empty_outputs"] <= 6 and 1 <= metrics["distinct_outputs"] <= 6
    assert all(f"WARNING: {w}" in result.stdout for w in metrics["warnings"])


def test_evaluate_warns_when_most_outputs_are_empty(trained: tuple[Path, str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from nlpjobs.tasks import seq2seq

    decode = seq2seq.decode_pairs
    monkeypatch.setattr(seq2seq, "decode_pairs", lambda tok, preds, labels: (
        ["" if i else "Ouvrir" for i in range(len(preds))], decode(tok, preds, labels)[1]))
    tmp, job, _ = trained
    result = CliRunner().invoke(main, ["evaluate", "-q", "-c", job])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp / "store" / "runs" / "reports" / "metrics.json").read_text())["evaluate"]
    assert metrics["empty_outputs"] == 5 and metrics["distinct_outputs"] == 2
    assert ("  WARNING: 5 of 6 generated outputs are empty: the model generates no text (undertrained, or "
            "generation_max_length too small); check the train loss") in result.stdout.splitlines()
