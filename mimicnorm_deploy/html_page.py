"""One-file HTML pages with inline SVG charts: no script, no network, opens anywhere.

Charts show distributions and intervals, not lone numbers: ECDFs of raw latency samples,
dot-and-whisker rows for ratios with their bootstrap intervals, lines for batch sweeps.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 640, 300
MARGIN = {"left": 64, "right": 16, "top": 16, "bottom": 44}
ECDF_POINTS = 400  # an ECDF is drawn through this many quantiles: enough for the eye, small in the file
ECDF_TAIL_QUANTILE = 0.995  # the x axis ends here so one stall does not flatten every curve

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
section { margin-bottom: 2.5em; }
.note { color: #555; font-size: 0.9em; }
.legend span { display: inline-block; margin-right: 1.2em; font-size: 0.85em; }
.legend i { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: middle; }
svg text { font-size: 11px; fill: #333; }
"""


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, sections: Sequence[str]) -> str:
    """A complete HTML document holding `sections` (from `section`)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def section(section_id: str, title: str, *parts: str) -> str:
    return f'<section id="{escape(section_id)}"><h2>{escape(title)}</h2>\n' + "\n".join(parts) + "</section>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def legend(labels: Sequence[str]) -> str:
    items = "".join(
        f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{escape(label)}</span>'
        for i, label in enumerate(labels)
    )
    return f'<div class="legend">{items}</div>'


# --- charts ---------------------------------------------------------------------------------------


class _Axes:
    """Maps data to SVG pixels inside the plot area; optional log10 x."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], log_x: bool = False):
        self.log_x = log_x
        self.x0, self.x1 = (np.log10(v) for v in x_range) if log_x else x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1

    def x(self, value: float) -> float:
        v = np.log10(value) if self.log_x else value
        inner = WIDTH - MARGIN["left"] - MARGIN["right"]
        return MARGIN["left"] + inner * (v - self.x0) / (self.x1 - self.x0)

    def y(self, value: float) -> float:
        inner = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
        return MARGIN["top"] + inner * (1 - (value - self.y0) / (self.y1 - self.y0))


def _svg(content: str, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>{escape(title)}</title>{content}</svg>')  # fmt: skip


def _frame(axes: _Axes, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str) -> str:
    bottom, top = HEIGHT - MARGIN["bottom"], MARGIN["top"]
    left, right = MARGIN["left"], WIDTH - MARGIN["right"]
    parts = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for t in x_ticks:
        x = axes.x(t)
        parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#999"/>'
                     f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_tick(t)}</text>')  # fmt: skip
    for t in y_ticks:
        y = axes.y(t)
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(t)}</text>')  # fmt: skip
    parts.append(f'<text x="{(left + right) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {(top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
                 f"{escape(y_label)}</text>")  # fmt: skip
    return "".join(parts)


def _tick(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** np.floor(np.log10((high - low) / count))
    for factor in (1, 2, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    start = np.ceil(low / step) * step
    return [float(v) for v in np.arange(start, high + step * 1e-9, step)]


def ecdf_chart(series: dict[str, Sequence[float]], x_label: str = "latency (ms)") -> str:
    """Empirical CDFs of raw samples, one line per series, with their legend."""
    if not series:
        return note("no samples")
    arrays = {name: np.sort(np.asarray(values, dtype=np.float64)) for name, values in series.items()}
    low = min(float(a[0]) for a in arrays.values())
    high = max(float(np.quantile(a, ECDF_TAIL_QUANTILE)) for a in arrays.values())
    axes = _Axes((low, high), (0.0, 1.0))
    lines = []
    for i, (name, values) in enumerate(arrays.items()):
        levels = np.linspace(0, 1, min(ECDF_POINTS, values.size))
        xs = np.clip(np.quantile(values, levels), low, high)
        points = " ".join(f"{axes.x(x):.1f},{axes.y(p):.1f}" for x, p in zip(xs, levels, strict=True))
        lines.append(f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.5" '
                     f'points="{points}"><title>{escape(name)}</title></polyline>')  # fmt: skip
    frame = _frame(axes, _nice_ticks(low, high), [0, 0.25, 0.5, 0.75, 1.0], x_label, "fraction of inferences")
    chart = _svg(frame + "".join(lines), f"ECDF: {', '.join(arrays)}")
    return chart + legend(list(arrays)) + note(
        f"x axis ends at each series' {100 * ECDF_TAIL_QUANTILE:.1f}th percentile; the tables give p99 and max."
    )


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]], x_label: str, y_label: str, log_x: bool = True
) -> str:
    """One polyline with markers per series (e.g. throughput against batch size)."""
    points_all = [p for values in series.values() for p in values]
    if not points_all:
        return note("nothing measured")
    xs = [p[0] for p in points_all]
    ys = [p[1] for p in points_all]
    axes = _Axes((min(xs), max(xs)), (0.0, max(ys) * 1.05), log_x=log_x)
    shapes = []
    for i, values in enumerate(series.values()):
        color = PALETTE[i % len(PALETTE)]
        coords = [(axes.x(x), axes.y(y)) for x, y in sorted(values)]
        shapes.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                      f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>')  # fmt: skip
        shapes += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in coords]
    x_ticks = sorted(set(xs))
    frame = _frame(axes, x_ticks, _nice_ticks(0.0, max(ys) * 1.05), x_label, y_label)
    return _svg(frame + "".join(shapes), f"{y_label} against {x_label}") + legend(list(series))


def interval_chart(rows: Sequence[tuple[str, float, float, float]], x_label: str, reference: float | None = 1.0) -> str:
    """Dot-and-whisker rows (label, value, low, high), with a reference line (1 for ratios)."""
    if not rows:
        return note("nothing to show")
    row_height = 22
    height = MARGIN["top"] + MARGIN["bottom"] + row_height * len(rows)
    label_width = 300
    low = min([r[2] for r in rows] + ([reference] if reference is not None else []))
    high = max([r[3] for r in rows] + ([reference] if reference is not None else []))
    pad = 0.05 * (high - low or 1)
    x0, x1 = low - pad, high + pad
    inner = WIDTH - label_width - MARGIN["right"]

    def x(value: float) -> float:
        return label_width + inner * (value - x0) / (x1 - x0)

    parts = []
    bottom = MARGIN["top"] + row_height * len(rows)
    if reference is not None:
        parts.append(f'<line x1="{x(reference):.1f}" y1="{MARGIN["top"]}" x2="{x(reference):.1f}" y2="{bottom}" '
                     'stroke="#999" stroke-dasharray="4 3"/>')  # fmt: skip
    for i, (label, value, lo, hi) in enumerate(rows):
        y = MARGIN["top"] + row_height * (i + 0.5)
        color = PALETTE[0]
        parts.append(f'<text x="{label_width - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>'
                     f'<line x1="{x(lo):.1f}" y1="{y:.1f}" x2="{x(hi):.1f}" y2="{y:.1f}" stroke="{color}" '
                     f'stroke-width="2"/><circle cx="{x(value):.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                     f"<title>{value:.3f} [{lo:.3f}, {hi:.3f}]</title></circle>")  # fmt: skip
    for t in _nice_ticks(x0, x1):
        parts.append(f'<text x="{x(t):.1f}" y="{bottom + 16}" text-anchor="middle">{_tick(t)}</text>')
    parts.append(f'<text x="{label_width + inner / 2}" y="{bottom + 34}" text-anchor="middle">{escape(x_label)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} '
            f'{height}" role="img"><title>{escape(x_label)}</title>{"".join(parts)}</svg>')  # fmt: skip
