"""Batch prediction: ``nlpjobs batch-predict`` over CoNLL-2003 sentences beside the plain ``transformers.pipeline``
loop over the same rows (one call per row, as ``nlpjobs predict`` and the course's chapter 7 call it), and beside
the pipeline's own batching (one call on the list of rows, ``batch_size`` as nlpjobs'), with the outputs compared.

The model is MiniLM-L6 with a token-classification head for CoNLL's 9 labels from one seeded initialisation
(untrained: its predictions are noise, and it finds more entities than a trained model, so the aggregation does no
less work than in use), saved as a run's exported model. Both run on the bench's device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Sizes, load_preset, log, timed
from bench.records import Sample

FIGURES = ("batch-predict stage (load rows and model, predict, write parts) vs plain pipeline loop",
           "batch-predict rows/s (predict and write parts) vs the pipeline's own batching")
ROWS_PER_PART = 500
BATCH_SIZE = 32


def make_model(root: str, run: str) -> str:
    """The untrained NER model, exported as run ``run``'s model (with _SUCCESS); returns its local directory."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from nlpjobs import storage
    from nlpjobs.data.offline import CONLL_LABELS
    from nlpjobs.models import resolve_model

    source = resolve_model("offline:minilm")
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(
        source, num_labels=len(CONLL_LABELS), id2label=dict(enumerate(CONLL_LABELS)),
        label2id={n: i for i, n in enumerate(CONLL_LABELS)})
    uri = storage.join(root, "runs", run, "model")
    local = Path(storage.resolve(uri)[1])
    model.save_pretrained(str(local))
    AutoTokenizer.from_pretrained(source).save_pretrained(str(local))
    storage.write_bytes(storage.join(uri, "_SUCCESS"), b"")
    return str(local)


def entities(output: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["entity_group"], e["word"], e["start"], e["end"]) for e in output]


def compare(ours: list[Any], theirs: list[Any]) -> tuple[int, float]:
    """(rows whose entities are identical, the largest score difference over those rows)."""
    same, diff = 0, 0.0
    for a, b in zip(ours, theirs):
        if entities(a) == entities(b):
            same += 1
            diff = max([diff, *(abs(float(x["score"]) - float(y["score"])) for x, y in zip(a, b))])
    return same, diff


def measure(sizes: Sizes, scratch: Path) -> list[Sample]:
    """rows/s of nlpjobs' batch prediction and of the plain pipeline on the first ``sizes.batch_predict_rows``
    CoNLL-2003 training sentences, ``sizes.repeats`` times, alternating."""
    import torch
    from transformers import pipeline

    from nlpjobs import batch_predict, storage
    from nlpjobs.data import offline

    rows = sizes.batch_predict_rows
    root = f"file://{scratch / 'batch-predict'}"
    model_dir = make_model(root, "bench-bp")
    job = load_preset("ner", [f"storage={root}", "name=bench-bp", "predict.dataset.split=train",
                              f"predict.dataset.max_examples={rows}", f"predict.dataset.rows_per_shard={ROWS_PER_PART}",
                              f"predict.dataset.batch_size={BATCH_SIZE}"])
    texts = [" ".join(t) for t in offline.load("conll2003", ["train"])["train"].select(range(rows))["tokens"]]
    device = 0 if torch.cuda.is_available() else -1
    where = "GPU" if device == 0 else f"CPU, {torch.get_num_threads()} torch threads"
    log(f"batch-predict: {rows:,} sentences, parts of {ROWS_PER_PART}, batch {BATCH_SIZE}, on the {where}")
    samples: list[Sample] = []
    for r in range(sizes.repeats):
        storage.remove(batch_predict.output_uri(job))
        result, stage_s = timed(lambda: batch_predict.run(job, show_progress=False))
        ours = [row["output"] for row in batch_predict.read_predictions(result.uri)]

        def plain() -> tuple[Any, list[Any]]:
            pipe = pipeline("token-classification", model=model_dir, tokenizer=model_dir,
                            aggregation_strategy="simple", device=device)
            return pipe, [pipe(x) for x in texts]

        (pipe, loop), loop_s = timed(plain)
        library, library_s = timed(lambda pipe=pipe: pipe(texts, batch_size=BATCH_SIZE))
        same_loop, diff_loop = compare(ours, loop)
        same_lib, diff_lib = compare(ours, library)
        log(f"batch-predict [{r + 1}/{sizes.repeats}]: stage {rows / stage_s:,.1f} rows/s "
            f"(predict {result.rows_per_second:,.1f}), plain loop {rows / loop_s:,.1f}, pipeline batching "
            f"{rows / library_s:,.1f}; identical entities {same_loop}/{rows} and {same_lib}/{rows}")
        common = (f"the first {rows:,} CoNLL-2003 training sentences (words joined by spaces), MiniLM-L6 with an "
                  f"untrained 9-label head, aggregation_strategy=simple, on the {where}; nlpjobs: "
                  f"predict.dataset.batch_size {BATCH_SIZE}, parts of {ROWS_PER_PART} rows as JSON lines on file://, "
                  "rows sorted by length within each part (back in row order in the output)")
        samples.append(Sample(
            "ner", FIGURES[0], "rows/s", rows / stage_s, rows / loop_s, True,
            metric={"name": "same outputs as the plain loop", "rows with identical entities": same_loop,
                    "rows": rows, "largest score difference": diff_loop},
            note=f"{common}; the stage's time includes reading the corpus, loading the model, writing the parts, "
                 "manifest and _SUCCESS; the loop's includes building the pipeline (rows already in memory); "
                 "entities compared as (entity_group, word, start, end), scores as numbers"))
        samples.append(Sample(
            "ner", FIGURES[1], "rows/s", result.rows_per_second, rows / library_s, True,
            metric={"name": "same outputs as the pipeline's batching", "rows with identical entities": same_lib,
                    "rows": rows, "largest score difference": diff_lib},
            note=f"{common}; nlpjobs from its first row sent to the model to its last part committed; the baseline "
                 f"one call pipe(rows, batch_size={BATCH_SIZE}) in row order on the pipeline already built"))
    return samples
