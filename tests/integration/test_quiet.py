"""`-q` means no progress bars at all: nlpjobs' own, and the libraries' (datasets' "Generating train split"
and "Map" bars), which logs written to a file would otherwise fill with carriage returns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LABELS = "[O,B-PER,I-PER,B-ORG,I-ORG,B-LOC,I-LOC,B-MISC,I-MISC]"


def test_quiet_preprocess_prints_no_progress_bar(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 16), ("validation", 4)):
        (raw / f"{split}.jsonl").write_text("".join(json.dumps({"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}) + "\n"
                                                    for _ in range(n)))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_TQDM")}

    def preprocess(*flags: str, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nlpjobs", "preprocess", *flags, "-c", str(ROOT / "jobs/local/ner.yaml"),
                               "--set", f"data.source=files:{raw}", "--set", f"storage=file://{tmp_path / name}",
                               "--set", f"preprocess.label_names={LABELS}"],
                              capture_output=True, text=True, timeout=300, env=env)

    loud = preprocess(name="loud")
    assert loud.returncode == 0, loud.stderr
    assert "Generating train split" in loud.stderr  # the bars this is about
    quiet = preprocess("-q", name="quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert "Generating" not in quiet.stderr and "Map" not in quiet.stderr and "\r" not in quiet.stderr + quiet.stdout
