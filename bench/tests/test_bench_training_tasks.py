"""The training figure beyond NER (bench.training): seq2seq token counting, one initial model for both
engines, the token-weighted eval loss, and a 3-step translation run of the figure. No timings asserted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bench import cli, training
from bench.common import Sizes
from bench.records import aggregate

SIZES = Sizes(repeats=1, train_steps=3, train_examples=120, eval_examples=12, train_batch_size=4)


@pytest.fixture
def one_thread() -> object:
    """Steadier on a shared machine; the figure itself uses the caller's setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def translation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    """(scratch, job, manifest): the translation preset preprocessed on :data:`SIZES` into the scratch store the
    figure uses (so its own preprocessing is a cache hit)."""
    scratch = tmp_path_factory.mktemp("train-translation")
    job, manifest = training._preprocessed(SIZES, scratch / "train-store-translation", "translation")
    return scratch, job, manifest


def test_seq2seq_batches_count_source_and_label_tokens() -> None:
    meter = training.Meter()
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[4, 5, 2, -100, -100], [3, 2, -100, -100, -100]]),
             "decoder_input_ids": torch.tensor([[0, 4, 5, 2, 0], [0, 3, 2, 0, 0]])}
    assert training.count_tokens(batch, count_labels=True) == (5, 5)
    assert training.count_tokens(batch) == (5, 0)  # NER, clm: labels are no tokens of their own
    training.CountingCollator(lambda _: batch, meter, count_labels=True)([{}, {}])
    training.CountingCollator(lambda _: batch, meter)([{}, {}])
    assert (meter.tokens, meter.label_tokens, meter.samples) == ([10, 5], [5, 0], [2, 2])
    meter = training.Meter(steps=[0.0, 1.0, 2.0], tokens=[99, 10, 30], samples=[2, 2, 2], label_tokens=[0, 4, 16])
    assert meter.label_share(3) == pytest.approx(0.5)
    # the scale figure writes meters as JSON and reads them back
    assert training.Meter(**json.loads(json.dumps(dataclasses.asdict(meter)))) == meter


def test_flop_params_split_encoder_decoder_and_count_tied_heads() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, MarianConfig, MarianMTModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_layer=1, n_head=2, n_embd=8))
    assert training.flop_params(gpt2) == (training.matmul_params(gpt2) + 50 * 8, 0)  # lm_head tied to wte
    marian = MarianMTModel(MarianConfig(vocab_size=40, d_model=8, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                        decoder_ffn_dim=16, max_position_embeddings=16, pad_token_id=39,
                                        decoder_start_token_id=39))
    source, target = training.flop_params(marian)
    assert source == training.matmul_params(marian.get_encoder()) > 0
    assert source + target == training.matmul_params(marian) + 40 * 8
    assert target > source  # cross-attention and the output projection are decoder-side


def test_fingerprint_tells_weights_apart() -> None:
    model = torch.nn.Linear(3, 2)
    before = training.fingerprint(model)
    training._check_init(model, before, "x")
    with torch.no_grad():
        model.weight[0, 0] += 1e-6
    with pytest.raises(RuntimeError, match="initial weights differ"):
        training._check_init(model, before, "x")


def test_both_engines_start_from_the_same_translation_weights(translation: tuple, tmp_path: Path) -> None:
    from accelerate.utils import set_seed
    from transformers import AutoModelForSeq2SeqLM

    from nlpjobs.data.shards import load_tokenizer
    from nlpjobs.tasks import get_task

    _, job, manifest = translation
    init, model = training.save_initial_model(job, manifest, tmp_path / "init")
    course, *_ = training.course_parts(job, manifest, load_tokenizer(manifest), tmp_path / "init")
    assert isinstance(course, AutoModelForSeq2SeqLM._model_mapping[type(course.config)])
    assert training.fingerprint(course) == init  # what the course's Seq2SeqTrainer starts from
    set_seed(job.train.seed)  # what the engine does before build_model
    assert training.fingerprint(get_task("translation").build_model(job, manifest, load_tokenizer(manifest))) == init
    # token-weighted eval loss: with all eval rows in one batch it is the model's own mean loss
    one_batch = dataclasses.replace(job, evaluate=dataclasses.replace(job.evaluate, batch_size=10_000))
    from nlpjobs.data.shards import load_split
    from nlpjobs.train.engine import model_inputs

    task = get_task("translation")
    rows = list(model_inputs(task, load_split(manifest, "eval")))
    batch = task.collator(load_tokenizer(manifest), model)(rows)
    with torch.no_grad():
        expected = float(model.eval()(**batch).loss)
    assert training.eval_loss(model, one_batch, manifest)["loss"] == pytest.approx(expected, rel=1e-5)


def test_translation_figure_reports_both_engines(translation: tuple, one_thread: object,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    scratch, _, _ = translation
    samples = training.measure(SIZES, scratch, {"no": 20.0}, "translation")
    # the engine trains Marian through the blockwise head loss (its final_logits_bias folded in)
    assert "blockwise head loss used" in capsys.readouterr().err
    assert [s.figure for s in samples] == [training.TOKENS_FIGURE, training.SAMPLES_FIGURE, training.MFU_FIGURE]
    for record in aggregate(samples):
        assert record.task == "translation" and record.nlpjobs and record.baseline and record.ratio
        assert record.metric["name"].startswith("eval cross-entropy per label token")
        for engine in ("nlpjobs", "baseline"):  # random init over a ~vocabulary of pieces: loss near ln(vocab)
            assert 3.0 < record.metric[engine] < 12.0
    assert "Seq2SeqTrainer" in samples[0].note and "label tokens" in samples[0].note
    assert not [p for p in scratch.iterdir() if p.name.startswith(("train-store", "train-init", "trainer-"))]


def test_summarization_figure_reports_both_engines(tmp_path: Path, one_thread: object,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # a bf16 peak in the machine's peaks (a CPU that multiplies bf16 natively): both engines also train in bf16
    samples = training.measure(SIZES, tmp_path, {"no": 20.0, "bf16": 80.0}, "summarization")
    printed = capsys.readouterr().err
    # mT5's gated feed-forward layers (2 + 2) run gelu_new as one kernel; the head through the blockwise loss,
    # in fp32 and in bf16 (checked against the model's own loss under autocast)
    assert printed.count("4 one-kernel tanh-GELU modules") == 2 and printed.count("blockwise head loss used") == 2
    assert "precision: bf16 mixed precision" in printed and "(bf16): course:" in printed
    fp32 = [training.TOKENS_FIGURE, training.SAMPLES_FIGURE, training.MFU_FIGURE]
    assert [s.figure for s in samples] == [*fp32, *(f + training.BF16 for f in fp32), training.BF16_VS_FP32_FIGURE]
    records = {r.figure: r for r in aggregate(samples)}
    record = records[training.TOKENS_FIGURE]
    assert record.task == "summarization" and record.ratio and "Seq2SeqTrainer" in samples[0].note
    assert "fp32 on the CPU" in samples[0].note and "bf16 mixed precision on the CPU" in samples[3].note
    assert samples[5].unit == "% of bf16 matmul peak" and "bf16 peak 80.0" in samples[5].note
    for figure in (training.TOKENS_FIGURE, training.TOKENS_FIGURE + training.BF16, training.BF16_VS_FP32_FIGURE):
        metric = records[figure].metric
        assert 3.0 < metric["nlpjobs"] < 12.0 and 3.0 < metric["baseline"] < 12.0, figure
    cross, bf16, fp32_run = samples[6], samples[3], samples[0]
    assert (cross.nlpjobs, cross.baseline) == (bf16.nlpjobs, fp32_run.baseline)  # nlpjobs bf16 vs course fp32
    from accelerate.state import AcceleratorState

    assert AcceleratorState._shared_state.get("_mixed_precision") in (None, "no")  # later figures start in fp32


def test_mlm_eval_loss_scores_the_masked_tokens_unshifted(tmp_path: Path) -> None:
    """A masked LM predicts the token at each masked position (no next-token shift, unlike clm): with one
    batch the evaluator's loss is the model's own loss on the fixed-mask eval rows; perplexity beside it."""
    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import get_task
    from nlpjobs.train.engine import model_inputs

    sizes = dataclasses.replace(SIZES, mlm_reviews=30)
    job, manifest = training._preprocessed(sizes, tmp_path / "store", "mlm")
    job = dataclasses.replace(job, evaluate=dataclasses.replace(job.evaluate, batch_size=10_000))
    _, model = training.save_initial_model(job, manifest, tmp_path / "init")
    task = get_task("mlm")
    batch = task.collator(load_tokenizer(manifest), model)(list(model_inputs(task, load_split(manifest, "eval"))))
    with torch.no_grad():
        expected = float(model.eval()(**batch).loss)
    scores = training.eval_loss(model, job, manifest)
    assert scores["loss"] == pytest.approx(expected, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(torch.exp(torch.tensor(expected)).item(), rel=1e-4)


def test_cli_routes_the_training_tasks(tmp_path: Path) -> None:
    assert set(cli.TRAIN_TASKS) == set(cli.TASKS) == set(training.RECIPES)
    from bench.machine import Machine

    host = Machine("cpu", 1, 1, "none", 10.0, 32, {})
    [sample] = cli.run_figure("train", "pos-tagging", SIZES, tmp_path, host)
    assert sample.note.startswith("not measured")
    with pytest.raises(ValueError, match="no recipe"):
        training.preset_overrides("pos-tagging", SIZES, tmp_path)


def test_qa_figure_reports_both_engines_and_the_padding_it_skips(tmp_path: Path, one_thread: object) -> None:
    samples = training.measure(SIZES, tmp_path, {"no": 20.0}, "qa")
    assert [s.figure for s in samples] == [training.TOKENS_FIGURE, training.SAMPLES_FIGURE, training.MFU_FIGURE]
    [record, *_] = aggregate(samples)
    assert record.task == "qa" and record.ratio and record.metric["name"].startswith("eval SQuAD F1")
    for engine in ("nlpjobs", "baseline"):  # a new head after 2 steps: near a uniform guess over ~150 tokens
        assert 0 <= record.metric[engine] <= 100 and 3.0 < record.metric[f"{engine} loss"] < 7.0
    assert "default_data_collator" in samples[0].note
    assert "real tokens on average (63% of a 384-token window is padding)" in samples[0].note  # the 5 questions
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("train-store", "train-init", "trainer-"))]


def test_qa_eval_loss_is_the_models_own_loss_on_unpadded_windows(tmp_path: Path) -> None:
    """The evaluator's start/end cross-entropy ignores padding: per window it equals the model's own loss on
    that window cut after its last real token, averaged over the windows."""
    from nlpjobs.data.shards import load_split, load_tokenizer
    from nlpjobs.tasks import qa_features
    from nlpjobs.tasks.qa import EXAMPLE_COLUMNS, collate_trimmed

    job, manifest = training._preprocessed(SIZES, tmp_path / "store", "qa")
    _, model = training.save_initial_model(job, manifest, tmp_path / "init")
    examples = load_split(manifest, "eval_examples").select_columns(EXAMPLE_COLUMNS)[:]
    windows = qa_features.prepare_train_features(examples["question"], examples["context"], examples["answers"],
                                                 load_tokenizer(manifest), job.preprocess.max_length,
                                                 job.preprocess.stride)
    losses = []
    with torch.no_grad():
        for i in range(len(windows["input_ids"])):
            batch = collate_trimmed([{k: v[i] for k, v in windows.items() if k != "example_index"}])
            assert batch["input_ids"].shape[1] < job.preprocess.max_length
            losses.append(float(model.eval()(**batch).loss))
    assert len(losses) == 5
    assert training.qa_scores(model, job, manifest)["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
