"""Small self-contained SVG figures: a grouped bar chart with error bars, a heatmap with a
colour scale, a scatter plot with a legend. No plotting library: each writer returns the
SVG text (UTF-8, well-formed XML, fonts from the viewer), so figures can be logged to MLflow
and opened in any browser. Non-finite values are drawn as gaps (bars, scatter) or grey
cells (heatmap)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

__all__ = ["PALETTE", "bar_chart_svg", "heatmap_svg", "scatter_svg"]

# Tableau 10 then its light variants: distinguishable and colour-blind aware for <= 10.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#a0cbe8", "#ffbe7d", "#ff9d9a", "#86bcb6", "#8cd17d",
    "#f1ce63", "#d4a6c8", "#fabfd2", "#d7b5a6", "#79706e",
)  # fmt: skip
_FONT = 'font-family="sans-serif"'
_MARKERS = ("circle", "square", "triangle", "diamond")


def _t(text: object) -> str:
    return escape(str(text), {'"': "&quot;"})


def _n(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(width)}" height="{_n(height)}" '
            f'viewBox="0 0 {_n(width)} {_n(height)}">',
            f"<title>{_t(title)}</title>",
            f'<rect width="{_n(width)}" height="{_n(height)}" fill="white"/>',
            f'<text x="{_n(width / 2)}" y="20" text-anchor="middle" font-size="14" {_FONT}>'
            f"{_t(title)}</text>",
            *body,
            "</svg>",
            "",
        ]
    )


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 12))
        v += step
    return out


def _legend(x: float, y: float, entries: Sequence[tuple[str, str, str]]) -> list[str]:
    """Entries ``(label, colour, marker)`` stacked from (x, y)."""
    out = []
    for i, (label, colour, marker) in enumerate(entries):
        cy = y + 16 * i
        out.append(_marker(marker, x + 6, cy, 5, colour, cls="legend-key"))
        out.append(
            f'<text x="{_n(x + 16)}" y="{_n(cy + 4)}" font-size="11" {_FONT}>{_t(label)}</text>'
        )
    return out


def _marker(kind: str, x: float, y: float, r: float, colour: str, cls: str = "point") -> str:
    if kind == "square":
        return (
            f'<rect class="{cls}" x="{_n(x - r)}" y="{_n(y - r)}" width="{_n(2 * r)}" '
            f'height="{_n(2 * r)}" fill="{colour}" fill-opacity="0.8"/>'
        )
    if kind in ("triangle", "diamond"):
        pts = (
            [(x, y - r), (x + r, y + r), (x - r, y + r)]
            if kind == "triangle"
            else [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
        )
        p = " ".join(f"{_n(a)},{_n(b)}" for a, b in pts)
        return f'<polygon class="{cls}" points="{p}" fill="{colour}" fill-opacity="0.8"/>'
    return (
        f'<circle class="{cls}" cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{colour}" '
        'fill-opacity="0.8"/>'
    )


def bar_chart_svg(
    groups: Sequence[str],
    series: Sequence[str],
    means: Sequence[Sequence[float]],
    stds: Sequence[Sequence[float]] | None = None,
    *,
    title: str = "",
    ylabel: str = "",
) -> str:
    """Grouped bars: one group per ``groups`` entry, one bar per ``series`` entry in each.

    Args:
        groups: group labels along x (e.g. the table's columns).
        series: bar labels, in the legend (e.g. the table's rows).
        means: ``means[s][g]``, bar heights; NaN leaves a gap.
        stds: ``stds[s][g]``, error bar half-lengths (NaN or None: no bar).
        title: figure title.
        ylabel: y-axis label.
    """
    ns, ng = len(series), len(groups)
    if len(means) != ns or any(len(r) != ng for r in means):
        raise ValueError(f"means must be {ns} x {ng} (series x groups)")
    stds = stds if stds is not None else [[math.nan] * ng for _ in range(ns)]
    if len(stds) != ns or any(len(r) != ng for r in stds):
        raise ValueError(f"stds must be {ns} x {ng} (series x groups)")
    tops = [
        m + (s if math.isfinite(s) else 0.0)
        for rm, rs in zip(means, stds, strict=True)
        for m, s in zip(rm, rs, strict=True)
        if math.isfinite(m)
    ]
    bots = [
        m - (s if math.isfinite(s) else 0.0)
        for rm, rs in zip(means, stds, strict=True)
        for m, s in zip(rm, rs, strict=True)
        if math.isfinite(m)
    ]
    lo = min([0.0, *bots])
    hi = max([0.0, *tops]) or 1.0
    hi += 0.05 * (hi - lo)
    bar_w = 14.0
    group_w = ns * bar_w + 24
    left, top, plot_h = 64.0, 36.0, 260.0
    legend_w = 16 + 7 * max((len(s) for s in series), default=0)
    plot_w = max(group_w * ng, 120.0)
    label_h = 20 + 3.5 * max((len(g) for g in groups), default=0)
    width, height = left + plot_w + 20 + legend_w, top + plot_h + label_h + 30

    def y(v: float) -> float:
        return top + plot_h * (hi - v) / (hi - lo)

    body = ['<g class="axes" stroke="#333" stroke-width="1">']
    body.append(f'<line x1="{_n(left)}" y1="{_n(top)}" x2="{_n(left)}" y2="{_n(top + plot_h)}"/>')
    body.append(f'<line x1="{_n(left)}" y1="{_n(y(0))}" x2="{_n(left + plot_w)}" y2="{_n(y(0))}"/>')
    body.append("</g>")
    for v in _ticks(lo, hi):
        body.append(
            f'<line x1="{_n(left - 4)}" y1="{_n(y(v))}" x2="{_n(left + plot_w)}" '
            f'y2="{_n(y(v))}" stroke="#ddd" stroke-width="0.5"/>'
        )
        body.append(
            f'<text x="{_n(left - 6)}" y="{_n(y(v) + 4)}" text-anchor="end" font-size="10" '
            f"{_FONT}>{_n(v) if abs(v) >= 1e-12 else '0'}</text>"
        )
    if ylabel:
        cy = top + plot_h / 2
        body.append(
            f'<text x="14" y="{_n(cy)}" transform="rotate(-90 14 {_n(cy)})" '
            f'text-anchor="middle" font-size="11" {_FONT}>{_t(ylabel)}</text>'
        )
    for g, name in enumerate(groups):
        gx = left + g * group_w + 12
        for s in range(ns):
            m, sd = float(means[s][g]), float(stds[s][g])
            if not math.isfinite(m):
                continue
            x0 = gx + s * bar_w
            y0, y1 = sorted((y(m), y(0)))
            body.append(
                f'<rect class="bar" x="{_n(x0 + 1)}" y="{_n(y0)}" width="{_n(bar_w - 2)}" '
                f'height="{_n(max(y1 - y0, 0.5))}" fill="{PALETTE[s % len(PALETTE)]}">'
                f"<title>{_t(series[s])}, {_t(name)}: {m:.4g}"
                + (f" ± {sd:.2g}" if math.isfinite(sd) else "")
                + "</title></rect>"
            )
            if math.isfinite(sd) and sd > 0:
                cx = x0 + bar_w / 2
                body.append(
                    f'<path class="errorbar" d="M{_n(cx)} {_n(y(m - sd))}V{_n(y(m + sd))}'
                    f'M{_n(cx - 3)} {_n(y(m - sd))}h6M{_n(cx - 3)} {_n(y(m + sd))}h6" '
                    'stroke="#222" stroke-width="1" fill="none"/>'
                )
        lx, ly = gx + ns * bar_w / 2, top + plot_h + 12
        body.append(
            f'<text x="{_n(lx)}" y="{_n(ly)}" transform="rotate(30 {_n(lx)} {_n(ly)})" '
            f'font-size="10" {_FONT}>{_t(name)}</text>'
        )
    body += _legend(
        left + plot_w + 20,
        top + 6,
        [(s, PALETTE[i % len(PALETTE)], "square") for i, s in enumerate(series)],
    )
    return _svg(width, height, body, title)


def _colour(v: float, lo: float, hi: float) -> str:
    """Viridis-like ramp (5 stops, linear in between); grey for NaN."""
    if not math.isfinite(v):
        return "#bbbbbb"
    stops = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
    f = 0.0 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
    pos = f * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    w = pos - i
    r, g, b = (round(a + (c - a) * w) for a, c in zip(stops[i], stops[i + 1], strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap_svg(
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    xlabel: str = "",
    ylabel: str = "",
) -> str:
    """A heatmap with the value printed in each cell and a colour bar.

    Args:
        matrix: ``matrix[i][j]`` for row ``i``, column ``j``.
        row_labels: one per row (top to bottom).
        col_labels: one per column (left to right).
        title: figure title.
        vmin: value of the scale's bottom (None: the matrix minimum).
        vmax: value of the scale's top (None: the matrix maximum).
        xlabel: what the columns are.
        ylabel: what the rows are.
    """
    rows = [[float(v) for v in r] for r in matrix]
    nr, nc = len(row_labels), len(col_labels)
    if len(rows) != nr or any(len(r) != nc for r in rows):
        raise ValueError(f"matrix must be {nr} x {nc} (rows x columns)")
    finite = [v for r in rows for v in r if math.isfinite(v)]
    lo = vmin if vmin is not None else min(finite, default=0.0)
    hi = vmax if vmax is not None else max(finite, default=1.0)
    cell = 48.0
    left = 24 + 6.5 * max((len(s) for s in row_labels), default=0) + (16 if ylabel else 0)
    top = 40.0
    bottom = 20 + 5 * max((len(s) for s in col_labels), default=0) + (16 if xlabel else 0)
    width = left + nc * cell + 90
    height = top + nr * cell + bottom
    body = []
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            x, yy = left + j * cell, top + i * cell
            body.append(
                f'<rect class="cell" x="{_n(x)}" y="{_n(yy)}" width="{_n(cell)}" '
                f'height="{_n(cell)}" fill="{_colour(v, lo, hi)}" stroke="white">'
                f"<title>{_t(row_labels[i])} / {_t(col_labels[j])}: {v:.4f}</title></rect>"
            )
            dark = math.isfinite(v) and hi > lo and (v - lo) / (hi - lo) < 0.6
            body.append(
                f'<text x="{_n(x + cell / 2)}" y="{_n(yy + cell / 2 + 4)}" text-anchor="middle" '
                f'font-size="11" fill="{"white" if dark else "black"}" {_FONT}>'
                f"{f'{v:.2f}' if math.isfinite(v) else 'n/a'}</text>"
            )
    for i, name in enumerate(row_labels):
        body.append(
            f'<text x="{_n(left - 6)}" y="{_n(top + i * cell + cell / 2 + 4)}" '
            f'text-anchor="end" font-size="11" {_FONT}>{_t(name)}</text>'
        )
    for j, name in enumerate(col_labels):
        x, yy = left + j * cell + cell / 2, top + nr * cell + 10
        body.append(
            f'<text x="{_n(x)}" y="{_n(yy)}" transform="rotate(40 {_n(x)} {_n(yy)})" '
            f'font-size="11" {_FONT}>{_t(name)}</text>'
        )
    if xlabel:
        body.append(
            f'<text x="{_n(left + nc * cell / 2)}" y="{_n(height - 6)}" text-anchor="middle" '
            f'font-size="11" {_FONT}>{_t(xlabel)}</text>'
        )
    if ylabel:
        cy = top + nr * cell / 2
        body.append(
            f'<text x="12" y="{_n(cy)}" transform="rotate(-90 12 {_n(cy)})" '
            f'text-anchor="middle" font-size="11" {_FONT}>{_t(ylabel)}</text>'
        )
    # Colour bar: 20 steps from lo (bottom) to hi (top), labelled at both ends and the middle.
    bx, bh, steps = left + nc * cell + 20, max(nr * cell, 100.0), 20
    for k in range(steps):
        v = lo + (hi - lo) * (k + 0.5) / steps
        yy = top + bh * (1 - (k + 1) / steps)
        body.append(
            f'<rect class="scale" x="{_n(bx)}" y="{_n(yy)}" width="14" '
            f'height="{_n(bh / steps + 0.3)}" fill="{_colour(v, lo, hi)}"/>'
        )
    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        body.append(
            f'<text x="{_n(bx + 18)}" y="{_n(top + bh * (1 - frac) + 4)}" font-size="10" '
            f"{_FONT}>{v:.2f}</text>"
        )
    return _svg(width, max(height, top + bh + 20), body, title)


def scatter_svg(
    points: Sequence[Sequence[float]],
    colour_by: Sequence[str],
    marker_by: Sequence[str] | None = None,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> str:
    """A 2-D scatter plot, colour by one category and marker shape by another, with a legend.

    Every point is one element of class ``point`` (non-finite points are left out).

    Args:
        points: ``(n, 2)`` coordinates.
        colour_by: ``n`` category names giving the colour (legend: one entry per name).
        marker_by: ``n`` category names giving the marker shape (circle, square, triangle,
            diamond, cycling); None: circles.
        title: figure title.
        xlabel: x-axis label.
        ylabel: y-axis label.
    """
    pts = [(float(p[0]), float(p[1])) for p in points]
    n = len(pts)
    marker_by = marker_by if marker_by is not None else [""] * n
    if len(colour_by) != n or len(marker_by) != n:
        raise ValueError(f"colour_by and marker_by must have one entry per point ({n})")
    colours = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(dict.fromkeys(colour_by))}
    markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(dict.fromkeys(marker_by))}
    ok = [(x, yy) for x, yy in pts if math.isfinite(x) and math.isfinite(yy)]
    xs, ys = [p[0] for p in ok] or [0.0], [p[1] for p in ok] or [0.0]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    pad_x, pad_y = 0.05 * (x1 - x0) or 1.0, 0.05 * (y1 - y0) or 1.0
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    left, top, size = 56.0, 36.0, 360.0
    names = list(colours) + ([m for m in markers if m] if len(markers) > 1 else [])
    legend_w = 30 + 7 * max((len(s) for s in names), default=0)
    width, height = left + size + 20 + legend_w, top + size + 44

    def px(v: float) -> float:
        return left + size * (v - x0) / (x1 - x0)

    def py(v: float) -> float:
        return top + size * (y1 - v) / (y1 - y0)

    body = [
        f'<rect x="{_n(left)}" y="{_n(top)}" width="{_n(size)}" height="{_n(size)}" '
        'fill="none" stroke="#333"/>'
    ]
    for v in _ticks(x0, x1):
        body.append(
            f'<text x="{_n(px(v))}" y="{_n(top + size + 14)}" text-anchor="middle" '
            f'font-size="10" {_FONT}>{v:.3g}</text>'
        )
    for v in _ticks(y0, y1):
        body.append(
            f'<text x="{_n(left - 4)}" y="{_n(py(v) + 4)}" text-anchor="end" font-size="10" '
            f"{_FONT}>{v:.3g}</text>"
        )
    if xlabel:
        body.append(
            f'<text x="{_n(left + size / 2)}" y="{_n(top + size + 32)}" text-anchor="middle" '
            f'font-size="11" {_FONT}>{_t(xlabel)}</text>'
        )
    if ylabel:
        cy = top + size / 2
        body.append(
            f'<text x="12" y="{_n(cy)}" transform="rotate(-90 12 {_n(cy)})" '
            f'text-anchor="middle" font-size="11" {_FONT}>{_t(ylabel)}</text>'
        )
    body.append('<g class="points">')
    for (x, yy), c, m in zip(pts, colour_by, marker_by, strict=True):
        if math.isfinite(x) and math.isfinite(yy):
            body.append(_marker(markers[m], px(x), py(yy), 3.5, colours[c]))
    body.append("</g>")
    entries = [(c, col, "circle") for c, col in colours.items()]
    if len(markers) > 1:
        entries += [(m, "#555555", shape) for m, shape in markers.items()]
    body += _legend(left + size + 20, top + 6, entries)
    return _svg(width, height, body, title)
