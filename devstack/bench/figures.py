"""Figures (several samples each: median, min, max), the table, and the JSON."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Figure:
    id: str  # stable, for JSON readers and the test: "codec.medium.compress.ratio"
    label: str
    unit: str
    samples: list[float]
    goal: str = ""
    # Where a figure may be 0 (e.g. a count of lost events), positive is False.
    positive: bool = True
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "label": self.label,
            "unit": self.unit,
            "median": _finite_or_none(self.median),
            "min": _finite_or_none(self.min),
            "max": _finite_or_none(self.max),
            "n": len(self.samples),
            "samples": [_finite_or_none(s) for s in self.samples],
            "goal": self.goal,
            "positive": self.positive,
            "note": self.note,
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Per-run ratios of paired samples (run i over run i)."""
    return [n / d for n, d in zip(numerators, denominators, strict=False) if d > 0]


@dataclass
class Section:
    key: str
    title: str
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0
    # CPU seconds that processes other than the bench's used meanwhile (a shared machine).
    other_cpu: float = 0.0
    error: str = ""

    @property
    def other_cores(self) -> float:
        return self.other_cpu / self.seconds if self.seconds else 0.0

    def add(
        self,
        id: str,
        label: str,
        unit: str,
        samples: list[float],
        *,
        goal: str = "",
        positive: bool = True,
        note: str = "",
    ) -> Figure:
        figure = Figure(f"{self.key}.{id}", label, unit, list(samples), goal, positive, note)
        self.figures.append(figure)
        return figure

    def get(self, id: str) -> Figure:
        for figure in self.figures:
            if figure.id == f"{self.key}.{id}":
                return figure
        raise KeyError(id)

    def as_json(self) -> dict[str, object]:
        return {
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "other_load_cores": round(self.other_cores, 2),
            "error": self.error,
            "notes": self.notes,
            "figures": [f.as_json() for f in self.figures],
            "extra": self.extra,
        }


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(sections: list[Section]) -> str:
    """Fixed-width text: one block per section, one line per figure."""
    width = max((len(f.label) for s in sections for f in s.figures), default=20)
    width = min(max(width, 20), 58)
    lines: list[str] = []
    header = f"{'figure':<{width}} {'median':>9} {'min':>9} {'max':>9}  {'unit':<10} {'n':>3}  goal"
    for section in sections:
        lines.append("")
        lines.append(
            f"== {section.title} ({section.seconds:.0f} s; other processes on the machine "
            f"meanwhile: {section.other_cores:.2f} cores)"
        )
        for note in section.notes:
            lines.append(f"   {note}")
        if section.error:
            lines.append(f"   FAILED: {section.error}")
        if not section.figures:
            continue
        lines.append(header)
        for f in section.figures:
            label = f.label if len(f.label) <= width else f.label[: width - 1] + "…"
            lines.append(
                f"{label:<{width}} {_fmt(f.median):>9} {_fmt(f.min):>9} {_fmt(f.max):>9}  "
                f"{f.unit:<10} {len(f.samples):>3}  {f.goal}"
            )
    return "\n".join(lines)
