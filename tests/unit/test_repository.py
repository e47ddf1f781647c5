"""The repository as a newcomer meets it: generated docs that match the code, a short README, no references to
documents that are not in it, and a wheel that ships the product without the benchmark."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from click.testing import CliRunner

from nlpjobs.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_matches_the_generator() -> None:
    result = CliRunner().invoke(main, ["config", "reference", "--markdown"])
    assert result.exit_code == 0, result.output
    written = (ROOT / "docs" / "configuration.md").read_text()
    assert written == result.output, ("docs/configuration.md is out of date: regenerate it with "
                                      "`nlpjobs config reference --markdown > docs/configuration.md`")


def test_the_reference_has_a_table_per_section_with_every_setting() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for section in ("data", "model", "preprocess", "train", "deepspeed", "evaluate", "predict"):
        assert f"## `{section}`" in text
    for key in ("train.learning_rate", "train.cpu_kernels", "data.source", "preprocess.max_length (ner only)"):
        assert f"| `{key}` |" in text


def test_the_readme_reads_in_ten_minutes() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_no_file_cites_documents_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    outside = ["SPEC " + "§", "DESIGN " + "§", "SPEC" + ".md", "DESIGN" + ".md"]
    cited = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".whl", ".gz"}:
            continue
        text = path.read_text(errors="replace")
        cited += [f"{name}: {ref}" for ref in outside if ref in text]
    assert not cited


def test_the_wheel_ships_the_product_without_the_benchmark(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, text=True)
    [wheel] = tmp_path.glob("nlpjobs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nlpjobs/train/engine.py" in names and "nlpjobs/train/speed/__init__.py" in names
    assert not [n for n in names if n.startswith("bench/") or "/bench/" in n or "course" in Path(n).name]


def test_test_modules_have_distinct_names() -> None:
    """pytest imports test modules by basename (no packages): two ``test_x.py`` in different folders break collection."""
    names = sorted(p.name for folder in ("tests", "bench") for p in (ROOT / folder).rglob("test_*.py"))
    assert not {n for n in names if names.count(n) > 1}
