"""Benchmark records: per-repeat samples, their medians, ratios, results.json and the markdown table."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_KEYS = ("task", "figure", "unit", "nlpjobs", "baseline", "ratio", "metric")
"""The keys of every record in results.json (issue 6); ``baseline`` names what nlpjobs is compared with
in the figure's name, e.g. "course recipe" or "tokenizer alone"."""


@dataclass
class Sample:
    """One repeat of one figure: nlpjobs' value and the baseline's, measured back to back."""

    task: str
    figure: str
    unit: str
    nlpjobs: float | None
    baseline: float | None
    higher_is_better: bool
    """True for throughputs (ratio = nlpjobs / baseline), False for times (ratio = baseline / nlpjobs)."""
    metric: dict[str, Any] | None = None
    """The evaluation metric the run reached, e.g. {"name": "overall_f1", "nlpjobs": 0.8, "baseline": 0.8}."""
    note: str | None = None
    """Why a value is missing, or what the figure assumes."""


def ratio(nlpjobs: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """How many times better nlpjobs is than the baseline (> 1: better); None when either is missing or 0."""
    if nlpjobs is None or baseline is None or not math.isfinite(nlpjobs) or not math.isfinite(baseline):
        return None
    if nlpjobs <= 0 or baseline <= 0:
        return None
    return nlpjobs / baseline if higher_is_better else baseline / nlpjobs


def scores_metric(name: str, keys: Sequence[str], nlpjobs: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """A Sample's ``metric``: both runs' ``keys[0]`` score under ``name``, then every further key as
    "nlpjobs KEY" / "baseline KEY"."""
    head, *rest = keys
    metric: dict[str, Any] = {"name": name, "nlpjobs": nlpjobs[head], "baseline": baseline[head]}
    for key in rest:
        metric.update({f"nlpjobs {key}": nlpjobs[key], f"baseline {key}": baseline[key]})
    return metric


def median(values: Iterable[float | None]) -> float | None:
    """Median of the measured values, ignoring missing ones; None when nothing was measured."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(present) if present else None


def _median_metric(metrics: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Per key, the median of numeric values across repeats; other values from the first repeat."""
    present = [m for m in metrics if m]
    if not present:
        return None
    out: dict[str, Any] = {}
    for key, value in present[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = median(m.get(key) for m in present)
        else:
            out[key] = value
    return out


@dataclass
class Record:
    """The medians of one figure over its repeats."""

    task: str
    figure: str
    unit: str
    nlpjobs: float | None
    baseline: float | None
    ratio: float | None
    metric: dict[str, Any] | None
    higher_is_better: bool = True
    repeats: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The results.json record (exactly :data:`RECORD_KEYS`)."""
        return {k: getattr(self, k) for k in RECORD_KEYS}


def aggregate(samples: Sequence[Sample]) -> list[Record]:
    """One record per (task, figure), in first-seen order: medians of nlpjobs and baseline, their ratio."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.task, s.figure), []).append(s)
    records = []
    for (task, figure), group in groups.items():
        first = group[0]
        units = {s.unit for s in group}
        if len(units) != 1:
            raise ValueError(f"{task}/{figure}: samples disagree on the unit: {sorted(units)}")
        nl, base = median(s.nlpjobs for s in group), median(s.baseline for s in group)
        notes = list(dict.fromkeys(s.note for s in group if s.note))
        records.append(Record(task, figure, first.unit, nl, base, ratio(nl, base, first.higher_is_better),
                              _median_metric([s.metric for s in group]), first.higher_is_better,
                              repeats=sum(1 for s in group if s.nlpjobs is not None or s.baseline is not None),
                              notes=notes))
    return records


def fmt(value: float | None) -> str:
    """A figure for the table: 3 significant digits, thousands separated; '—' when missing."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    digits = max(0, 2 - magnitude)
    return f"{value:,.{digits}f}"


def fmt_metric(metric: dict[str, Any] | None) -> str:
    if not metric:
        return "—"
    name = metric.get("name", "metric")
    parts = [f"{k} {fmt(v) if isinstance(v, (int, float)) else v}" for k, v in metric.items() if k != "name"]
    return f"{name}: " + ", ".join(parts)


def markdown_table(records: Sequence[Record]) -> str:
    """The results table: one row per figure, medians, the ratio (> 1: nlpjobs better) and the metric."""
    lines = ["| task | figure | unit | nlpjobs | baseline | ratio | metric | runs |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in records:
        ratio_text = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
        lines.append(f"| {r.task} | {r.figure} | {r.unit} | {fmt(r.nlpjobs)} | {fmt(r.baseline)} | {ratio_text} "
                     f"| {fmt_metric(r.metric)} | {r.repeats} |")
    notes = [(r, n) for r in records for n in r.notes]
    if notes:
        lines.append("")
        lines += [f"- {r.task} / {r.figure}: {n}" for r, n in notes]
    return "\n".join(lines)


def write_results(out_dir: Path, records: Sequence[Record], machine_lines: Sequence[str], header: str = "") -> None:
    """Write ``results.json`` (the records) and ``results.md`` (machine description + table, then the full-scale
    quality figure of ``quality.md`` where ``make quality`` has written one: its runs take most of an hour and
    are not repeated with every speed run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps([r.to_json() for r in records], indent=2) + "\n")
    md = ["# nlpjobs benchmark", ""]
    if header:
        md += [header, ""]
    md += ["Machine:", "", *[f"- {line}" for line in machine_lines], "",
           "Medians of the repeated runs; ratio = how many times better nlpjobs is than the baseline "
           "(> 1: nlpjobs better; times: baseline / nlpjobs, throughputs: nlpjobs / baseline).", "",
           markdown_table(records), ""]
    quality = out_dir / "quality.md"
    if quality.is_file():
        md += [quality.read_text()]
    (out_dir / "results.md").write_text("\n".join(md))


QUALITY_HEADING = "## Quality at full scale"


def write_section(out_dir: Path, records: Sequence[Record], machine_lines: Sequence[str], header: str,
                  title: str) -> None:
    """Merge a run of some figures into an existing ``results.md`` and ``results.json`` instead of replacing them:
    the run's header, machine and table become the section ``## <title>`` of ``results.md`` (replaced when it is
    there, else placed before the quality section, else at the end), and its records replace those of the same
    task and figure in ``results.json`` (the others are kept, in their order; new ones are appended)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / "results.json"
    kept = json.loads(data_path.read_text()) if data_path.is_file() else []
    new = {(r.task, r.figure): r.to_json() for r in records}
    merged = [new.pop((r["task"], r["figure"]), r) for r in kept]
    data_path.write_text(json.dumps(merged + list(new.values()), indent=2) + "\n")
    heading = f"## {title}"
    section = "\n".join([heading, "", *([header, ""] if header else []), "Machine:", "",
                         *[f"- {line}" for line in machine_lines], "", markdown_table(records), "", ""])
    md_path = out_dir / "results.md"
    text = md_path.read_text() if md_path.is_file() else "# nlpjobs benchmark\n\n"
    if heading + "\n" in text:
        start = text.index(heading + "\n")
        following = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[following + 1:] if following != -1 else "")
    elif QUALITY_HEADING in text:
        at = text.index(QUALITY_HEADING)
        text = text[:at] + section + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md_path.write_text(text)
