"""Masked-LM preprocessing, masking and perplexity with the real MiniLM uncased WordPiece
tokenizer (the distilbert-base-uncased vocabulary) on real IMDb reviews."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from bench.course import course_mlm_fns
from nlpjobs.config import ConfigError
from nlpjobs.jobfile import job_from_dict
from nlpjobs.models import resolve_model
from nlpjobs.tasks.base import EvalContext
from nlpjobs.tasks.mlm import (
    MlmCollator,
    MlmTask,
    group_flat,
    head_on_masked_positions,
    mask_eval_split,
    masked_lm_loss,
    perplexity,
    whole_word_mask,
    word_groups,
)

# Three real IMDb training reviews whose uncased WordPiece lengths are the course's 200, 559 and 192.
REVIEWS = [
    (
        'Blank Check is a movie that I saw on TV one day and like most movies they air on TV Blank Check'
        " wasn't that good. First of all no one I have ever met has seen Blank Check and that includes p"
        "eople that grew up in the 90s. Also Blank Check won't be remembered in the 00s either simply du"
        "e to the fact that it will be overshadowed by pixar's films. I wouldn't call Blank Check a bad "
        "film but its not really entertaining either. (Or at least it isn't to anyone over the age of 6)"
        " Blank Check isn't a entertaining film because nothing about it is original. Everything just ma"
        'kes you go "what haven\'t I seen this before?" Blank Check rips off and tries to cash in on ever'
        'ything from Richie Rich to Home Alone (Which strangely enough both have Macaulay Culkin in it) '
        "Blank Check isn't a bad movie, but it deserves to fade into obscurity."
    ),
    (
        "There are lots of extremely good-looking people in this movie. That's probably the best thing a"
        'bout it. Perhaps that even makes it worth watching.<br /><br />"Loaded" tells the story of Tris'
        "tan Price (Jesse Metcalfe), a young man who's about to make his mark on the world. He's the son"
        " of a well-to-do family with a good reputation, and he's on his way to law school. But like so "
        "many such settings, things aren't quite as perfect as they appear. The expectations in this fam"
        "ily far outweigh the love. Except for school, Tristan's father rarely lets him leave the house."
        ' This seems to be the result of some past traumatic event that shook the family, which is parti'
        "ally revealed through flashbacks but isn't spelled out until the very end. Tristan's claustroph"
        'obic environment causes him to let loose in very extreme ways at the first possible opportunity'
        ', when his friends take him out to a strip club to celebrate his graduation. The celebration so'
        'on follows some strippers back to a beach house party, and from there, Tristan befriends Sebast'
        'ian Cole (Corey Large), who pulls him into a drug dealing underworld.<br /><br />While technica'
        "lly well-made, this movie suffers from a lackluster script and a storyline that isn't very enga"
        'ging. Also counting against this film are some constant camera tricks that generally seemed ann'
        'oying and out-of-place, such as slow-motion, fast-motion, freeze-frames and echos. These are th'
        "e types of effects a director might normally utilize to show a character's perspective while on"
        ' drugs, except in this case they seem to have been sporadically tossed in at random points, in '
        'some cheap attempt at style.<br /><br />Despite its cast of relative unknowns, performances wer'
        'e good all around, most notably with respect to the main antagonist (Corey Large). I suspect we'
        "'ll be seeing at least a couple of these people in bigger and better projects in the future.<br"
        ' /><br />Of course, when mentioning the actors, I must mention their looks. Rating based on hot'
        'ness, this movies scores an 11. The women in this movie are incredible-looking and almost distr'
        "act you from what a boring movie you're watching. I'm sure the male characters are also quite a"
        "ttractive, but you'll have to ask someone else to comment on that.<br /><br />Overall, I can't "
        "recommend this movie, not for buying, renting, or even seeing for free. It's unfortunately just"
        ' not worth the effort it takes to sit through.'
    ),
    (
        'Never cast models and Playboy bunnies in your films! Bob Fosse\'s "Star 80" about Dorothy Stratt'
        'en, of whom Bogdanovich was obsessed enough to have married her SISTER after her murder at the '
        'hands of her low-life husband, is a zillion times more interesting than Dorothy herself on the '
        'silver screen. Patty Hansen is no actress either..I expected to see some sort of lost masterpie'
        'ce a la Orson Welles but instead got Audrey Hepburn cavorting in jeans and a god-awful "poodles'
        'que" hair-do....Very disappointing...."Paper Moon" and "The Last Picture Show" I could watch ag'
        'ain and again. This clunker I could barely sit through once. This movie was reputedly not relea'
        "sed because of the brouhaha surrounding Ms. Stratten's tawdry death; I think the real reason wa"
        's because it was so bad!'
    ),
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("offline:minilm"))
    assert tok.is_fast and len(tok) == 30522 and tok.vocab_size == 30522  # distilbert-base-uncased's vocabulary
    assert (tok.mask_token, tok.mask_token_id, tok.cls_token_id, tok.sep_token_id) == ("[MASK]", 103, 101, 102)
    return tok


def make_job(**preprocess):
    return job_from_dict({"task": "mlm", "name": "mlm-unit", "storage": "file:///nonexistent-mlm-unit",
                          "data": {"source": "offline:imdb", "eval_split": "test"},
                          "model": {"name": "offline:minilm"}, "preprocess": preprocess})


def raw_data() -> datasets.DatasetDict:
    texts = ["".join(r) for r in REVIEWS]
    split = datasets.Dataset.from_dict({"text": texts * 4, "label": [0, 1, 0] * 4})
    return datasets.DatasetDict({"train": split, "eval": split.select(range(6))})


def tokenized(tokenizer, texts):
    enc = tokenizer(texts)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "word_ids": [enc.word_ids(i) for i in range(len(texts))]}


def grouped(batch: dict[str, list], chunk_size: int) -> dict[str, Any]:
    flat = np.fromiter(itertools.chain.from_iterable(batch["input_ids"]), np.int32)
    return group_flat(flat, chunk_size, batch["word_ids"])


def test_group_flat_reproduces_the_course_chunking(tokenizer) -> None:
    batch = tokenized(tokenizer, ["".join(r) for r in REVIEWS])
    assert [len(x) for x in batch["input_ids"]] == [200, 559, 192]  # the course's lengths, 951 tokens
    out = grouped(batch, 128)
    course = course_mlm_fns(tokenizer)[1](batch)
    assert {k: np.asarray(v).tolist() for k, v in out.items()} == course
    assert set(out) == {"input_ids", "attention_mask", "word_ids", "labels"}
    assert [len(x) for x in out["input_ids"]] == [128] * 7  # 951 // 128 = 7 chunks; the 55 left over are dropped
    flat = [t for doc in batch["input_ids"] for t in doc]
    assert out["input_ids"].ravel().tolist() == flat[:896]
    assert (out["labels"] == out["input_ids"]).all() and not np.shares_memory(out["labels"], out["input_ids"])
    assert [w for c in out["word_ids"] for w in c] == [w for doc in batch["word_ids"] for w in doc][:896]
    # documents are joined: chunk 1 holds review 0's [SEP] followed by review 1's [CLS]
    assert out["input_ids"][1][199 - 128:201 - 128].tolist() == [tokenizer.sep_token_id, tokenizer.cls_token_id]
    assert [len(x) for x in grouped(batch, 64)["input_ids"]] == [64] * 14  # 951 // 64


def test_word_groups_split_at_word_changes_and_special_tokens() -> None:
    assert word_groups([None, 0, 1, 1, 2, None, None, 0, 0, 1]) == [[1], [2, 3], [4], [7, 8], [9]]
    # the last word of one document and the first of the next share the id 0 but are two words
    assert word_groups([None, 0, None, None, 0, 0, None]) == [[1], [4, 5]]
    assert word_groups([3, 3, 4]) == [[0, 1], [2]]  # a chunk starting mid-word


def test_whole_word_masking_masks_whole_words_only(tokenizer) -> None:
    enc = tokenizer("The cinematography was unbelievably gorgeous, truly spectacular filmmaking.")
    ids, wids = enc["input_ids"], enc.word_ids()
    groups = word_groups(wids)
    assert any(len(g) > 1 for g in groups)  # some words are several WordPiece tokens
    masked_words = 0
    for seed in range(20):
        new_ids, labels = whole_word_mask(ids, wids, 0.4, tokenizer.mask_token_id, torch.Generator().manual_seed(seed))
        for group in groups:
            hit = [new_ids[p] == tokenizer.mask_token_id for p in group]
            assert all(hit) or not any(hit), f"word {group} partly masked"
            if all(hit):
                masked_words += 1
                assert [labels[p] for p in group] == [ids[p] for p in group]
            else:
                assert [labels[p] for p in group] == [-100] * len(group)
                assert [new_ids[p] for p in group] == [ids[p] for p in group]
        assert labels[0] == labels[-1] == -100 and new_ids[0] == ids[0] and new_ids[-1] == ids[-1]
    assert 0.25 < masked_words / (20 * len(groups)) < 0.55  # about p = 0.4 of the words
    new_ids, labels = whole_word_mask(ids, wids, 1.0, tokenizer.mask_token_id)
    assert new_ids == [ids[0]] + [tokenizer.mask_token_id] * (len(ids) - 2) + [ids[-1]]  # always [MASK]


def test_standard_collator_masks_tokens_and_drops_word_ids(tokenizer) -> None:
    chunks = grouped(tokenized(tokenizer, ["".join(r) for r in REVIEWS]), 128)
    rows = [{k: chunks[k][i] for k in ("input_ids", "attention_mask", "labels", "word_ids")} for i in range(7)]
    torch.manual_seed(0)
    batch = MlmCollator(tokenizer, "standard")(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    original = torch.tensor(chunks["input_ids"])
    labels, inputs = batch["labels"], batch["input_ids"]
    selected = labels != -100
    assert torch.equal(labels[selected], original[selected])
    assert torch.equal(inputs[~selected], original[~selected])
    assert 0.10 < selected.float().mean().item() < 0.20  # mlm_probability 0.15
    special = (original == tokenizer.cls_token_id) | (original == tokenizer.sep_token_id)
    assert not selected[special].any()
    replaced = (inputs[selected] == tokenizer.mask_token_id).float().mean().item()
    assert 0.65 < replaced < 0.95  # 80% [MASK], the rest random or kept

    wwm = MlmCollator(tokenizer, "whole_word", 0.2)(rows)
    masked = wwm["labels"] != -100
    assert torch.equal(wwm["input_ids"][masked], torch.full((int(masked.sum()),), tokenizer.mask_token_id))
    with pytest.raises(ValueError, match="word_ids"):
        MlmCollator(tokenizer, "whole_word")([{k: v for k, v in r.items() if k != "word_ids"} for r in rows])


@pytest.mark.parametrize("kind", ["standard", "whole_word"])
def test_fixed_mask_eval_set_is_identical_across_preprocess_runs(tokenizer, kind: str) -> None:
    task = MlmTask()
    first = task.prepare(make_job(collator=kind), raw_data(), tokenizer)
    second = task.prepare(make_job(collator=kind), raw_data(), tokenizer)
    other_seed = task.prepare(make_job(collator=kind, seed=7), raw_data(), tokenizer)
    ev1, ev2 = first.splits["eval"], second.splits["eval"]
    assert ev1.column_names == ["input_ids", "attention_mask", "labels"]
    assert len(ev1) == (2 * 951) // 128 and ev1["input_ids"] == ev2["input_ids"] and ev1["labels"] == ev2["labels"]
    assert ev1["labels"] != other_seed.splits["eval"]["labels"]
    masked = np.asarray(ev1["labels"]) != -100
    assert first.info["eval_masked_tokens"] == int(masked.sum()) > 0
    target = 0.15 if kind == "standard" else 0.2 * 0.8  # per token, or per word (~1.25 tokens, minus specials)
    assert abs(masked.mean() - target) < 0.08
    train_cols = first.splits["train"].column_names
    assert ("word_ids" in train_cols) == (kind == "whole_word")
    assert len(first.splits["train"]) == (4 * 951) // 128 and first.info["chunk_size"] == 128
    # the collator leaves the fixed eval rows as they are, so evaluating twice sees the same masks
    rows = [ev1[i] for i in range(4)]
    collate = MlmCollator(tokenizer, kind)
    a, b = collate(rows), collate(rows)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["labels"].tolist() == ev1["labels"][:4]


def test_eval_masks_from_whole_arrays_equal_the_collators_row_by_row(tokenizer) -> None:
    """mask_eval_split masks equal chunks as arrays: the same generator draws, so the same masks and labels as
    the training collator (DataCollatorForLanguageModeling on padded rows) with the same seed, batch by batch."""
    chunks = grouped(tokenized(tokenizer, ["".join(r) for r in REVIEWS] * 4), 128)
    ds = datasets.Dataset.from_dict({k: chunks[k] for k in ("input_ids", "attention_mask", "labels")})
    assert len(ds) == 29 and (np.asarray(ds["input_ids"]) == tokenizer.sep_token_id).any()
    fast = mask_eval_split(ds, tokenizer, "standard", 0.15, seed=3, batch_size=8)
    collate = MlmCollator(tokenizer, "standard", 0.15, torch.Generator().manual_seed(3))
    rows = [ds[i] for i in range(len(ds))]
    slow = [collate(rows[i:i + 8]) for i in range(0, len(rows), 8)]
    for key in ("input_ids", "labels", "attention_mask"):
        assert np.asarray(fast[key]).tolist() == torch.cat([b[key] for b in slow]).tolist(), key
    labels = np.asarray(fast["labels"])
    original = np.asarray(ds["input_ids"])
    assert (labels[np.isin(original, tokenizer.all_special_ids)] == -100).all()  # specials never masked


def test_downsampling_is_seeded_and_eval_from_train_is_disjoint(tokenizer) -> None:
    task = MlmTask()
    out = task.prepare(make_job(train_size=20, test_size=5, eval_from="train"), raw_data(), tokenizer)
    again = task.prepare(make_job(train_size=20, test_size=5, eval_from="train"), raw_data(), tokenizer)
    assert (len(out.splits["train"]), len(out.splits["eval"])) == (20, 5)
    assert out.splits["train"]["input_ids"] == again.splits["train"]["input_ids"]
    all_chunks = grouped(tokenized(tokenizer, ["".join(r) for r in REVIEWS] * 4), 128)["input_ids"]
    eval_ids = [[t if lab == -100 else lab for t, lab in zip(ids, labels)]
                for ids, labels in zip(out.splits["eval"]["input_ids"], out.splits["eval"]["labels"])]
    train_ids = list(out.splits["train"]["input_ids"])
    assert len({tuple(c) for c in all_chunks}) == len(all_chunks) == 29  # 3804 tokens, all chunks distinct
    assert all(c in all_chunks for c in train_ids + eval_ids)
    assert not {tuple(c) for c in train_ids} & {tuple(c) for c in eval_ids}  # the course's disjoint split
    with pytest.raises(ValueError, match="only 29 chunks"):
        task.prepare(make_job(train_size=25, test_size=5, eval_from="train"), raw_data(), tokenizer)
    with pytest.raises(ConfigError, match="test_size"):
        make_job(eval_from="train")


def test_chunk_size_beyond_the_model_is_a_config_error(tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"chunk_size: 1024 is larger than the 512 positions"):
        MlmTask().prepare(make_job(chunk_size=1024), raw_data(), tokenizer)
    with pytest.raises(ConfigError, match="chunk_size"):
        make_job(chunk_size=4)
    with pytest.raises(ConfigError, match="mlm_probability"):
        make_job(mlm_probability=1.5)


def test_missing_text_column_is_a_clear_error(tokenizer) -> None:
    raw = raw_data().rename_column("text", "review")
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['text'\].*data.columns"):
        MlmTask().prepare(make_job(), raw, tokenizer)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_masked_lm_loss_runs_the_head_on_masked_tokens_with_the_models_own_loss_and_gradients(arch: str) -> None:
    from transformers import AutoConfig, AutoModelForMaskedLM

    sizes = {"bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
             "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
             "roberta": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 64}}[arch]
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.for_model(arch, vocab_size=300, **sizes)).eval()  # no dropout
    ids = torch.randint(5, 300, (3, 16))
    masked = torch.rand(ids.shape) < 0.2
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.where(masked, ids, -100)}
    expected = model(**batch).loss
    expected.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    seen: list[tuple[int, ...]] = []
    hook = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(tuple(args[0].shape)))
    loss = masked_lm_loss(model, batch)
    hook.remove()
    loss.backward()
    assert seen == [(1, int(masked.sum()), 32)]  # the vocabulary projection saw the masked tokens only
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6)
    with head_on_masked_positions(model, masked), torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, int(masked.sum()), 300)
    assert model(input_ids=ids).logits.shape == (3, 16, 300)  # the hook is gone afterwards


def test_masked_lm_loss_falls_back_to_the_models_loss_without_a_base_model() -> None:
    class Plain(torch.nn.Module):
        def forward(self, **batch: torch.Tensor) -> object:
            return type("Out", (), {"loss": batch["labels"].float().sum()})()

    batch = {"input_ids": torch.ones(1, 2, dtype=torch.long), "labels": torch.tensor([[3, -100]])}
    assert masked_lm_loss(Plain(), batch).item() == -97.0


def test_perplexity_and_overflow() -> None:
    assert perplexity(math.log(11.32)) == pytest.approx(11.32)
    assert perplexity(0.0) == 1.0
    assert perplexity(1000.0) == math.inf


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    return BertForMaskedLM(config).eval()


def test_evaluate_is_token_weighted_and_independent_of_batch_size(tokenizer, tiny_model, tmp_path: Path) -> None:
    task = MlmTask()
    prepared = task.prepare(make_job(), raw_data(), tokenizer)
    ev = prepared.splits["eval"]
    job = make_job()
    job.storage = f"file://{tmp_path}"
    acc = Accelerator(cpu=True)
    collate = task.collator(tokenizer, tiny_model)
    results = []
    for batch_size in (3, 14):
        loader = DataLoader(ev, batch_size=batch_size, collate_fn=collate)
        results.append(task.evaluate(EvalContext(acc, job, None, tokenizer, False), tiny_model, loader))  # type: ignore[arg-type]
    full = collate([ev[i] for i in range(len(ev))])
    with torch.no_grad():
        expected = tiny_model(**full).loss.item()  # mean CE over every masked token of the set
    for metrics in results:
        assert metrics["examples"] == len(ev) and metrics["masked_tokens"] == prepared.info["eval_masked_tokens"]
        assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
        assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert results[0]["perplexity"] == pytest.approx(results[1]["perplexity"], rel=1e-9)
    assert "perplexity=" in task.summary(results[0])


def test_predict_fills_the_mask_top5(tokenizer, tiny_model, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    [top] = MlmTask().predict(str(tmp_path), ["This is a great [MASK]."])
    assert len(top) == 5 and all(set(x) == {"token_str", "score"} for x in top)
    scores = [x["score"] for x in top]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    [two] = MlmTask().predict(str(tmp_path), ["A [MASK] movie with a [MASK] ending."])
    assert len(two) == 2 and all(len(options) == 5 for options in two)
    [mine] = MlmTask().predict(str(tmp_path), ["This is a great <mask>."])  # either placeholder
    assert [x["token_str"] for x in mine] == [x["token_str"] for x in top]
