"""Translation and summarization end to end through the CLI against the real SeaweedFS server:
preprocess (tokenizers trained per side / on the bilingual mix) → train 2 steps → evaluate → predict.
Data: small files: fixtures in the shapes of the offline corpora (kde4-en-fr, debian-descriptions)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from clitools import cli, job_file
from nlpjobs import storage

pytestmark = [pytest.mark.slow, pytest.mark.s3]

VERBS = [("Open the", "Ouvrir le"), ("Save the", "Enregistrer le"), ("Close the", "Fermer le"),
         ("Delete the", "Supprimer le"), ("Print the", "Imprimer le")]
OBJECTS = [("file", "fichier"), ("document", "document"), ("folder", "dossier"), ("message", "message")]
TOOLS = [("an image viewer", "un visor de imágenes"), ("a text editor", "un editor de texto"),
         ("a network manager", "un gestor de red"), ("a space trading game", "un juego de comercio espacial")]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def kde4_like(root: Path, n: int = 60) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        (ve, vf), (oe, of) = rng.choice(VERBS), rng.choice(OBJECTS)
        rows.append({"id": str(i), "translation": {"en": f"{ve} {oe}", "fr": f"{vf} {of}"}})
    write_jsonl(root / "train.jsonl", rows)  # like kde4: a train split only
    return root


def debian_like(root: Path) -> Path:
    rng = random.Random(1)
    for split, n in (("train", 40), ("validation", 16)):
        rows = []
        for i in range(n):
            en, es = rng.choice(TOOLS)
            if i % 2:
                rows.append({"id": f"{split}-{i}", "language": "es", "title": f"{es} libre" if i % 4 != 1 else "juego",
                             "body": f"Este paquete proporciona {es}. Lo usa el Sr. García en EE.UU. Es software libre."})
            else:
                rows.append({"id": f"{split}-{i}", "language": "en", "title": f"{en} for the desktop",
                             "body": f"This package provides {en}. It is used in the U.S. and abroad. It is free."})
        write_jsonl(root / f"{split}.jsonl", rows)
    return root


TRAIN = {"max_steps": 2, "batch_size": 8, "eval_every": "never", "save_every": "1", "log_every": 1,
         "warmup_steps": 0}


def dataset_dir(root: str, task: str) -> tuple[str, dict]:
    base = storage.join(root, "datasets", task)
    [key] = [n for n in storage.listdir(base) if not n.startswith("_")]
    return storage.join(base, key), storage.read_json(storage.join(base, key, "manifest.json"))


def test_translation_on_s3_end_to_end(s3_env: str, tmp_path: Path) -> None:
    data = kde4_like(tmp_path / "kde4")
    job = job_file(tmp_path, "jobs/local/translation.yaml", s3_env, name="translation-e2e",
                   data={"source": f"files:{data}", "max_train_examples": None, "max_eval_examples": None},
                   preprocess={"vocab_size": 100, "num_shards": 2},
                   evaluate={"batch_size": 4, "generation_max_length": 12}, train=TRAIN)
    assert "dataset written" in cli("preprocess", "-c", str(job)).stdout
    uri, manifest = dataset_dir(s3_env, "translation")
    assert manifest["splits"]["train"]["rows"] == 54 and manifest["splits"]["eval"]["rows"] == 6  # 90/10 carve
    assert manifest["tokenizer"]["class"] == "MarianTokenizer"
    info = manifest["info"]
    assert info["tokenizer_trained"] and info["truncated_examples"] == {"train": 0, "eval": 0}
    tok_files = set(storage.listdir(storage.join(uri, manifest["attempt"], "tokenizer")))
    assert {"source.spm", "target.spm", "vocab.json"} <= tok_files
    assert manifest["tokenizer"]["vocab_size"] == len(json.loads(storage.read_bytes(
        storage.join(uri, manifest["attempt"], "tokenizer", "vocab.json"))))

    out = cli("train", "-q", "-c", str(job)).stdout
    assert "2/2 optimizer steps" in out and "eval before training: BLEU=" in out
    assert "batches: grouped by length (train.group_by_length)" in out  # the CPU preset opts in
    run = storage.join(s3_env, "runs", "translation-e2e")
    before = storage.read_json(storage.join(run, "metrics.json"))["train"]["before_training"]
    assert before["examples"] == 6 and 0.0 <= before["bleu"] <= 100.0 and before["eval_loss"] > 0
    model_files = set(storage.listdir(storage.join(run, "model")))
    assert {"source.spm", "target.spm", "vocab.json", "generation_config.json", "config.json"} <= model_files
    # the model carries exactly the dataset's tokenizer
    assert storage.read_bytes(storage.join(run, "model", "vocab.json")) == storage.read_bytes(
        storage.join(uri, manifest["attempt"], "tokenizer", "vocab.json"))

    out = cli("evaluate", "-q", "-c", str(job)).stdout
    assert "BLEU=" in out and "(copy baseline " in out
    evaluated = storage.read_json(storage.join(run, "metrics.json"))["evaluate"]
    assert evaluated["examples"] == 6 and 0.0 <= evaluated["bleu"] <= 100.0
    # the English sources scored as translations of the same rows ("document" and "message" are French too)
    assert 0.0 <= evaluated["copy_bleu"] < 100.0
    assert 0 < evaluated["gen_len"] <= 12

    mine = storage.join(s3_env, "mine", "translation.jsonl")
    cli("predict", "-c", str(job), "--input", "Open the file", "--out", mine)
    lines = storage.read_bytes(mine).decode().splitlines()
    assert len(lines) == 1 and isinstance(json.loads(lines[0])["output"]["translation_text"], str)
    assert not storage.exists(storage.join(run, "predictions.jsonl"))  # your inputs never go to the run's file


def test_summarization_on_s3_end_to_end(s3_env: str, tmp_path: Path) -> None:
    data = debian_like(tmp_path / "debian")
    job = job_file(tmp_path, "jobs/local/summarization.yaml", s3_env, name="summarization-e2e",
                   data={"source": f"files:{data}", "max_train_examples": None},
                   preprocess={"vocab_size": 150, "eval_sample": None, "max_source_length": 32, "num_shards": 2},
                   evaluate={"batch_size": 4, "generation_max_length": 10}, train=TRAIN)
    assert "dataset written" in cli("preprocess", "-c", str(job)).stdout
    _, manifest = dataset_dir(s3_env, "summarization")
    info = manifest["info"]
    assert info["short_titles_removed"] == {"train": 10, "eval": 4}  # the 1-word titles "juego"
    assert info["languages"] == {"train": {"en": 20, "es": 10}, "eval": {"en": 8, "es": 4}}
    assert manifest["splits"]["eval"]["rows"] == 12 and "language" in manifest["splits"]["eval"]["columns"]
    assert info["truncated_examples"]["train"] > 0  # bodies are longer than 32 tokens
    assert manifest["tokenizer"]["class"] == "T5TokenizerFast"
    assert manifest["splits"]["eval_texts"]["rows"] == 12 and "lead_baseline" not in info

    out = cli("train", "-q", "-c", str(job)).stdout
    assert "2/2 optimizer steps" in out
    assert "batches: random rows (the task's default)" in out  # grouping cost BLEU at equal epochs
    out = cli("evaluate", "-q", "-c", str(job)).stdout
    assert "rouge1=" in out and "lead-3" in out and "gate:" in out
    run = storage.join(s3_env, "runs", "summarization-e2e")
    evaluated = storage.read_json(storage.join(run, "metrics.json"))["evaluate"]
    assert evaluated["examples"] == 12
    lead = evaluated["lead3"]  # scored by evaluate on the 12 eval bodies against the same references
    assert set(lead) == {"rouge1", "rouge2", "rougeL", "rougeLsum"} and 0 < lead["rouge1"] <= 100
    assert set(evaluated["beats_lead3"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert evaluated["beats_lead3_all"] == all(evaluated["beats_lead3"].values())

    cli("predict", "-c", str(job))  # the preset's five inputs (English and Spanish)
    lines = storage.read_bytes(storage.join(run, "predictions.jsonl")).decode().splitlines()
    assert len(lines) == 5 and all(isinstance(json.loads(x)["output"]["summary_text"], str) for x in lines)
