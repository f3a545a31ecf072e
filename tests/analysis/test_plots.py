"""The analysis figures (radengine/analysis/plots.py): matplotlib Figures saved as valid PNG
and SVG with their titles, labels, colour bar and legends; NaN and empty input; no pyplot
state; Tracker.log_figure a no-op without tracking."""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.sax.saxutils import unescape

import pytest

from radengine.analysis import plots

SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AWKWARD = 'a <b> & "c"'

pytestmark = pytest.mark.filterwarnings("error")  # e.g. a collapsed layout


def saved(fig, tmp_path: Path, stem: str = "fig") -> ET.Element:
    """Save ``fig`` with save_figure, check both files, return the SVG's root (with comments:
    matplotlib writes each text, drawn as paths, as a comment)."""
    paths = plots.save_figure(fig, tmp_path / stem)
    assert paths == {"png": tmp_path / f"{stem}.png", "svg": tmp_path / f"{stem}.svg"}
    return check_files(paths["png"], paths["svg"])


def check_files(png: Path, svg: Path) -> ET.Element:
    from matplotlib.image import imread

    assert png.read_bytes()[:8] == PNG_MAGIC
    image = imread(png)
    assert image.ndim == 3 and min(image.shape[:2]) > 300  # 150 dpi
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    root = ET.parse(svg, parser=parser).getroot()
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    """The figure's texts, from the SVG."""
    return [unescape(e.text.strip()) for e in root.iter() if e.tag is ET.Comment]


def group(root: ET.Element, gid: str) -> ET.Element:
    (g,) = [e for e in root.iter(f"{SVG}g") if e.get("id") == gid]
    return g


# ------------------------------------------------------------------------------- heatmap


def test_heatmap_has_title_labels_values_and_a_colour_bar(tmp_path):
    fig = plots.heatmap(
        [[1.0, math.nan], [0.25, 0.5]], ["stem", AWKWARD], ["layer1", "layer2"],
        title="linear CKA: A vs B", xlabel="B: other", ylabel="A: scratch",
        colorbar_label="linear CKA",
    )  # fmt: skip
    root = saved(fig, tmp_path)
    assert root.find(f"{SVG}title").text == "linear CKA: A vs B"
    found = texts(root)
    for text in ("linear CKA: A vs B", "stem", AWKWARD, "layer1", "layer2", "B: other",
                 "A: scratch", "linear CKA", "1.00", "0.25", "0.50", "n/a"):  # fmt: skip
        assert text in found
    assert group(root, "colorbar") is not None
    (image,) = fig.axes[0].images
    assert image.get_array().mask.tolist() == [[False, True], [False, False]]  # NaN: grey
    assert image.get_clim() == (0.0, 1.0)


def test_heatmap_scale_from_the_data_and_all_nan(tmp_path):
    fig = plots.heatmap([[2.0, 4.0]], ["r"], ["a", "b"], vmin=None, vmax=None)
    assert fig.axes[0].images[0].get_clim() == (2.0, 4.0)
    fig = plots.heatmap([[math.nan, math.nan]], ["r"], ["a", "b"], title="empty")
    assert texts(saved(fig, tmp_path)).count("n/a") == 2


def test_heatmap_errors():
    with pytest.raises(ValueError, match=r"matrix must be 2 x 2 \(rows x columns\)"):
        plots.heatmap([[1.0]], ["a", "b"], ["c", "d"])
    with pytest.raises(ValueError, match="at least one row and one column"):
        plots.heatmap([], [], [])


# ----------------------------------------------------------------------------- bar chart


def test_bar_chart_bars_error_bars_gaps_reference_and_legend(tmp_path):
    fig = plots.bar_chart(
        ["layer1", AWKWARD], ["r1", "r2", "r3"],
        [[1.0, math.nan], [0.5, -0.2], [2.0, 3.0]],
        [[0.1, 0.1], [math.nan, 0.05], [0.0, 0.3]],
        title="probe", ylabel="accuracy (%)", xlabel="layer",
        reference=0.5, reference_label="chance (50%)",
    )  # fmt: skip
    ax = fig.axes[0]
    bars = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
    assert [len(c) for c in bars] == [1, 2, 2]  # the NaN bar left out
    errorbars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert sum(len(c.lines[2][0].get_segments()) for c in errorbars) == 3  # std > 0 only
    root = saved(fig, tmp_path)
    bar_ids = sorted(e.get("id") for e in root.iter() if e.get("id", "").startswith("bar-"))
    assert bar_ids == ["bar-0-0", "bar-1-0", "bar-1-1", "bar-2-0", "bar-2-1"]
    legend = texts(group(root, "legend"))
    assert legend == ["chance (50%)", "r1", "r2", "r3"]
    found = texts(root)
    for text in ("probe", "layer1", AWKWARD, "accuracy (%)", "layer", "n/a", "3", "-0.2"):
        assert text in found


def test_bar_chart_all_nan_is_an_empty_chart(tmp_path):
    fig = plots.bar_chart(["a", "b"], ["only"], [[math.nan, math.nan]], title="nothing")
    assert not [p for p in fig.axes[0].patches if p.get_gid()]
    found = texts(saved(fig, tmp_path))
    assert found.count("n/a") == 2 and "nothing" in found
    assert not [e for e in saved(fig, tmp_path).iter() if e.get("id") == "legend"]  # 1 series


def test_bar_chart_errors():
    with pytest.raises(ValueError, match=r"means must be 2 x 1 \(series x groups\)"):
        plots.bar_chart(["g"], ["a", "b"], [[1.0]])
    with pytest.raises(ValueError, match=r"stds must be 1 x 1"):
        plots.bar_chart(["g"], ["a"], [[1.0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="at least one group and one series"):
        plots.bar_chart([], ["a"], [[]])


# ------------------------------------------------------------------------------- scatter


def points_drawn(root: ET.Element) -> int:
    groups = [g for g in root.iter(f"{SVG}g") if g.get("id", "").startswith("points-")]
    return sum(len(list(g.iter(f"{SVG}use"))) for g in groups)


def test_scatter_points_markers_and_legends(tmp_path):
    pts = [[0, 0], [1, 2], [math.inf, 1], [2, 1], [0.5, math.nan]]
    fig = plots.scatter(
        pts, ["a", AWKWARD, "a", "a", "a"], ["p", "q", "q", "p", "p"],
        title="PCA by label", xlabel="PC1 (50%)", ylabel="PC2 (20%)",
        colour_title="label", marker_title="domain",
    )  # fmt: skip
    offsets = [c.get_offsets() for c in fig.axes[0].collections]
    assert sum(len(o) for o in offsets) == 3  # the non-finite points left out
    root = saved(fig, tmp_path)
    assert points_drawn(root) == 3
    assert texts(group(root, "legend-colour")) == ["label", "a", AWKWARD]
    assert texts(group(root, "legend-marker")) == ["domain", "p", "q"]
    found = texts(root)
    for text in ("PCA by label", "PC1 (50%)", "PC2 (20%)", "2 non-finite points not shown"):
        assert text in found


def test_scatter_one_marker_no_marker_legend_and_long_legends_cut(tmp_path):
    names = [f"class{i}" for i in range(25)]
    fig = plots.scatter([[i, i % 7] for i in range(25)], names, title="many")
    root = saved(fig, tmp_path)
    assert points_drawn(root) == 25
    legend = texts(group(root, "legend-colour"))
    assert legend == [*names[:20], "... 5 more"]
    assert not [e for e in root.iter() if e.get("id") == "legend-marker"]


def test_scatter_without_finite_points_says_so(tmp_path):
    fig = plots.scatter([[math.nan, 0.0]], ["a"], title="none")
    assert "no finite points" in texts(saved(fig, tmp_path))


def test_scatter_errors():
    with pytest.raises(ValueError, match="at least one point"):
        plots.scatter([], [])
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plots.scatter([[1.0, 2.0, 3.0]], ["a"])
    with pytest.raises(ValueError, match=r"one entry per point \(2\)"):
        plots.scatter([[0, 0], [1, 1]], ["a"])


# --------------------------------------------------------------------------------- saving


def test_save_figure_overwrites_atomically_and_knows_its_formats(tmp_path):
    fig = plots.heatmap([[0.5]], ["r"], ["c"], title="one")
    (tmp_path / "fig.svg").write_text("old")
    saved(fig, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig.svg"]  # no temps
    assert plots.save_figure(fig, tmp_path / "only", formats=["svg"]) == {
        "svg": tmp_path / "only.svg"
    }
    with pytest.raises(ValueError, match="unknown figure format 'gif'"):
        plots.save_kwargs(fig, "gif")


def test_matplotlib_is_lazy_and_pyplot_never_loaded():
    code = (
        "import sys, radengine, radengine.analysis.plots as p\n"
        "assert 'matplotlib' not in sys.modules\n"
        "p.heatmap([[1.0]], ['a'], ['b']).savefig(__import__('io').BytesIO(), format='png')\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_tracker_log_figure_is_a_no_op_without_tracking():
    from radengine.tracking import Tracker

    fig = plots.heatmap([[1.0]], ["a"], ["b"])
    assert Tracker(enabled=False).log_figure(fig, "x/fig.png") is None
