"""One table for the whole run, printed and written into BENCHMARKS.md.

BENCHMARKS.md keeps what people wrote (profile findings, how to close a gap)
outside the markers; a run replaces only what lies between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

START = "<!-- bench:results:start (written by `make bench`; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


@dataclass(frozen=True)
class Row:
    measurement: str
    result: str
    compared_with: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""  # "met", "missed", or empty when there is no target


@dataclass
class Section:
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ratio(ours: float, theirs: float) -> str:
    if not theirs or math.isnan(theirs) or math.isnan(ours):
        return "n/a"
    return f"{ours / theirs:.2f}×"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def number(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def render_table(sections: Sequence[Section]) -> str:
    lines = ["| measurement | result | compared with | ratio | target | |", "|---|---|---|---|---|---|"]
    for section in sections:
        lines.append(f"| **{section.title}** | | | | | |")
        for row in section.rows:
            cells = (row.measurement, row.result, row.compared_with, row.ratio, row.target, row.verdict)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def render_results(sections: Sequence[Section], header: Sequence[str]) -> str:
    parts = [*header, "", render_table(sections), ""]
    for section in sections:
        if section.notes:
            parts.append(f"**{section.title}**")
            parts.extend(f"- {note}" for note in section.notes)
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def write_benchmarks(path: Path, results: str) -> None:
    """Replace the results between the markers, keeping everything else."""
    block = f"{START}\n{results}{END}"
    if path.exists():
        text = path.read_text()
        if START in text and END in text:
            before, rest = text.split(START, 1)
            after = rest.split(END, 1)[1]
            path.write_text(before + block + after)
            return
    path.write_text(f"# Benchmarks\n\n{block}\n")
