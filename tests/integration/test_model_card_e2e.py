"""Every exported model folder has its model card, and the card's metrics are the run's: after `train` its
model-index holds the train-time final evaluation, after `evaluate` exactly metrics.json's evaluate section.
`publish --dry-run` lists exactly the model folder's files (less _SUCCESS); publishing without a token is one
`error:` line before any compute (offline: the Hub itself is never called)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load

from clitools import cli, job_file
from nlpjobs import card, storage

ROOT = Path(__file__).resolve().parents[2]
REPO = "my-org/ner-card"


def _card_metrics(model: Path) -> dict[str, float]:
    results = ModelCard.load(model / "README.md").data.eval_results or []
    return {r.metric_type: r.metric_value for r in results}


@pytest.mark.slow
def test_the_card_carries_the_runs_metrics_and_the_publish_plan_is_the_model_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token saved by `hf auth login` either
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf" / "no-token"))
    store = tmp_path / "store"
    job = job_file(tmp_path, "jobs/local/ner.yaml", f"file://{store}", name="carded",
                   data={"source": f"files:{ROOT / 'docs/examples/ner'}"},
                   train={"max_steps": 3, "batch_size": 8, "eval_every": "3", "save_every": "never", "log_every": 1})
    cli("preprocess", "-q", "-c", str(job))
    cli("train", "-q", "-c", str(job))
    run, model = store / "runs" / "carded", store / "runs" / "carded" / "model"
    assert (model / "_SUCCESS").exists() and (model / "README.md").exists()
    metrics = storage.read_json(f"file://{run}/metrics.json")
    assert metrics["train"]["environment"]["processes"] == 1
    trained = _card_metrics(model)
    assert trained and trained == card.model_index_metrics(metrics["train"]["final_eval"])
    assert "final evaluation of training (step 3)" in (model / "README.md").read_text()

    cli("evaluate", "-q", "-c", str(job))
    metrics = storage.read_json(f"file://{run}/metrics.json")
    evaluated = metrics["evaluate"]
    scores = _card_metrics(model)
    assert set(scores) == {"overall_precision", "overall_recall", "overall_f1", "overall_accuracy"}
    assert scores == {k: evaluated[k] for k in scores}  # equal, not approximately
    meta = metadata_load(model / "README.md")
    dataset = meta["model-index"][0]["results"][0]["dataset"]
    assert dataset["split"] == evaluated["inputs"]["split"] == "validation" and dataset["type"] == "files:ner"
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # offline:minilm is no Hub id
    text = (model / "README.md").read_text()
    assert "from the evaluate stage" in text and f"({evaluated['examples']} examples)" in text
    assert (model / "_SUCCESS").exists()  # rewriting the card leaves the model complete

    listed = cli("publish", "--dry-run", "-c", str(job), "--set", f"publish.hub_model_id={REPO}").stdout
    expected = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file() and p.name != "_SUCCESS")
    rows = re.findall(r"^  (\S+)\s+([\d,]+) bytes$", listed, re.M)
    assert sorted(name for name, _ in rows) == expected and "README.md" in expected
    assert all(int(size.replace(",", "")) == (model / name).stat().st_size for name, size in rows)
    assert f"https://huggingface.co/{REPO}" in listed and "nothing uploaded" in listed

    for command in ("publish", "evaluate"):  # no token: one line, exit 2, before any upload or evaluation
        proc = cli(command, "-c", str(job), "--set", f"publish.hub_model_id={REPO}", check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"error: invalid configuration: publish.hub_model_id is {REPO!r} but no Hugging Face token was found: set "
            "HF_TOKEN to a token with write access (in the chart: hubToken.secretName, a Secret holding it), or log in "
            "with `hf auth login`; --dry-run shows what would be uploaded without one"]
    assert storage.read_json(f"file://{run}/metrics.json")["evaluate"] == evaluated  # nothing was evaluated again
