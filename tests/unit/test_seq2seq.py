"""Translation and summarization building blocks: per-side tokenization, the seq2seq
collator, decoding with -100, sacreBLEU references, ROUGE sentence newlines, lead-3, the title filter,
the seeded bilingual mix, vocabulary checks and the offline en/es sentence splitter."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import pytest

from nlpjobs.config import ConfigError
from nlpjobs.jobfile import job_from_dict
from nlpjobs.tasks import get_task
from nlpjobs.tasks.seq2seq import (
    SCRATCH_SIZES,
    Seq2SeqPreprocessConfig,
    check_model_vocab,
    check_tokenizer_size,
    decode_pairs,
    has_target_mode,
    marian_tokenizer,
    t5_tokenizer,
    tokenize_pairs,
)
from nlpjobs.tasks.summarization import baseline_gate, lead_baseline, long_titles, rouge_scores
from nlpjobs.tasks.translation import bleu
from nlpjobs.text.sentences import lead_n, sentences_newline, split_sentences

EN = ["Open the file", "Save the document", "Close the window", "Delete the folder", "Print the image",
      "Open the folder", "Save the image", "Close the document", "Default to expanded threads"]
FR = ["Ouvrir le fichier", "Enregistrer le document", "Fermer la fenêtre", "Supprimer le dossier",
      "Imprimer l'image", "Ouvrir le dossier", "Enregistrer l'image", "Fermer le document",
      "Par défaut, développer les fils de discussion"]


@pytest.fixture(scope="module")
def marian() -> Any:
    return marian_tokenizer(EN * 20, FR * 20, vocab_size=120, max_length=64)


def test_marian_targets_go_through_the_target_side(marian: object) -> None:
    tok = marian
    ds = datasets.Dataset.from_dict({"src": EN, "tgt": FR})
    cfg = Seq2SeqPreprocessConfig(max_source_length=64, max_target_length=64)
    out, counts = tokenize_pairs(ds, tok, "src", "tgt", cfg, "t")
    assert counts == {"source": 0, "target": 0, "examples": 0}
    french = FR[-1]
    labels = out[len(FR) - 1]["labels"]
    assert labels == tok(text_target=french)["input_ids"]
    as_source = tok(french)["input_ids"]  # French through the English SentencePiece model
    assert as_source != labels and len(as_source) > len(labels)  # over-fragmented (15 vs 9)
    assert out[0]["input_ids"] == tok(EN[0])["input_ids"]
    assert labels[-1] == tok.eos_token_id


def test_marian_vocab_is_the_union_with_pad_last_and_survives_a_reload(marian: object, tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = marian
    assert tok.convert_tokens_to_ids("</s>") == 0 and tok.convert_tokens_to_ids("<unk>") == 1
    assert tok.pad_token_id == len(tok) - 1
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(again) == len(tok)
    assert again(text_target=FR[0])["input_ids"] == tok(text_target=FR[0])["input_ids"]


def test_truncation_is_per_side_and_counted(marian: object) -> None:
    ds = datasets.Dataset.from_dict({"src": EN, "tgt": FR})
    cfg = Seq2SeqPreprocessConfig(max_source_length=4, max_target_length=6)
    out, counts = tokenize_pairs(ds, marian, "src", "tgt", cfg, "t")
    full_src = [len(marian(x)["input_ids"]) for x in EN]
    full_tgt = [len(marian(text_target=x)["input_ids"]) for x in FR]
    assert counts["source"] == sum(n > 4 for n in full_src)
    assert counts["target"] == sum(n > 6 for n in full_tgt)
    assert counts["examples"] == sum(a > 4 or b > 6 for a, b in zip(full_src, full_tgt))
    assert max(len(x) for x in out["input_ids"]) == 4 and max(len(x) for x in out["labels"]) <= 6
    assert all(row[-1] == marian.eos_token_id for row in out["labels"])  # EOS kept after truncation


@pytest.mark.parametrize("side", ["right", "left"])
def test_one_pass_truncation_equals_the_tokenizers_own(marian: object, side: str) -> None:
    """Rows are tokenized once at limit + 1 and shortened by one content token; with left truncation that
    shortcut is wrong, and the per-batch check must make tokenize_pairs tokenize those rows again."""
    tok = marian
    tok.truncation_side = side
    try:
        ds = datasets.Dataset.from_dict({"src": EN, "tgt": FR})
        cfg = Seq2SeqPreprocessConfig(max_source_length=4, max_target_length=5, map_batch_size=4)
        out, _ = tokenize_pairs(ds, tok, "src", "tgt", cfg, "t")
        assert out["input_ids"][:] == tok(EN, max_length=4, truncation=True)["input_ids"]
        assert out["attention_mask"][:] == tok(EN, max_length=4, truncation=True)["attention_mask"]
        assert out["labels"][:] == tok(text_target=FR, max_length=5, truncation=True)["input_ids"]
    finally:
        tok.truncation_side = "right"


@pytest.mark.parametrize("side", ["right", "left"])
def test_fast_tokenizer_targets_equal_text_target(side: str) -> None:
    """mT5's fast tokenizer has no target mode: labels come from the Rust backend as the source side does,
    equal to ``tokenizer(text_target=...)`` with truncation on either side."""
    tok = t5_tokenizer(EN * 20 + FR * 20, vocab_size=90, max_length=64)
    assert not has_target_mode(tok)
    tok.truncation_side = side
    ds = datasets.Dataset.from_dict({"src": EN, "tgt": FR})
    cfg = Seq2SeqPreprocessConfig(max_source_length=5, max_target_length=4, map_batch_size=4)
    out, counts = tokenize_pairs(ds, tok, "src", "tgt", cfg, "t")
    assert out["labels"][:] == tok(text_target=FR, max_length=4, truncation=True)["input_ids"]
    assert out["input_ids"][:] == tok(EN, max_length=5, truncation=True)["input_ids"]
    assert counts["target"] == sum(len(x) > 4 for x in tok(text_target=FR)["input_ids"]) > 0


def test_a_target_mode_is_honoured() -> None:
    """A tokenizer whose target mode changes its special tokens (as mBART/NLLB do) keeps its text_target call."""
    from tokenizers.processors import TemplateProcessing

    base = t5_tokenizer(EN * 20 + FR * 20, vocab_size=90, max_length=64)

    class TargetMarked(type(base)):  # type: ignore[misc]
        def _switch_to_target_mode(self) -> None:
            self._tokenizer.post_processor = TemplateProcessing(
                single="<unk> $A </s>", special_tokens=[("<unk>", self.unk_token_id), ("</s>", self.eos_token_id)])

        def _switch_to_input_mode(self) -> None:
            self._tokenizer.post_processor = TemplateProcessing(
                single="$A </s>", special_tokens=[("</s>", self.eos_token_id)])

    tok = TargetMarked(tokenizer_object=base.backend_tokenizer, eos_token="</s>", unk_token="<unk>",
                       pad_token="<pad>")
    tok._switch_to_input_mode()
    assert has_target_mode(tok) and has_target_mode(marian_tokenizer(EN, FR, vocab_size=60, max_length=16))
    ds = datasets.Dataset.from_dict({"src": EN, "tgt": FR})
    out, _ = tokenize_pairs(ds, tok, "src", "tgt", Seq2SeqPreprocessConfig(max_source_length=6, max_target_length=5), "t")
    assert out["labels"][:] == tok(text_target=FR, max_length=5, truncation=True)["input_ids"]
    assert all(row[0] == tok.unk_token_id for row in out["labels"])
    assert out["input_ids"][:] == tok(EN, max_length=6, truncation=True)["input_ids"]


def test_collator_pads_labels_with_minus_100_and_starts_decoder_inputs_with_pad(marian: object) -> None:
    task = get_task("translation")
    model = task.scratch_model("marian", SCRATCH_SIZES["marian"]["tiny"], marian, None)
    check_model_vocab(marian, model, exact=True)
    features = [{"input_ids": marian(e)["input_ids"], "attention_mask": [1] * len(marian(e)["input_ids"]),
                 "labels": marian(text_target=f)["input_ids"]} for e, f in zip(EN[:3], FR[-3:])]
    batch = task.collator(marian, model)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_input_ids"}
    pad = marian.pad_token_id
    assert model.config.decoder_start_token_id == pad  # Marian starts decoding from <pad>
    lengths = [len(f["labels"]) for f in features]
    for i, n in enumerate(lengths):
        assert batch["labels"][i, :n].tolist() == features[i]["labels"]
        assert (batch["labels"][i, n:] == -100).all()
        assert batch["decoder_input_ids"][i, 0].item() == pad
        assert batch["decoder_input_ids"][i, 1:n].tolist() == features[i]["labels"][:-1]
    assert (batch["input_ids"] == pad).any()  # inputs padded with the pad id, not -100


def test_minus_100_becomes_pad_before_decoding(marian: object) -> None:
    ids = marian(text_target=FR[0])["input_ids"]
    label = np.array(ids + [-100, -100])
    pred = np.array([marian.pad_token_id] + ids)  # generated: decoder start first
    preds, refs = decode_pairs(marian, [pred], [label])
    assert refs == [FR[0]] and preds == [FR[0]]


def test_bleu_takes_references_as_lists_course_values() -> None:
    ref = "This plugin allows you to automatically translate web pages between several languages."
    close = "This plugin lets you translate web pages between several languages automatically."
    assert bleu([close], [ref])["score"] == pytest.approx(46.750469682990165)  # L2412
    assert bleu(["This This This This"], [ref])["score"] == pytest.approx(1.683602693167689)  # L2434
    assert bleu(["This plugin"], [ref])["score"] == pytest.approx(0.0, abs=1e-9)  # L2454
    assert bleu([ref, close], [ref, ref])["score"] > 46.75


def test_t5_tokenizer_sizes_are_asserted(tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = t5_tokenizer([*EN, *FR] * 10, vocab_size=150, max_length=64)
    assert tok.is_fast and (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    tok.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(again) == len(tok)
    assert again("Open the file")["input_ids"] == tok("Open the file")["input_ids"]
    with pytest.raises(ConfigError, match="inconsistent"):
        check_tokenizer_size(tok, len(tok) + 1, "T5TokenizerFast")


def test_model_vocab_must_cover_the_tokenizer(marian: object) -> None:
    from transformers import MarianConfig, MarianMTModel

    small = MarianMTModel(MarianConfig(vocab_size=len(marian) - 5, d_model=16, encoder_layers=1, decoder_layers=1,
                                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                       decoder_ffn_dim=16, pad_token_id=0))
    with pytest.raises(ConfigError, match="tokenizer has"):
        check_model_vocab(marian, small, exact=False)
    big = MarianMTModel(MarianConfig(vocab_size=len(marian) + 8, d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                                     decoder_ffn_dim=16, pad_token_id=marian.pad_token_id))
    check_model_vocab(marian, big, exact=False)  # padded embedding (mt5-small: 250,112 rows, 250,100 tokens)
    with pytest.raises(ConfigError):
        check_model_vocab(marian, big, exact=True)  # built from a config: must be exact


# ---- sentences, ROUGE, lead-3 ------------------------------------------------------------------


def test_us_stays_inside_its_sentence_and_rouge_text_is_newline_joined() -> None:
    text = "The U.S. economy is growing. Jobs are up in the U.S. and abroad."
    assert split_sentences(text, "en") == ["The U.S. economy is growing.", "Jobs are up in the U.S. and abroad."]
    assert sentences_newline("  I loved it. Great book!  ", "en") == "I loved it.\nGreat book!"


@pytest.mark.parametrize(("text", "expected"), [
    ("El Sr. García llegó tarde. La Sra. López no vino.", ["El Sr. García llegó tarde.", "La Sra. López no vino."]),
    ("Vivo en EE.UU. desde hace años. Me gusta.", ["Vivo en EE.UU. desde hace años.", "Me gusta."]),
    ("Se usa, p. ej., en aplicaciones. ¿Vendrá mañana? ¡Claro!",
     ["Se usa, p. ej., en aplicaciones.", "¿Vendrá mañana?", "¡Claro!"]),
    ("Este paquete\nproporciona una biblioteca. La usa el Dr. Pérez.",
     ["Este paquete proporciona una biblioteca.", "La usa el Dr. Pérez."]),
])
def test_spanish_abbreviations(text: str, expected: list[str]) -> None:
    assert split_sentences(text, "es") == expected


def test_lead3_course_example() -> None:
    body = ('I grew up reading Koontz, and years ago, I stopped,convinced i had "outgrown" him. Still,when a friend '
            'was looking for something suspenseful too read, I suggested Koontz. She found Strangers. I read it too.')
    assert lead_n(body, 3, "en").split("\n") == [
        'I grew up reading Koontz, and years ago, I stopped,convinced i had "outgrown" him.',
        "Still,when a friend was looking for something suspenseful too read, I suggested Koontz.",
        "She found Strangers."]


def test_rouge_lsum_uses_the_sentence_lines_and_lead_baseline() -> None:
    refs = ["The cat sat. The dog ran."]
    preds = ["The dog ran. The cat sat."]
    scores = rouge_scores(preds, refs, ["en"])
    assert scores["rouge1"] == pytest.approx(100.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)  # per-sentence LCS: order of sentences does not matter
    assert scores["rougeL"] < 100.0  # one LCS over the whole string
    lead = lead_baseline(["Great book. Loved it. Read it twice. Buy it now."], ["Great book loved it"], ["en"], 3)
    assert lead == rouge_scores(["Great book.\nLoved it.\nRead it twice."], ["Great book loved it"], ["en"])


def test_gate_compares_every_variant() -> None:
    course_model = {"rouge1": 16.9728, "rouge2": 8.2969, "rougeL": 16.8366, "rougeLsum": 16.851}
    lead3 = {"rouge1": 16.74, "rouge2": 8.83, "rougeL": 15.6, "rougeLsum": 15.96}
    gate = baseline_gate(course_model, lead3)
    assert gate == {"rouge1": True, "rouge2": False, "rougeL": True, "rougeLsum": True}  # each variant gated on its own, not only rouge1
    line = get_task("summarization").summary({**course_model, "lead3": lead3, "beats_lead3": gate})
    assert "FAILS" in line and "rouge2" in line.split("FAILS")[1] and "(lead-3 16.74, +0.23)" in line


def test_title_filter_keeps_more_than_two_words() -> None:
    bodies = ["a b c", "a b c", "a b c", "", "a b c", None, " \n "]
    titles = ["great", "great book", "a great book", "a great book", "  very  good   read  ", "a b c", "a b c"]
    # > 2 words; empty, missing or blank body dropped
    assert long_titles(bodies, titles, 3).tolist() == [False, False, True, False, True, False, False]


# ---- the summarization prepare: bilingual mix, seeded -------------------------------------------


def _summ_raw() -> datasets.DatasetDict:
    def rows(n: int, tag: str) -> dict[str, list]:
        body, title, lang = [], [], []
        for i in range(n):
            if i % 2:
                body.append(f"Este paquete proporciona la herramienta {tag}{i}. La usa el Sr. García. Es libre.")
                title.append(f"herramienta número {tag}{i}" if i % 3 else "herramienta")
                lang.append("es")
            else:
                body.append(f"This package provides the tool {tag}{i}. It is used in the U.S. It is free.")
                title.append(f"the tool number {tag}{i}" if i % 3 else "tool")
                lang.append("en")
        return {"body": body, "title": title, "language": lang}

    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows(60, "t")),
                                 "eval": datasets.Dataset.from_dict(rows(30, "e"))})


def _summ_job(seed: int) -> object:
    return job_from_dict({"task": "summarization", "data": {"source": "files:/nonexistent"},
                          "model": {"name": "scratch:mt5-tiny"},
                          "preprocess": {"shuffle_seed": seed, "vocab_size": 150, "max_source_length": 64}})


def test_bilingual_mix_is_filtered_shuffled_with_the_seed_and_keeps_the_eval_bodies() -> None:
    task = get_task("summarization")
    raw = _summ_raw()
    first = task.prepare(_summ_job(42), raw, None)
    again = task.prepare(_summ_job(42), raw, None)
    other = task.prepare(_summ_job(7), raw, None)
    short = sum(1 for i in range(30) if i % 3 == 0)  # 1-word titles dropped
    assert first.info["short_titles_removed"]["eval"] == short
    assert len(first.splits["eval"]) == 30 - short
    assert first.info["languages"]["eval"] == {"en": 10, "es": 10}
    assert first.splits["eval"]["labels"] == again.splits["eval"]["labels"]
    assert first.splits["eval"]["labels"] != other.splits["eval"]["labels"]
    assert sorted(map(tuple, first.splits["eval"]["labels"])) == sorted(map(tuple, other.splits["eval"]["labels"]))
    langs = first.splits["eval"]["language"]
    assert langs != sorted(langs) and langs != sorted(langs, reverse=True)  # mixed, not grouped
    assert first.tokenizer is not None and first.info["tokenizer_trained"] and first.tokenizer.is_fast
    # the eval bodies for evaluate's lead-3, row for row with the eval features
    texts = first.splits["eval_texts"]
    assert texts.column_names == ["body", "language", "reference"] and list(texts["language"]) == list(langs)
    bodies = first.tokenizer(list(texts["body"]), max_length=64, truncation=True)["input_ids"]
    assert bodies == list(first.splits["eval"]["input_ids"])
    assert "lead_baseline" not in first.info


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="data.eval_split"):
        job_from_dict({"task": "translation", "data": {"source": "offline:kde4-en-fr", "eval_split": "validation"},
                       "model": {"name": "scratch:marian-tiny"}, "preprocess": {"split_train_size": 0.9}})
    with pytest.raises(ConfigError, match="scratch:marian-tiny"):
        job_from_dict({"task": "translation", "data": {"source": "files:/x"}, "model": {"name": "scratch:mt5-tiny"}})
    with pytest.raises(ConfigError, match="supported"):
        job_from_dict({"task": "summarization", "data": {"source": "files:/x"}, "model": {"name": "scratch:mt5-tiny"},
                       "preprocess": {"languages": ["en", "de"]}})
    with pytest.raises(ConfigError, match="preprocess.lead_sentences: unknown setting. It moved: set evaluate.lead_sentences"):
        job_from_dict({"task": "summarization", "data": {"source": "files:/x"}, "model": {"name": "scratch:mt5-tiny"},
                       "preprocess": {"lead_sentences": 3}})
    with pytest.raises(ConfigError, match="evaluate.lead_sentences: got 0"):
        job_from_dict({"task": "summarization", "data": {"source": "files:/x"}, "model": {"name": "scratch:mt5-tiny"},
                       "evaluate": {"lead_sentences": 0}})


def test_lead3_of_a_long_article_matches_splitting_it_whole() -> None:
    first = "A very long opening sentence about the U.S. economy that goes on " + "and on " * 400 + "until it ends."
    body = " ".join([first, "Then Dr. Smith spoke.", "Markets rose.", *["More news here."] * 300])
    assert lead_n(body, 3, "en") == "\n".join(split_sentences(body, "en")[:3])
    assert lead_n(body, 3, "en").split("\n")[1:] == ["Then Dr. Smith spoke.", "Markets rose."]


def test_a_joint_vocabulary_gives_a_string_the_same_ids_on_both_sides(marian: Any) -> None:
    joint = marian_tokenizer(EN * 20, FR * 20, vocab_size=120, max_length=64, joint=True)
    for text in ("Enregistrer le document", "Save the document"):
        assert joint(text)["input_ids"] == joint(text_target=text)["input_ids"]
    # per side, the French text is cut into the source model's (English) pieces on the source side
    assert marian("Enregistrer le document")["input_ids"] != marian(text_target="Enregistrer le document")["input_ids"]
