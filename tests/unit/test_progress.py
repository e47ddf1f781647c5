"""Progress bars written to a log file become a few whole lines (no carriage returns, no cursor escapes) that
`nlpjobs status` can still read; other output passes through as written."""

from __future__ import annotations

import io
import subprocess
import sys

from tqdm import tqdm

from nlpjobs.k8s.cluster import last_progress
from nlpjobs.progress import LogStream


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bar_becomes_its_first_line_one_line_per_interval_and_its_last() -> None:
    out, clock = io.StringIO(), Clock()
    log = LogStream(out, interval_s=30, clock=clock)
    bar = tqdm(total=100, desc="train ner", unit="step", file=log, mininterval=0)
    for _ in range(100):
        clock.now += 1  # 100 s in all: lines at 0 s (0/100), 30, 60, 90 s and the end
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text and "\n\n" not in text
    lines = text.splitlines()
    assert [line.split("|")[-1].split()[0] for line in lines] == ["0/100", "30/100", "60/100", "90/100", "100/100"]
    assert last_progress(text) == "train 100% (100/100)"


def test_other_output_passes_through_unchanged_between_bars() -> None:
    out = io.StringIO()
    log = LogStream(out, interval_s=30, clock=Clock())
    log.write("step 3/3 eval: f1=0.5")
    log.write("\n")
    for _ in tqdm(range(4), desc="evaluate", file=log, leave=False, mininterval=0):
        pass
    print("error: something", file=log)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0] == "step 3/3 eval: f1=0.5" and lines[3] == "error: something"
    assert lines[1].startswith("evaluate:   0%|") and lines[2].startswith("evaluate: 100%|##########| 4/4 ")
    assert last_progress(out.getvalue()) == "evaluate 100% (4/4)"


def test_cursor_moves_and_erasures_write_nothing() -> None:
    out = io.StringIO()
    LogStream(out, interval_s=30, clock=Clock()).write("\r\x1b[A  \r\x1b[2Kevaluate:  50%|#####     | 2/4\r    \r")
    assert out.getvalue() == "evaluate:  50%|#####     | 2/4\n"


def test_the_cli_writes_library_bars_to_a_file_as_lines(tmp_path) -> None:  # noqa: ANN001
    """A real datasets map under `nlpjobs`' logging setup, standard error redirected to a file."""
    script = ("import datasets, nlpjobs.cli as c; c._setup_logging(False); "
              "datasets.Dataset.from_dict({'x': list(range(50))}).map(lambda b: b, batched=True, batch_size=5, "
              "desc='tokenize train')")
    log = tmp_path / "stderr.log"
    with log.open("w") as fh:
        subprocess.run([sys.executable, "-c", script], stderr=fh, check=True, env={"PATH": "/usr/bin"})
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    assert last_progress(text) == "tokenize 100% (50/50)"
