"""The course's own code, the reference every figure and equivalence test compares nlpjobs against.

Each ``course_*`` function is the Hugging Face course's chapter 7 code as written there (NER, masked-LM
domain adaptation, translation, summarization, causal-LM pretraining and extractive QA), with only the
tokenizer and constants passed in instead of read from notebook globals. None of it ships in the ``nlpjobs``
package: the product's vectorised versions are tested equal to these.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np

# ---- preprocessing ------------------------------------------------------------------------------


def course_align_labels_with_tokens(labels: list[int], word_ids: list[int | None]) -> list[int]:
    """The course's label rule: B-X (odd id) on a continuation token becomes I-X (id + 1)."""
    new_labels = []
    current_word = None
    for word_id in word_ids:
        if word_id != current_word:
            # Start of a new word!
            current_word = word_id
            label = -100 if word_id is None else labels[word_id]
            new_labels.append(label)
        elif word_id is None:
            # Special token
            new_labels.append(-100)
        else:
            # Same word as previous token
            label = labels[word_id]
            # If the label is B-XXX we change it to I-XXX
            if label % 2 == 1:
                label += 1
            new_labels.append(label)
    return new_labels


def course_ner_map_fn(tokenizer: Any) -> Callable[[dict[str, list]], Any]:
    """The course's ``tokenize_and_align_labels`` for ``Dataset.map(batched=True)``."""

    def tokenize_and_align_labels(examples: dict[str, list]) -> Any:
        tokenized_inputs = tokenizer(examples["tokens"], truncation=True, is_split_into_words=True)
        all_labels = examples["ner_tags"]
        new_labels = []
        for i, labels in enumerate(all_labels):
            word_ids = tokenized_inputs.word_ids(i)
            new_labels.append(course_align_labels_with_tokens(labels, word_ids))
        tokenized_inputs["labels"] = new_labels
        return tokenized_inputs

    return tokenize_and_align_labels


def course_qa_train_fn(tokenizer: Any, max_length: int = 384, stride: int = 128) -> Callable[[dict], Any]:
    """The course's ``preprocess_training_examples``."""

    def preprocess_training_examples(examples: dict[str, list]) -> Any:
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        offset_mapping = inputs.pop("offset_mapping")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        start_positions, end_positions = course_label_loop(inputs, offset_mapping, sample_map, examples["answers"])
        inputs["start_positions"] = start_positions
        inputs["end_positions"] = end_positions
        return inputs

    return preprocess_training_examples


def course_qa_eval_fn(tokenizer: Any, max_length: int = 384, stride: int = 128) -> Callable[[dict], Any]:
    """The course's ``preprocess_validation_examples`` (non-context offsets become None)."""

    def preprocess_validation_examples(examples: dict[str, list]) -> Any:
        questions = [q.strip() for q in examples["question"]]
        inputs = tokenizer(questions, examples["context"], max_length=max_length, truncation="only_second",
                           stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                           padding="max_length")
        sample_map = inputs.pop("overflow_to_sample_mapping")
        example_ids = []
        for i in range(len(inputs["input_ids"])):
            sample_idx = sample_map[i]
            example_ids.append(examples["id"][sample_idx])
            sequence_ids = inputs.sequence_ids(i)
            offset = inputs["offset_mapping"][i]
            inputs["offset_mapping"][i] = [o if sequence_ids[k] == 1 else None for k, o in enumerate(offset)]
        inputs["example_id"] = example_ids
        return inputs

    return preprocess_validation_examples


def course_mlm_fns(tokenizer: Any, chunk_size: int = 128) -> tuple[Callable[[dict], Any], Callable[[dict], Any]]:
    """The course's ``tokenize_function`` (no truncation, word_ids) and ``group_texts``
    (batch concatenated with list sums, remainder dropped, labels = input_ids copy)."""

    def tokenize_function(examples: dict[str, list]) -> Any:
        result = tokenizer(examples["text"])
        if tokenizer.is_fast:
            result["word_ids"] = [result.word_ids(i) for i in range(len(result["input_ids"]))]
        return result

    def group_texts(examples: dict[str, list]) -> Any:
        # Concatenate all texts
        concatenated_examples = {k: sum(examples[k], []) for k in examples.keys()}  # noqa: SIM118
        # Compute length of concatenated texts
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        # We drop the last chunk if it's smaller than chunk_size
        total_length = (total_length // chunk_size) * chunk_size
        # Split by chunks of max_len
        result = {
            k: [t[i: i + chunk_size] for i in range(0, total_length, chunk_size)]
            for k, t in concatenated_examples.items()
        }
        # Create a new labels column
        result["labels"] = result["input_ids"].copy()
        return result

    return tokenize_function, group_texts


def course_translation_split(train: datasets.Dataset, train_size: float = 0.9, seed: int = 20) -> datasets.DatasetDict:
    """The course's validation split carved out of kde4's only split."""
    split_datasets = train.train_test_split(train_size=train_size, seed=seed)
    split_datasets["validation"] = split_datasets.pop("test")
    return split_datasets


def course_translation_fn(tokenizer: Any, max_length: int = 128, source: str = "en",
                          target: str = "fr") -> Callable[[dict], Any]:
    """The course's ``preprocess_function``, targets through ``text_target``."""

    def preprocess_function(examples: dict[str, list]) -> Any:
        inputs = [ex[source] for ex in examples["translation"]]
        targets = [ex[target] for ex in examples["translation"]]
        model_inputs = tokenizer(
            inputs, text_target=targets, max_length=max_length, truncation=True
        )
        return model_inputs

    return preprocess_function


def course_summarization_mix(ds: datasets.Dataset, seed: int = 42) -> datasets.Dataset:
    """The course's bilingual shuffle, then the short-title filter (titles of > 2 words).
    The course concatenates its two single-language datasets first; ours carry both languages already."""
    books = ds.shuffle(seed=seed)
    return books.filter(lambda x: len(x["title"].split()) > 2)


def course_summarization_fn(tokenizer: Any, max_input_length: int = 512,
                            max_target_length: int = 30) -> Callable[[dict], Any]:
    """The course's ``preprocess_function`` as coded (targets by a plain second call, not
    ``text_target``: the same ids for mT5's single vocabulary). review_body/review_title are body/title here."""

    def preprocess_function(examples: dict[str, list]) -> Any:
        model_inputs = tokenizer(
            examples["body"],
            max_length=max_input_length,
            truncation=True,
        )
        labels = tokenizer(
            examples["title"], max_length=max_target_length, truncation=True
        )
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    return preprocess_function


def course_clm_fn(tokenizer: Any, context_length: int = 128) -> Callable[[dict], Any]:
    """The course's ``tokenize``, overflowing 128-token chunks, every shorter tail dropped."""

    def tokenize(element: dict[str, list]) -> Any:
        outputs = tokenizer(
            element["content"],
            truncation=True,
            max_length=context_length,
            return_overflowing_tokens=True,
            return_length=True,
        )
        input_batch = []
        for length, input_ids in zip(outputs["length"], outputs["input_ids"]):
            if length == context_length:
                input_batch.append(input_ids)
        return {"input_ids": input_batch}

    return tokenize


# ---- extractive QA: training labels and answer post-processing ----------------------------------


def course_tokenize(questions: Sequence[str], contexts: Sequence[str], tokenizer: Any, max_length: int,
                    stride: int) -> Any:
    """The course's tokenizer call for QA features, with questions stripped first."""
    return tokenizer(
        [q.strip() for q in questions],
        list(contexts),
        max_length=max_length,
        truncation="only_second",
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def course_train_labels(
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_length: int = 384,
    stride: int = 128,
) -> tuple[list[int], list[int]]:
    """Reference only: the course's per-feature label loop, transcribed as is."""
    inputs = course_tokenize(questions, contexts, tokenizer, max_length, stride)
    offset_mapping = inputs.pop("offset_mapping")
    sample_map = inputs.pop("overflow_to_sample_mapping")
    return course_label_loop(inputs, offset_mapping, sample_map, answers)


def course_label_loop(inputs: Any, offset_mapping: Sequence[Any], sample_map: Sequence[int],
                      answers: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    """The course's loop over the tokenized features: (start, end) token positions, (0, 0) when the answer
    is not wholly inside the window."""
    start_positions = []
    end_positions = []

    for i, offset in enumerate(offset_mapping):
        sample_idx = sample_map[i]
        answer = answers[sample_idx]
        start_char = answer["answer_start"][0]
        end_char = answer["answer_start"][0] + len(answer["text"][0])
        sequence_ids = inputs.sequence_ids(i)

        idx = 0
        while sequence_ids[idx] != 1:
            idx += 1
        context_start = idx
        while sequence_ids[idx] == 1:
            idx += 1
        context_end = idx - 1

        if offset[context_start][0] > start_char or offset[context_end][1] < end_char:
            start_positions.append(0)
            end_positions.append(0)
        else:
            idx = context_start
            while idx <= context_end and offset[idx][0] <= start_char:
                idx += 1
            start_positions.append(idx - 1)

            idx = context_end
            while idx >= context_start and offset[idx][1] >= end_char:
                idx -= 1
            end_positions.append(idx + 1)
    return start_positions, end_positions


def course_best_answers(start_logits: np.ndarray, end_logits: np.ndarray,
                        example_to_features: Mapping[str, list[int]], examples: Iterable[tuple[str, str]],
                        offsets_of: Callable[[int], Sequence[Any]], n_best: int = 20,
                        max_answer_length: int = 30) -> Iterator[tuple[str, str]]:
    """The course's ``compute_metrics`` loop: for each (id, context) the text of the best-scoring candidate
    span over the top ``n_best`` starts and ends of every feature, or ``""``. ``offsets_of(feature)`` reads
    one feature's offsets, ``None`` outside the context, the way the caller's features are stored."""
    for example_id, context in examples:
        answers = []

        # Loop through all features associated with that example
        for feature_index in example_to_features[example_id]:
            start_logit = start_logits[feature_index]
            end_logit = end_logits[feature_index]
            offsets = offsets_of(feature_index)

            start_indexes = np.argsort(start_logit)[-1 : -n_best - 1 : -1].tolist()
            end_indexes = np.argsort(end_logit)[-1 : -n_best - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    # Skip answers that are not fully in the context
                    if offsets[start_index] is None or offsets[end_index] is None:
                        continue
                    # Skip answers with a length that is either < 0 or > max_answer_length
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue

                    answer = {
                        "text": context[offsets[start_index][0] : offsets[end_index][1]],
                        "logit_score": start_logit[start_index] + end_logit[end_index],
                    }
                    answers.append(answer)

        # Select the answer with the best score
        if len(answers) > 0:
            best_answer = max(answers, key=lambda x: x["logit_score"])
            yield example_id, best_answer["text"]
        else:
            yield example_id, ""


def course_compute_predictions(start_logits: np.ndarray, end_logits: np.ndarray, features: Any, examples: Any,
                               n_best: int = 20, max_answer_length: int = 30) -> list[dict[str, str]]:
    """The course's ``compute_metrics`` up to ``predicted_answers``: features and examples read row by row
    from its own validation features (offsets ``None`` outside the context)."""
    example_to_features = collections.defaultdict(list)
    for idx, feature in enumerate(features):
        example_to_features[feature["example_id"]].append(idx)
    rows = ((example["id"], example["context"]) for example in examples)
    best = course_best_answers(start_logits, end_logits, example_to_features, rows,
                               lambda i: features[i]["offset_mapping"], n_best, max_answer_length)
    return [{"id": example_id, "prediction_text": text} for example_id, text in best]


def course_postprocess(start_logits: np.ndarray, end_logits: np.ndarray, feature_example_ids: Sequence[str],
                       offset_mapping: np.ndarray, examples: Mapping[str, Sequence[str]], n_best: int = 20,
                       max_answer_length: int = 30) -> dict[str, str]:
    """The same loop over nlpjobs' eval features: offsets in the ``-1`` representation are turned back into
    the course's ``None`` per feature, as reading a feature row would."""
    example_to_features = collections.defaultdict(list)
    for idx, example_id in enumerate(feature_example_ids):
        example_to_features[example_id].append(idx)

    def offsets_of(feature_index: int) -> list[Any]:
        return [o if o[0] >= 0 else None for o in np.asarray(offset_mapping[feature_index]).tolist()]

    rows = zip(examples["id"], examples["context"], strict=True)
    return dict(course_best_answers(start_logits, end_logits, example_to_features, rows, offsets_of, n_best,
                                    max_answer_length))
