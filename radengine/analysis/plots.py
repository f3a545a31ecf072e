"""The analysis figures, drawn with matplotlib: a heatmap with a colour bar (CKA), grouped
bars with error bars and a reference line (the domain probe), a scatter plot coloured by one
category and shaped by another (embeddings); and :func:`save_figure`, which writes a figure
as PNG and SVG.

Each plotting function returns a :class:`matplotlib.figure.Figure` made directly, not with
pyplot: no display, no global state, nothing for the caller to close; ``savefig`` renders it
with the non-interactive Agg (PNG) and SVG canvases. matplotlib is imported inside the
functions, so importing this module is cheap.

Non-finite values are drawn as "n/a" gaps (bars), grey "n/a" cells (heatmap) or left out and
counted on the plot (scatter); empty input (no groups, rows or points) or inconsistent
lengths raise ``ValueError``.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FORMATS", "bar_chart", "heatmap", "save_figure", "save_kwargs", "scatter"]

FORMATS = ("png", "svg")
PNG_DPI = 150
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_NA = "0.45"  # grey of "n/a" marks


def save_kwargs(fig: Figure, fmt: str) -> dict[str, Any]:
    """The ``savefig`` arguments for ``fmt`` (png: 150 dpi; svg: no creation date), with
    the figure's title (its suptitle) as the file's title metadata."""
    title = " ".join(fig.get_suptitle().split())
    if fmt == "png":
        return {"dpi": PNG_DPI, "metadata": {"Title": title} if title else {}}
    if fmt == "svg":
        return {"metadata": {"Date": None, **({"Title": title} if title else {})}}
    raise ValueError(f"unknown figure format {fmt!r}; known: {', '.join(FORMATS)}")


def save_figure(fig: Figure, stem: str | Path, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.svg``, each atomically (a reader sees
    the old file or the whole new one).

    Args:
        fig: the figure.
        stem: the path without extension, e.g. ``out/cka``.
        formats: the formats (file extensions) to write.

    Returns:
        ``{format: path}``.
    """
    from radengine.data.store import atomic_write_bytes

    stem = Path(stem)
    paths = {}
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, **save_kwargs(fig, fmt))
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths[fmt] = path
    return paths


def _figure(width: float, height: float, title: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    if title:
        chars = max(40, int(width * 11))  # about what fits at 11 pt
        fig.suptitle("\n".join(textwrap.wrap(title, chars)), fontsize=11, gid="title")
    return fig


def _longest(labels: Sequence[str]) -> int:
    return max((len(s) for s in labels), default=0)


def _matrix(values: Sequence[Sequence[float]], nr: int, nc: int, name: str, dims: str) -> Any:
    """``values`` as an ``(nr, nc)`` float array (``name``, ``dims``: for the error)."""
    import numpy as np

    rows = [list(r) for r in values]
    if len(rows) != nr or any(len(r) != nc for r in rows):
        raise ValueError(f"{name} must be {nr} x {nc} ({dims})")
    return np.array([[float(v) for v in r] for r in rows], dtype=float).reshape(nr, nc)


def bar_chart(
    groups: Sequence[str],
    series: Sequence[str],
    means: Sequence[Sequence[float]],
    stds: Sequence[Sequence[float]] | None = None,
    *,
    title: str = "",
    ylabel: str = "",
    xlabel: str = "",
    reference: float | None = None,
    reference_label: str = "",
    value_format: str | None = "{:.3g}",
) -> Figure:
    """Grouped bars: one group per ``groups`` entry, one bar per ``series`` entry in each,
    error bars of ± ``stds``, a legend of the series.

    Args:
        groups: group labels along x (e.g. the layers).
        series: bar labels, in the legend (e.g. held-out and train accuracy).
        means: ``means[s][g]``, bar heights; NaN: no bar, "n/a" in its place.
        stds: ``stds[s][g]``, error bar half-lengths (NaN, 0 or None: no error bar).
        title: figure title.
        ylabel: y-axis label.
        xlabel: x-axis label.
        reference: a value drawn as a dashed horizontal line (e.g. chance).
        reference_label: the line's legend entry.
        value_format: format of the value printed on each bar (None: no values; values
            are left out when there are more than 40 bars).

    Returns:
        The figure.

    Raises:
        ValueError: no groups or series, or ``means``/``stds`` not series x groups.
    """
    import numpy as np

    groups, series = [str(g) for g in groups], [str(s) for s in series]
    ns, ng = len(series), len(groups)
    if not ns or not ng:
        raise ValueError("a bar chart needs at least one group and one series")
    m = _matrix(means, ns, ng, "means", "series x groups")
    sd = np.full((ns, ng), math.nan)
    if stds is not None:
        sd = _matrix(stds, ns, ng, "stds", "series x groups")
    width = max(4.5, 1.6 + ng * (0.25 * ns + 0.3)) + 0.07 * _longest([*series, reference_label])
    fig = _figure(width, 4.2 + 0.05 * min(_longest(groups), 40), title)
    ax = fig.subplots()
    bar_w = 0.8 / ns
    x = np.arange(ng)
    labels = value_format is not None and ns * ng <= 40
    for s, name in enumerate(series):
        xs = x - 0.4 + (s + 0.5) * bar_w
        ok = np.isfinite(m[s])
        bars = ax.bar(xs[ok], m[s][ok], bar_w * 0.92, color=f"C{s % 10}", label=name)
        for rect, g in zip(bars, np.flatnonzero(ok), strict=True):
            rect.set_gid(f"bar-{s}-{g}")
        if labels:
            ax.bar_label(bars, [value_format.format(v) for v in m[s][ok]], fontsize=7, padding=2)
        err = ok & np.isfinite(sd[s]) & (sd[s] > 0)
        if err.any():
            ax.errorbar(
                xs[err], m[s][err], yerr=sd[s][err], fmt="none", ecolor="0.15", capsize=3,
                elinewidth=1,
            )  # fmt: skip
        for xi in xs[~ok]:
            ax.text(xi, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color=_NA)
    if reference is not None and math.isfinite(reference):
        ax.axhline(reference, color="0.35", ls="--", lw=1, label=reference_label or None)
    if not np.isfinite(m).any():  # nothing to scale the y-axis to
        top = reference if reference is not None and math.isfinite(reference) else 0.0
        ax.set_ylim(0.0, max(1.0, 1.1 * top))
    rotate = ng > 6 or _longest(groups) > 8
    ax.set_xticks(
        x, groups, rotation=30 if rotate else 0, ha="right" if rotate else "center",
        rotation_mode="anchor",
    )  # fmt: skip
    ax.set_xlim(-0.6, ng - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.axhline(0, color="0.2", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.08)
    if ns > 1 or reference_label:
        fig.legend(loc="outside right upper", frameon=False, fontsize=9).set_gid("legend")
    return fig


def heatmap(
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    value_format: str | None = "{:.2f}",
) -> Figure:
    """A heatmap (viridis) with the value printed in each cell and a colour bar.

    Args:
        matrix: ``matrix[i][j]`` for row ``i``, column ``j``; NaN: a grey "n/a" cell.
        row_labels: one per row (top to bottom).
        col_labels: one per column (left to right).
        title: figure title.
        vmin: value of the scale's bottom (None: the finite minimum).
        vmax: value of the scale's top (None: the finite maximum).
        xlabel: what the columns are.
        ylabel: what the rows are.
        colorbar_label: what the colours are.
        value_format: format of the printed values (None: none; also none above 400 cells).

    Returns:
        The figure.

    Raises:
        ValueError: no rows or columns, or ``matrix`` not rows x columns.
    """
    import numpy as np
    from matplotlib import colormaps

    rows, cols = [str(r) for r in row_labels], [str(c) for c in col_labels]
    nr, nc = len(rows), len(cols)
    if not nr or not nc:
        raise ValueError("a heatmap needs at least one row and one column")
    m = _matrix(matrix, nr, nc, "matrix", "rows x columns")
    finite = m[np.isfinite(m)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    cell = 0.6 if max(nr, nc) <= 12 else 0.36
    width = max(4.5, 2.4 + 0.075 * _longest(rows) + nc * cell)
    height = max(3.6, 1.5 + nr * cell + 0.055 * _longest(cols))
    fig = _figure(width, height, title)
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="#bbbbbb")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=lo, vmax=hi, gid="cells")
    if value_format is not None and nr * nc <= 400:
        size = 9 if max(nr, nc) <= 8 else 7
        for (i, j), v in np.ndenumerate(m):
            if math.isfinite(v):
                r, g, b, _ = cmap(im.norm(v))
                colour = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
                text = value_format.format(v)
            else:
                colour, text = "black", "n/a"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour)
    ax.set_xticks(range(nc), cols, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(nr), rows)
    ax.set_xticks(np.arange(nc + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(nr + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.spines[:].set_visible(False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    bar = fig.colorbar(im, ax=ax, label=colorbar_label, shrink=min(1.0, 0.5 + 0.1 * nr))
    bar.ax.set_gid("colorbar")
    return fig


def _palette(k: int) -> list[Any]:
    """``k`` distinguishable colours: Tableau 10, Tableau 20, else samples of turbo."""
    import numpy as np
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [colormaps["tab20"](i) for i in range(k)]
    return [colormaps["turbo"](v) for v in np.linspace(0.05, 0.95, k)]


def scatter(
    points: Sequence[Sequence[float]],
    colour_by: Sequence[str],
    marker_by: Sequence[str] | None = None,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colour_title: str = "",
    marker_title: str = "",
    max_legend: int = 20,
) -> Figure:
    """A 2-D scatter plot, colour by one category and marker shape by another, with a
    legend for each.

    Args:
        points: ``(n, 2)`` coordinates; points with a non-finite coordinate are left out
            (their number is written on the plot).
        colour_by: ``n`` category names giving the colour.
        marker_by: ``n`` category names giving the marker shape (circle, square, triangle,
            diamond, ..., cycling); None: circles, no marker legend.
        title: figure title.
        xlabel: x-axis label.
        ylabel: y-axis label.
        colour_title: the colour legend's title (e.g. "label").
        marker_title: the marker legend's title (e.g. "domain").
        max_legend: legend entries shown per legend; the rest are counted ("... 5 more").

    Returns:
        The figure.

    Raises:
        ValueError: no points, points not ``(n, 2)``, or category lists of another length.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    pts = np.array([[float(v) for v in p] for p in points], dtype=float)
    n = len(pts)
    if not n:
        raise ValueError("a scatter plot needs at least one point")
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError("points must be (n, 2) coordinates")
    colour_by = [str(c) for c in colour_by]
    marker_by = [str(m) for m in marker_by] if marker_by is not None else [""] * n
    if len(colour_by) != n or len(marker_by) != n:
        raise ValueError(f"colour_by and marker_by must have one entry per point ({n})")
    colours = dict(zip(dict.fromkeys(colour_by), _palette(len(set(colour_by))), strict=True))
    markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(dict.fromkeys(marker_by))}
    longest = _longest([*list(colours)[:max_legend], *markers, colour_title, marker_title])
    fig = _figure(5.6 + 0.08 * min(longest, 40), 4.8, title)
    ax = fig.subplots()
    finite = np.isfinite(pts).all(axis=1)
    cb, mb = np.array(colour_by, dtype=object), np.array(marker_by, dtype=object)
    k = 0
    for c, colour in colours.items():
        for m, shape in markers.items():
            sel = finite & (cb == c) & (mb == m)
            if sel.any():
                ax.scatter(
                    pts[sel, 0], pts[sel, 1], s=18, color=colour, marker=shape, alpha=0.8,
                    linewidths=0, gid=f"points-{k}",
                )  # fmt: skip
                k += 1
    left_out = n - int(finite.sum())
    if left_out:
        note = (
            "no finite points"
            if left_out == n
            else f"{left_out} non-finite point{'s' if left_out > 1 else ''} not shown"
        )
        ax.text(0.01, 0.99, note, transform=ax.transAxes, ha="left", va="top", fontsize=8,
                color=_NA)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)

    def entries(items: dict[str, Any], handle: Any) -> list[Any]:
        shown = [handle(name, v) for name, v in list(items.items())[:max_legend]]
        if len(items) > max_legend:
            shown.append(Line2D([], [], ls="", label=f"... {len(items) - max_legend} more"))
        return shown

    def dot(name: str, colour: Any) -> Any:
        return Line2D([], [], ls="", marker="o", color=colour, markersize=6, label=name)

    def shape(name: str, marker: str) -> Any:
        return Line2D([], [], ls="", marker=marker, color="0.4", markersize=6, label=name)

    fig.legend(
        handles=entries(colours, dot), title=colour_title or None, loc="outside right upper",
        frameon=False, fontsize=9,
    ).set_gid("legend-colour")  # fmt: skip
    if len(markers) > 1:
        fig.legend(
            handles=entries(markers, shape), title=marker_title or None,
            loc="outside right lower", frameon=False, fontsize=9,
        ).set_gid("legend-marker")  # fmt: skip
    return fig
