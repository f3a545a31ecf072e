"""Synthetic CT anatomy: tissue values, the painter's canvas, patients and the six body regions.

Everything here works in millimetres in the patient's frame; :mod:`.ct` turns an anatomy into
slices (series planning, lesions, texture, blur and noise). See the package docstring for the
conventions and the content of each region."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from radengine.data.synthetic.common import (
    _drift,
    _on,
    _profile,
)

_Num = float | np.ndarray  # a scalar or one value per slice

_BG, _BODY, _BONE, _LUNG, _LIVER, _KIDNEY, _SPLEEN, _HEART, _BRAIN, _BLADDER, _LESION = range(11)

_SCAN_FOV_RADIUS_MM = 250.0

# Tissue values (HU) that do not depend on the patient or the contrast phase.
_AIR = -1000.0
_FAT = -100.0
_CSF = 6.0
_URINE = 8.0
_DISC = 85.0

# Reconstructed slice spacings (mm) a series picks from; long series over a short region get
# thinner spacing so that they still fit in the region (see _sample_positions).
_SLICE_SPACINGS = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)

# Expected lesions per mm of scanned length. With half-extents of 6-18 mm (mean extent 24 mm) a
# Poisson process touches 1 - exp(-0.025 * 24) = 45% of slices; lesions that miss their host
# organ on a slice bring the observed rate to about 30-45%.
_LESION_DENSITY = 0.025
_LESION_HALF_EXTENT_MM = (6.0, 18.0)

# Amplitude (HU) of the smooth tissue texture added per organ class: parenchyma is never flat,
# and trabecular bone is much rougher than fat or fluid. Indexed by mask value.
_TEXTURE_HU = np.array([0, 6, 45, 22, 6, 6, 5, 5, 3, 2, 7], dtype=np.float32)

# Enhancement by contrast phase. Arterial: bright arteries, corticomedullary kidneys; portal
# venous: everything enhances, liver most. Values are per-series jittered around these.
_PHASE_HU: dict[str, dict[str, float]] = {
    "none": {
        "artery": 42.0,
        "vein": 40.0,
        "liver": 58.0,
        "spleen": 46.0,
        "kidney": 32.0,
        "medulla": 30.0,
        "myocardium": 48.0,
        "muscle": 48.0,
    },
    "arterial": {
        "artery": 300.0,
        "vein": 90.0,
        "liver": 75.0,
        "spleen": 105.0,
        "kidney": 190.0,
        "medulla": 85.0,
        "myocardium": 110.0,
        "muscle": 55.0,
    },
    "venous": {
        "artery": 165.0,
        "vein": 160.0,
        "liver": 112.0,
        "spleen": 120.0,
        "kidney": 165.0,
        "medulla": 150.0,
        "myocardium": 100.0,
        "muscle": 58.0,
    },
}
# Probability of (none, arterial, venous) per region: head and limb scans are mostly plain.
_PHASE_PROB: dict[str, tuple[float, float, float]] = {
    "head_neck": (0.8, 0.1, 0.1),
    "thorax": (0.4, 0.2, 0.4),
    "abdomen": (0.3, 0.2, 0.5),
    "extremities": (0.85, 0.1, 0.05),
    "hip_pelvis": (0.35, 0.15, 0.5),
    "spine": (0.8, 0.05, 0.15),
}


# --------------------------------------------------------------------------------------------
# The canvas: a stack of slices painted back to front in millimetre coordinates
# --------------------------------------------------------------------------------------------
class _Canvas:
    """An (n, size, size) stack of HU images and organ masks, painted like a painter paints.

    Shapes are given in the patient's frame, which may be rotated by ``tilt`` degrees about the
    isocentre (nobody lies perfectly straight); the table and the scan field of view stay in the
    image frame. Shapes are evaluated only inside the bounding box of their union over the
    slices, so small structures (ribs, vessels, lesions) cost little even on large images.
    """

    def __init__(
        self, n: int, size: int, fov: float, center: tuple[float, float], tilt: float = 0.0
    ) -> None:
        self.n, self.size, self.fov = n, size, fov
        self.spacing = fov / size
        self.tilted = tilt != 0.0
        self.cos, self.sin = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
        icx, icy = self.to_image(*center)
        offsets = (np.arange(size, dtype=np.float64) + 0.5) * self.spacing - fov / 2.0
        self.x = (offsets + icx).astype(np.float32).reshape(1, 1, size)
        self.y = (offsets + icy).astype(np.float32).reshape(1, size, 1)
        self.x_edge = icx - fov / 2.0
        self.y_edge = icy - fov / 2.0
        self.img = np.full((n, size, size), _AIR, dtype=np.float32)
        self.mask = np.zeros((n, size, size), dtype=np.uint8)

    def to_image(self, xa: _Num, ya: _Num) -> tuple[_Num, _Num]:
        """Patient-frame coordinates (mm) to image-frame coordinates."""
        return self.cos * xa - self.sin * ya, self.sin * xa + self.cos * ya

    def to_patient(self, xi: _Num, yi: _Num) -> tuple[_Num, _Num]:
        """Image-frame coordinates (mm) to patient-frame coordinates."""
        return self.cos * xi + self.sin * yi, self.cos * yi - self.sin * xi

    def _col(self, value: float | np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """A scalar or per-slice value as an (n, 1, 1) column."""
        a = np.asarray(value, dtype=dtype)
        if a.size == 1:
            return np.full((self.n, 1, 1), a.reshape(()), dtype=dtype)
        return a.reshape(self.n, 1, 1)

    def _index(self, lo: float, hi: float, edge: float) -> slice | None:
        i0 = max(0, math.floor((lo - edge) / self.spacing))
        i1 = min(self.size, math.ceil((hi - edge) / self.spacing) + 1)
        return slice(i0, i1) if i1 > i0 else None

    def rows(self, lo: float, hi: float) -> slice | None:
        """Rows whose image-frame y lies (roughly) within [lo, hi] mm."""
        return self._index(lo, hi, self.y_edge)

    def shape(
        self,
        cx: float | np.ndarray,
        cy: float | np.ndarray,
        ax: float | np.ndarray,
        ay: float | np.ndarray,
        hu: float | np.ndarray,
        label: int | np.ndarray,
        *,
        angle: float | np.ndarray = 0.0,
        kind: str = "ellipse",
        box: float = 0.0,
        within: int | None = None,
        clip: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
        y_max: float | np.ndarray | None = None,
    ) -> None:
        """Paint a (rotated) ellipse, super-ellipse or rectangle on every slice.

        Args:
            cx, cy: Centre in mm (patient frame), scalar or one value per slice.
            ax, ay: Half-axes in mm (before rotation); a slice where either is <= 0 is skipped.
            hu: Value to paint, scalar or per slice.
            label: Organ class to paint into the mask, scalar or per slice.
            angle: Rotation in degrees (x toward y).
            kind: ``"ellipse"`` or ``"rect"``.
            box: For ellipses, 0 (a true ellipse) to 1 (a rectangle): squarer outlines such
                as an abdomen or pelvis, at a fraction of the cost of a super-ellipse power.
            within: Paint only over pixels whose mask currently equals this class.
            clip: Also require being inside this axis-aligned ellipse (cx, cy, ax, ay).
            y_max: Paint only where y <= y_max (e.g. a body flattened on the table).
        """
        cx, cy, ax, ay = (self._col(v) for v in (cx, cy, ax, ay))
        present = (ax > 0) & (ay > 0)
        on = np.flatnonzero(present[:, 0, 0])
        if on.size == 0:
            return
        ks = slice(int(on[0]), int(on[-1]) + 1)
        # Bounding box in the image frame: a circle of radius "reach" is rotation invariant.
        reach = np.maximum(ax, ay) * (1.0 if kind == "ellipse" and box == 0.0 else 1.415)
        icx, icy = self.to_image(cx, cy)
        x_lo, x_hi = float((icx - reach)[on].min()), float((icx + reach)[on].max())
        y_lo, y_hi = float((icy - reach)[on].min()), float((icy + reach)[on].max())
        if clip is not None:
            ccx, ccy, cax, cay = (self._col(v) for v in clip)
            creach = np.maximum(cax, cay)
            iccx, iccy = self.to_image(ccx, ccy)
            x_lo, x_hi = (
                max(x_lo, float((iccx - creach).min())),
                min(x_hi, float((iccx + creach).max())),
            )
            y_lo, y_hi = (
                max(y_lo, float((iccy - creach).min())),
                min(y_hi, float((iccy + creach).max())),
            )
        xs = self._index(x_lo, x_hi, self.x_edge)
        ys = self._index(y_lo, y_hi, self.y_edge)
        if xs is None or ys is None:
            return
        xv, yv = self.x[..., xs], self.y[:, ys, :]
        if self.tilted:
            xv, yv = self.to_patient(xv, yv)
        # Rotate the pixel grid into the shape's axes once (per slice only if the angle varies
        # per slice) and move the centre instead of every pixel: fewer full-size operations.
        if np.ndim(angle) == 0:
            c, s = (
                np.float32(math.cos(math.radians(angle))),
                np.float32(math.sin(math.radians(angle))),
            )
        else:
            rad = np.deg2rad(self._col(angle)[ks])
            c, s = np.cos(rad), np.sin(rad)
        if np.ndim(angle) == 0 and angle == 0:
            xr, yr, cxr, cyr = xv, yv, cx[ks], cy[ks]
        else:
            xr, yr = xv * c + yv * s, yv * c - xv * s
            cxr, cyr = cx[ks] * c + cy[ks] * s, cy[ks] * c - cx[ks] * s
        # A zero axis is replaced by 1 only to avoid dividing by zero; "present" removes it.
        u = (xr - cxr) * (1.0 / np.where(present[ks], ax[ks], 1.0))
        v = (yr - cyr) * (1.0 / np.where(present[ks], ay[ks], 1.0))
        if kind == "ellipse" and box == 0.0:
            inside = u * u + v * v <= 1.0
        elif kind == "ellipse":
            u, v = u * u, v * v
            inside = (1.0 - box) * (u + v) + box * np.maximum(u, v) <= 1.0
        elif kind == "rect":
            inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        else:
            raise ValueError(f"kind: unknown shape {kind!r}")
        inside &= present[ks]
        if clip is not None:
            cu = (xv - ccx[ks]) / np.maximum(cax[ks], 1e-3)
            cw = (yv - ccy[ks]) / np.maximum(cay[ks], 1e-3)
            inside &= cu * cu + cw * cw <= 1.0
        if y_max is not None:
            inside &= yv <= self._col(y_max)[ks]
        mask_view = self.mask[ks, ys, xs]
        if within is not None:
            inside &= mask_view == within
        np.copyto(self.img[ks, ys, xs], self._col(hu)[ks], where=inside)
        np.copyto(mask_view, self._col(label, np.uint8)[ks], where=inside)

    def ring(
        self,
        cx: _Num,
        cy: _Num,
        ax: _Num,
        ay: _Num,
        width: _Num,
        outer_hu: _Num,
        inner_hu: _Num,
        label: int | np.ndarray,
        **kw: Any,
    ) -> None:
        """A shell of ``outer_hu`` (thickness ``width`` mm) filled with ``inner_hu``.

        Cortical bone around cancellous bone or marrow, a bowel wall around its content.
        """
        self.shape(cx, cy, ax, ay, outer_hu, label, **kw)
        self.shape(cx, cy, np.asarray(ax) - width, np.asarray(ay) - width, inner_hu, label, **kw)


def _draw_table(
    cv: _Canvas, rng: np.random.Generator, top: float, width: float, curve: float
) -> None:
    """The patient table (or head holder): a foam pad on a carbon-fibre shell with a foam core.

    ``top`` is where the patient rests; ``curve`` (1/mm) bends the sides up into a cradle. The
    table is labelled background: it is not part of the patient.
    """
    pad = rng.uniform(0.0, 20.0)
    pad_hu = rng.uniform(-850.0, -600.0)
    shell = rng.uniform(2.0, 4.0)
    shell_hu = rng.uniform(150.0, 450.0)
    core = rng.uniform(25.0, 45.0)
    core_hu = rng.uniform(-950.0, -850.0)
    total = pad + 2 * shell + core
    rows = cv.rows(top - curve * (width / 2) ** 2 - 1.0, top + total + 1.0)
    if rows is None:
        return
    depth = cv.y[:, rows, :] - (top - curve * cv.x * cv.x)
    hu = np.select(
        [depth < pad, depth < pad + shell, depth < pad + shell + core],
        [pad_hu, shell_hu, core_hu],
        shell_hu,
    ).astype(np.float32)
    inside = (depth >= 0) & (depth < total) & (np.abs(cv.x) <= width / 2)
    np.copyto(cv.img[:, rows, :], hu, where=inside)


def _draw_vertebra(
    cv: _Canvas,
    cx: np.ndarray,
    cy: np.ndarray,
    s: float | np.ndarray,
    phase: np.ndarray,
    cancellous: float,
    cortex: float,
) -> None:
    """A vertebra whose appearance follows the slice's position within its level.

    ``phase`` in [0, 1) is the position within one vertebral level: near 0 the slice cuts the
    intervertebral disc, in the middle the pedicles and laminae close the canal into a ring, and
    the spinous process, angled downward, shows progressively further back. This periodic change
    is what makes consecutive spine slices differ realistically.
    """
    disc = phase < 0.16
    canal_y = cy + 14.0 * s + 7.0 * s
    # Articular processes flank the canal at every level, so even a slice through the disc
    # shows posterior bone; mid-level the pedicles and laminae close the ring.
    for side in (-1.0, 1.0):
        cv.shape(cx + side * 12.0 * s, canal_y + 2.0 * s, 5.5 * s, 6.5 * s, 0.8 * cortex, _BONE)
    arch = (phase > 0.22) & (phase < 0.85)
    cv.shape(cx, canal_y, _on(arch, 12.5 * s), 11.0 * s, 0.8 * cortex, _BONE)
    spinous = np.clip((phase - 0.35) / 0.6, 0.0, 1.0) * 16.0 * s
    cv.shape(
        cx,
        canal_y + 9.0 * s + spinous / 2,
        3.0 * s,
        _on(spinous > 1, 5 + spinous / 2),
        0.75 * cortex,
        _BONE,
        kind="rect",
    )
    transverse = (phase > 0.25) & (phase < 0.6)
    for side in (-1.0, 1.0):
        cv.shape(
            cx + side * 18.0 * s,
            canal_y - 3.0 * s,
            _on(transverse, 12.0 * s),
            4.0 * s,
            0.75 * cortex,
            _BONE,
            kind="rect",
            angle=side * 12.0,
        )
    body_hu = np.where(disc, _DISC, 0.7 * cortex)
    body_label = np.where(disc, _BODY, _BONE)
    cv.shape(cx, cy, 17.0 * s, 14.0 * s, body_hu, body_label)
    cv.shape(cx, cy, _on(~disc, 15.0 * s), 12.0 * s, cancellous, _BONE)
    # Spinal canal: CSF around the cord.
    cv.shape(cx, canal_y, 8.0 * s, 7.0 * s, _CSF + 4, _BODY)
    cv.shape(cx, canal_y, 4.5 * s, 4.0 * s, 35.0, _BODY)


def _bowel_loops(
    cv: _Canvas,
    rng: np.random.Generator,
    z: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    ax: np.ndarray,
    ay: np.ndarray,
    count: int,
    present: np.ndarray,
) -> None:
    """Bowel loops scattered in an elliptical cavity: a soft-tissue wall around gas, fluid or
    mottled faeces. Each loop wanders smoothly along z and appears over a limited z range."""
    clip = (cx, cy, ax, ay)
    for _ in range(count):
        rad = rng.uniform(0.1, 0.85)
        theta = rng.uniform(0, 2 * math.pi)
        bx = cx + ax * rad * np.cos(theta) + _drift(rng, z, 12.0)
        by = cy + ay * rad * np.sin(theta) + _drift(rng, z, 12.0)
        r = rng.uniform(10.0, 25.0)
        z0 = rng.uniform(z.min() - 40, z.max() + 40)
        extent = rng.uniform(50.0, 200.0)
        size = r * np.sqrt(np.clip(1.0 - ((z - z0) / extent) ** 2, 0.0, 1.0)) * present
        content = rng.choice(3, p=(0.35, 0.35, 0.3))
        inner = (_AIR, rng.uniform(0.0, 20.0), rng.uniform(-250.0, 0.0))[content]
        cv.ring(
            bx,
            by,
            size,
            size * rng.uniform(0.7, 1.0),
            2.5,
            rng.uniform(30, 50),
            inner,
            _BODY,
            within=_BODY,
            clip=clip,
        )
        if content == 2:  # faeces: trapped gas bubbles
            cv.shape(bx + r * 0.3, by - r * 0.2, size * 0.3, size * 0.25, _AIR, _BODY, within=_BODY)


# --------------------------------------------------------------------------------------------
# Patients and series
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Patient:
    """Body habitus shared by all series of one patient (sizes in mm, densities in HU)."""

    female: bool
    scale: float  # overall size, 1 = average adult
    girth: float  # extra width from adiposity
    aspect: float  # anteroposterior / lateral ratio factor
    fat: float  # subcutaneous fat thickness
    visceral: float  # 0 lean .. 1 much visceral fat
    height: float  # z-length factor
    head: float  # head size factor
    cancellous: float  # bone density (falls with age)
    cortex: float
    marrow: float  # fatty marrow of long-bone shafts
    lung: float  # parenchyma density
    liver: float  # organ size factors
    heart: float
    kidney: float
    spleen: float
    atrophy: float  # 0 young .. 1 old brain: wider CSF spaces and ventricles
    shift_x: float  # off-centring on the table
    shift_y: float
    level_offset: float  # phase of the vertebral levels along z


def _sample_patient(rng: np.random.Generator) -> _Patient:
    female = bool(rng.random() < 0.5)
    scale = float(np.clip(rng.normal(0.95 if female else 1.03, 0.06), 0.82, 1.2))
    adiposity = float(rng.beta(2.0, 2.5))
    return _Patient(
        female=female,
        scale=scale,
        girth=1.0 + 0.2 * (adiposity - 0.4),
        aspect=float(np.clip(rng.normal(1.0, 0.07), 0.82, 1.2)),
        fat=5.0 + 35.0 * adiposity,
        visceral=float(np.clip(adiposity + rng.normal(0.0, 0.15), 0.0, 1.0)),
        height=scale * rng.uniform(0.95, 1.05),
        head=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        cancellous=rng.uniform(150.0, 330.0),
        cortex=rng.uniform(1000.0, 1450.0),
        marrow=rng.uniform(-60.0, 10.0),
        lung=rng.uniform(-880.0, -780.0),
        liver=float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.25)),
        heart=float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.25)),
        kidney=float(np.clip(rng.normal(1.0, 0.07), 0.8, 1.2)),
        spleen=rng.uniform(0.75, 1.3),
        atrophy=rng.uniform(0.0, 1.0),
        shift_x=rng.normal(0.0, 10.0),
        shift_y=rng.normal(5.0, 10.0),
        level_offset=rng.uniform(0.0, 1000.0),
    )


def _sample_positions(
    rng: np.random.Generator, n: int, length: float, window: tuple[float, float]
) -> tuple[np.ndarray, float]:
    """Depths (mm below the region's top) of ``n`` equally spaced slices, and their spacing.

    The series covers a random stretch of the region's window; if it cannot fit at the drawn
    spacing, the spacing shrinks so that the series spans the whole window.
    """
    spacing = float(rng.choice(_SLICE_SPACINGS))
    room = (window[1] - window[0]) * length
    if (n - 1) * spacing > room:
        spacing = room / (n - 1)
    start = window[0] * length + rng.uniform(0.0, room - (n - 1) * spacing)
    return start + spacing * np.arange(n, dtype=np.float64), spacing


class _Anatomy(abc.ABC):
    """One series' anatomy as smooth functions of the normalised depth t (0 top .. 1 bottom).

    Subclasses sample their parameters in ``__init__`` and paint in ``draw``; they set
    ``fov``/``center`` (the display field of view) and ``spine`` (vertebral body centre per
    slice, used to centre a dedicated spine view).
    """

    length: ClassVar[float] = 250.0  # head-to-foot extent of the region (mm, average adult)
    z_top: ClassVar[float] = 1000.0  # patient z of the region's top (mm above the soles)
    level_mm: ClassVar[float] = 25.0  # height of one vertebral level
    hosts: tuple[int, ...] = (_BODY,)  # organs that may hold a lesion

    def __init__(
        self,
        p: _Patient,
        rng: np.random.Generator,
        t: np.ndarray,
        z: np.ndarray,
        hu: dict[str, float],
    ) -> None:
        self.p, self.rng, self.t, self.z, self.hu = p, rng, t, z, hu
        self.n = len(t)
        self.fov = 400.0
        self.center = (0.0, 0.0)
        self.spine = (np.zeros(self.n), np.zeros(self.n))
        self.spine_scale = 1.0

    def level_phase(self) -> np.ndarray:
        """Position of each slice within its vertebral level, in [0, 1)."""
        level = self.level_mm * self.p.height
        return np.mod((self.z + self.p.level_offset) / level, 1.0)

    def trunk(
        self,
        cv: _Canvas,
        cx: _Num,
        cy: _Num,
        ax: _Num,
        ay: _Num,
        fat: _Num,
        table_y: float,
        box: float = 0.0,
    ) -> None:
        """Skin and subcutaneous fat, then the muscle wall, flattened where it meets the table."""
        cv.shape(cx, cy, ax, ay, 25.0, _BODY, box=box, y_max=table_y)
        cv.shape(
            cx, cy, ax - 2.0, ay - 2.0, _FAT + self.rng.normal(0, 6), _BODY, box=box, y_max=table_y
        )
        cv.shape(
            cx, cy, ax - fat, ay - fat, self.hu["muscle"], _BODY, box=box, y_max=table_y - fat * 0.6
        )

    @abc.abstractmethod
    def draw(self, cv: _Canvas) -> None:
        """Draw this region's anatomy for every slice of the series onto ``cv``."""


class _HeadNeck(_Anatomy):
    length = 250.0
    z_top = 1720.0
    hosts = (_BRAIN,)
    level_mm = 18.0

    def __init__(
        self,
        p: _Patient,
        rng: np.random.Generator,
        t: np.ndarray,
        z: np.ndarray,
        hu: dict[str, float],
    ) -> None:
        super().__init__(p, rng, t, z, hu)
        s = p.head
        self.s = s
        self.cx = 0.5 * p.shift_x + _drift(rng, z, 1.5)
        self.cy = rng.normal(0.0, 8.0) + _drift(rng, z, 1.5)
        # The cranium is a spherical cap near the vertex and narrows into the skull base.
        cap = np.sqrt(np.clip(1.0 - ((0.45 - t) / 0.45) ** 2, 0.0, 1.0))
        prof = np.where(t < 0.45, cap, 1.0) * _profile(t, [0.6, 0.74, 0.8], [1.0, 0.8, 0.0])
        self.crx = 72.0 * s * prof * rng.uniform(0.94, 1.06)
        self.cry = 92.0 * s * prof * rng.uniform(0.94, 1.06)
        self.skull = rng.uniform(5.0, 8.0) * s * _profile(t, [0.5, 0.7], [1.0, 1.5])
        neck = _profile(t, [0.58, 0.7, 0.82, 1.0], [0.0, 0.8, 1.0, 1.05])
        self.nax = (48.0 * s + 0.4 * p.fat) * neck * p.girth
        self.nay = (45.0 * s + 0.3 * p.fat) * neck
        self.ncy = self.cy + 18.0 * s
        self.face = _profile(t, [0.55, 0.62, 0.76, 0.82], [0.0, 1.0, 1.0, 0.0])
        self.vert_y = self.ncy + 5.0 * s
        self.spine = (self.cx, self.vert_y)
        self.spine_scale = 0.72 * s
        back = np.maximum(self.cy + self.cry + 6.0 * s, self.ncy + self.nay)
        self.table_y = float(back.max()) + rng.uniform(0.0, 3.0)
        self.fov = rng.uniform(220.0, 260.0) * s
        self.center = (float(self.cx.mean()) + rng.normal(0, 5), float(self.cy.mean()) + 5.0)

    def draw(self, cv: _Canvas) -> None:
        p, rng, t, s, hu = self.p, self.rng, self.t, self.s, self.hu
        cx, cy = self.cx, self.cy
        _draw_table(cv, rng, self.table_y, 260.0, 1.0 / 700.0)

        # Neck and face (lower slices): fat, muscle, airway, vessels, jaw, cervical spine.
        ncy, vy = self.ncy, self.vert_y
        cv.shape(cx, ncy, self.nax, self.nay, _FAT, _BODY)
        neck_fat = 3.0 + 0.3 * p.fat
        cv.shape(cx, ncy, self.nax - neck_fat, self.nay - neck_fat, hu["muscle"], _BODY)
        face = self.face
        cv.shape(cx, cy - 25.0 * s, 60.0 * s * face, 72.0 * s * face, hu["muscle"] - 5, _BODY)
        jaw = _profile(t, [0.63, 0.67, 0.77, 0.8], [0.0, 1.0, 1.0, 0.0])
        teeth = _profile(t, [0.66, 0.68, 0.71, 0.73], [0.0, 1.0, 1.0, 0.0]) > 0
        jaw_hu = np.where(teeth, rng.uniform(1800.0, 2600.0), p.cortex)
        jaw_cy = cy - 20.0 * s
        cv.ring(
            cx,
            jaw_cy,
            44.0 * s * jaw,
            52.0 * s * jaw,
            6.0 * s,
            jaw_hu,
            hu["muscle"],
            _BONE,
            y_max=jaw_cy,
        )
        cv.shape(
            cx,
            jaw_cy,
            (44.0 - 6.0) * s * jaw,
            (52.0 - 6.0) * s * jaw,
            hu["muscle"],
            _BODY,
            y_max=jaw_cy,
        )
        airway_y = vy - 24.0 * s
        pharynx = _profile(t, [0.64, 0.68, 0.84, 0.87], [0.0, 1.0, 1.0, 0.0])
        cv.shape(cx, airway_y, 11.0 * s * pharynx, 6.0 * s * pharynx, _AIR, _BODY)
        trachea = _profile(t, [0.84, 0.87], [0.0, 1.0])
        cv.ring(cx, airway_y, 10.0 * s * trachea, 10.0 * s * trachea, 2.0, 120.0, _AIR, _BODY)
        thyroid = _profile(t, [0.86, 0.9, 1.0], [0.0, 1.0, 1.0])
        for side in (-1.0, 1.0):
            cv.shape(
                cx + side * 15.0 * s,
                airway_y,
                8.0 * s * thyroid,
                13.0 * s * thyroid,
                rng.uniform(80, 110),
                _BODY,
            )
            neck_on = self.nax > 10
            cv.shape(
                cx + side * 24.0 * s,
                vy - 14.0 * s,
                _on(neck_on, 3.5 * s),
                3.5 * s,
                hu["artery"],
                _BODY,
            )
            cv.shape(
                cx + side * 31.0 * s,
                vy - 10.0 * s,
                _on(neck_on, 5.5 * s),
                4.5 * s,
                hu["vein"],
                _BODY,
            )
        neck_bone = _profile(t, [0.6, 0.66], [0.0, 1.0]) > 0
        scale = np.where(neck_bone, self.spine_scale, 0.0)  # no vertebra beside the cranium
        _draw_vertebra(cv, cx, vy, scale, self.level_phase(), p.cancellous, p.cortex)

        # Cranium: scalp, three-layer skull, CSF, grey and white matter, ventricles.
        crx, cry, th = self.crx, self.cry, self.skull
        cv.shape(cx, cy, crx + 6.0 * s, cry + 6.0 * s, 35.0, _BODY)
        cv.shape(cx, cy, crx + 3.5 * s, cry + 3.5 * s, -70.0, _BODY)
        diploe = 0.45 * p.cortex
        cv.shape(cx, cy, crx, cry, p.cortex, _BONE)
        cv.shape(cx, cy, crx - 0.3 * th, cry - 0.3 * th, diploe, _BONE)
        cv.shape(cx, cy, crx - 0.7 * th, cry - 0.7 * th, p.cortex, _BONE)
        ix, iy = crx - th, cry - th
        cv.shape(cx, cy, ix, iy, _CSF, _BRAIN)
        csf = 1.0 + 3.5 * p.atrophy
        # Toward the skull base only the posterior fossa (cerebellum) holds brain.
        fossa = _profile(t, [0.55, 0.75], [0.0, 1.0])
        brain_scale = 1.0 - 0.5 * fossa
        by = cy + 0.35 * fossa * cry
        cv.shape(cx, by, (ix - csf) * brain_scale, (iy - csf) * brain_scale, 38.0, _BRAIN)
        wm = _profile(t, [0.06, 0.2, 0.45, 0.58], [0.0, 0.72, 0.72, 0.0])
        cv.shape(cx, cy + 3.0, ix * wm, iy * wm * 0.95, 28.0, _BRAIN, within=_BRAIN)
        falx = (t < 0.56) & (iy > 10)
        cv.shape(cx, cy, _on(falx, 0.9), iy - csf, 14.0, _BRAIN, kind="rect", within=_BRAIN)
        vent = _profile(t, [0.2, 0.28, 0.45, 0.52], [0.0, 1.0, 1.0, 0.0]) * (0.7 + 0.8 * p.atrophy)
        for side in (-1.0, 1.0):
            cv.shape(
                cx + side * 8.0 * s,
                cy - 6.0 * s,
                4.5 * s * vent,
                22.0 * s * vent,
                _CSF,
                _BRAIN,
                angle=-side * 15.0,
            )
        third = _profile(t, [0.44, 0.47, 0.54, 0.57], [0.0, 1.0, 1.0, 0.0])
        cv.shape(cx, cy + 2.0, 1.5 * third, 11.0 * s * third, _CSF, _BRAIN, kind="rect")

        # Skull base: petrous bones, clivus, orbits, paranasal sinuses, nasal cavity.
        petrous = _profile(t, [0.57, 0.6, 0.68, 0.71], [0.0, 1.0, 1.0, 0.0])
        for side in (-1.0, 1.0):
            cv.shape(
                cx + side * 34.0 * s,
                cy + 16.0 * s,
                20.0 * s * petrous,
                3.5 * s,
                1.1 * p.cortex,
                _BONE,
                kind="rect",
                angle=side * 35.0,
            )
        clivus = _profile(t, [0.58, 0.62, 0.72, 0.76], [0.0, 1.0, 1.0, 0.0])
        cv.shape(cx, cy - 5.0 * s, 11.0 * s * clivus, 16.0 * s * clivus, 0.5 * p.cortex, _BONE)
        # The maxillary sinuses lie below the orbits: their z ranges barely overlap.
        orbit = _profile(t, [0.5, 0.54, 0.6, 0.63], [0.0, 1.0, 1.0, 0.0])
        sinus = _profile(t, [0.61, 0.65, 0.74, 0.78], [0.0, 1.0, 1.0, 0.0])
        front = cy - 0.7 * 92.0 * s
        for side in (-1.0, 1.0):
            ox = cx + side * 31.0 * s
            cv.shape(ox, front, 19.0 * s * orbit, 23.0 * s * orbit, 0.55 * p.cortex, _BONE)
            cv.shape(ox, front, 16.5 * s * orbit, 20.5 * s * orbit, -85.0, _BODY)
            cv.shape(ox, front - 3.0 * s, 11.5 * s * orbit, 11.5 * s * orbit, 12.0, _BODY)
            mx = cx + side * 24.0 * s
            cv.shape(
                mx, front + 12.0 * s, 17.0 * s * sinus, 19.0 * s * sinus, 0.5 * p.cortex, _BONE
            )
            cv.shape(mx, front + 12.0 * s, 14.5 * s * sinus, 16.5 * s * sinus, _AIR, _BODY)
        cv.shape(cx, front + 5.0 * s, 6.0 * s * sinus, 20.0 * s * sinus, _AIR, _BODY, kind="rect")
        cv.shape(cx, front + 5.0 * s, 1.2 * sinus, 19.0 * s * sinus, 400.0, _BONE, kind="rect")


class _Thorax(_Anatomy):
    length = 300.0
    z_top = 1450.0
    hosts = (_LUNG, _LUNG, _LIVER)
    level_mm = 24.0

    def __init__(
        self,
        p: _Patient,
        rng: np.random.Generator,
        t: np.ndarray,
        z: np.ndarray,
        hu: dict[str, float],
    ) -> None:
        super().__init__(p, rng, t, z, hu)
        s = p.scale
        self.s = s
        self.cx = p.shift_x + _drift(rng, z, 2.0)
        self.cy = p.shift_y + _drift(rng, z, 2.0)
        width = _profile(t, [0.0, 0.15, 0.5, 1.0], [0.88, 0.95, 1.0, 1.02])
        self.bax = (150.0 * s + 0.5 * p.fat) * width * p.girth * rng.uniform(0.96, 1.04)
        depth = _profile(t, [0.0, 0.5, 1.0], [0.88, 1.0, 1.04])
        self.bay = (95.0 * s + 0.6 * p.fat) * p.aspect * depth * rng.uniform(0.96, 1.04)
        self.fat = p.fat * _profile(t, [0.0, 1.0], [0.8, 1.1])
        self.muscle = 12.0 * s * _profile(t, [0.0, 0.3], [1.6, 1.0])
        self.cax = self.bax - self.fat - self.muscle
        self.cay = self.bay - self.fat - 0.8 * self.muscle
        self.vert_y = self.cy + self.bay - self.fat - 48.0 * s
        self.spine_scale = s * _profile(t, [0.0, 1.0], [0.85, 1.0])
        self.spine = (self.cx, self.vert_y)
        self.table_y = float((self.cy + self.bay).max()) - rng.uniform(0.0, 8.0)
        self.arms_down = bool(rng.random() < 0.2)
        self.breast = rng.uniform(0.5, 1.4) if p.female else 0.0
        half = self.bax.max() + (95.0 * s if self.arms_down else 0.0)
        self.fov = float(np.clip(2.0 * half + rng.uniform(10.0, 140.0), 300.0, 500.0))
        self.center = (
            float(self.cx.mean()) + rng.normal(0, 12),
            float(self.cy.mean()) + rng.normal(10, 12),
        )

    def draw(self, cv: _Canvas) -> None:
        p, rng, t, s, hu, z = self.p, self.rng, self.t, self.s, self.hu, self.z
        cx, cy, bax, bay = self.cx, self.cy, self.bax, self.bay
        cax, cay = self.cax, self.cay
        _draw_table(cv, rng, self.table_y, 460.0, 1.0 / 2500.0)
        if self.arms_down:
            arm = _profile(t, [0.0, 0.75, 0.85], [1.0, 1.0, 0.0])
            for side in (-1.0, 1.0):
                ax_ = cx + side * (bax + 50.0 * s)
                r = (38.0 * s + 0.4 * p.fat) * arm
                cv.shape(ax_, cy + 15.0, r, r * 0.9, _FAT, _BODY, y_max=self.table_y)
                cv.shape(
                    ax_, cy + 15.0, r - 0.4 * p.fat, 0.9 * r - 0.4 * p.fat, hu["muscle"], _BODY
                )
                cv.ring(
                    ax_, cy + 15.0, 11.0 * s * arm, 11.0 * s * arm, 4.0, p.cortex, p.marrow, _BONE
                )
        if self.breast > 0:
            br = _profile(t, [0.3, 0.45, 0.7, 0.8], [0.0, 1.0, 1.0, 0.0]) * self.breast
            for side in (-1.0, 1.0):
                bx, by = cx + side * 0.45 * bax, cy - 0.82 * bay
                cv.shape(bx, by, 55.0 * s * br, 38.0 * s * br, -70.0, _BODY)
                cv.shape(bx, by - 5.0, 30.0 * s * br, 20.0 * s * br, 15.0, _BODY)
        self.trunk(cv, cx, cy, bax, bay, self.fat, self.table_y)

        # Scapulae and clavicles sit in the muscle layer, outside the rib cage.
        scap = _profile(t, [0.0, 0.05, 0.4, 0.5], [0.6, 1.0, 1.0, 0.0])
        clav = _profile(t, [0.0, 0.1, 0.14], [1.0, 1.0, 0.0])
        for side in (-1.0, 1.0):
            cv.shape(
                cx + side * 0.62 * bax,
                cy + 0.62 * bay,
                42.0 * s * scap,
                3.5 * s,
                0.6 * p.cortex,
                _BONE,
                kind="rect",
                angle=-side * 30.0,
            )
            cv.shape(
                cx + side * 50.0 * s,
                cy - 0.8 * cay,
                40.0 * s * clav,
                6.0 * s,
                0.8 * p.cortex,
                _BONE,
                angle=side * 15.0,
            )

        # Thoracic cavity: mediastinal fat, then the two lungs with vessels.
        cv.shape(cx, cy, cax, cay, -85.0, _BODY)
        lung = _profile(t, [0.0, 0.08, 0.3, 0.7, 0.9, 1.0], [0.3, 0.6, 0.95, 1.0, 0.75, 0.45])
        clip = (cx, cy, cax - 1.0, cay - 1.0)
        lungs = []
        for side, share in ((-1.0, 0.46), (1.0, 0.43)):  # the right lung (image left) is larger
            lx, ly = cx + side * 0.5 * cax, cy + 0.06 * cay
            lax, lay = share * cax * lung, 0.93 * cay * lung
            cv.shape(lx, ly, lax, lay, p.lung, _LUNG, angle=side * 8.0, clip=clip)
            lungs.append((side, lx, ly, lax, lay))
        # Gravity: dependent (posterior) lung is denser, by tens of HU.
        rows = cv.rows(float((cy - cay).min()), float((cy + cay).max()))
        if rows is not None:
            view = cv.img[:, rows, :]
            gradient = 45.0 * (cv.y[:, rows, :] - cy[:, None, None]) / cay[:, None, None]
            view += np.where(cv.mask[:, rows, :] == _LUNG, gradient, 0.0).astype(np.float32)
        for side, lx, ly, lax, lay in lungs:
            for _ in range(22):
                # Vessels are densest and thickest near the hilum (medially) and taper outward.
                rad = math.sqrt(rng.uniform(0.0, 0.8))
                theta = rng.uniform(0, 2 * math.pi)
                wander = rng.uniform(0.3, 1.0)
                vx = lx + lax * (rad * np.cos(theta) - side * 0.25) + _drift(rng, z, 12.0 * wander)
                vy = ly + lay * rad * np.sin(theta) + _drift(rng, z, 12.0 * wander)
                r = rng.uniform(1.2, 2.2) + 2.5 * (1.0 - rad)
                cv.shape(
                    vx,
                    vy,
                    _on(lung > 0.4, r),
                    r * rng.uniform(0.7, 1.0),
                    hu["vein"],
                    _LUNG,
                    within=_LUNG,
                    angle=rng.uniform(0, 180),
                )

        # Mediastinum: fat and vessels between the lungs above the heart, then the heart.
        vy_ = self.vert_y
        upper = _profile(t, [0.0, 0.1, 0.45, 0.6], [0.5, 1.0, 1.0, 0.0])
        cv.shape(cx, cy - 0.1 * cay, 28.0 * s * upper, 0.62 * cay * upper, -70.0, _BODY)
        heart = _profile(t, [0.38, 0.52, 0.72, 0.92, 1.02], [0.0, 0.8, 1.0, 0.8, 0.0]) * p.heart
        hx, hy = cx + 18.0 * s, cy - 0.18 * cay
        angle = -35.0 + rng.normal(0, 6)
        cv.shape(hx, hy, 58.0 * s * heart, 48.0 * s * heart, -90.0, _BODY, angle=angle)
        cv.shape(hx, hy, 54.0 * s * heart, 44.0 * s * heart, hu["myocardium"], _HEART, angle=angle)
        cv.shape(
            hx + 14.0 * s,
            hy + 8.0 * s,
            22.0 * s * heart,
            18.0 * s * heart,
            hu["artery"],
            _HEART,
            angle=angle,
        )
        cv.shape(
            hx - 16.0 * s,
            hy - 10.0 * s,
            22.0 * s * heart,
            14.0 * s * heart,
            hu["vein"],
            _HEART,
            angle=angle,
        )
        asc = _profile(t, [0.26, 0.3, 0.52, 0.56], [0.0, 1.0, 1.0, 0.0])
        cv.shape(cx - 6.0 * s, cy - 0.3 * cay, 15.0 * s * asc, 15.0 * s * asc, hu["artery"], _BODY)
        arch = _profile(t, [0.2, 0.23, 0.28, 0.31], [0.0, 1.0, 1.0, 0.0])
        cv.shape(
            cx + 4.0 * s,
            cy - 0.15 * cay,
            13.0 * s * arch,
            38.0 * s * arch,
            hu["artery"],
            _BODY,
            angle=-35.0,
        )
        desc = _profile(t, [0.24, 0.28], [0.0, 1.0])
        cv.shape(
            cx + 22.0 * s, vy_ - 20.0 * s, 12.0 * s * desc, 12.0 * s * desc, hu["artery"], _BODY
        )
        pulm = _profile(t, [0.33, 0.36, 0.46, 0.5], [0.0, 1.0, 1.0, 0.0])
        cv.shape(
            cx + 16.0 * s, cy - 0.32 * cay, 14.0 * s * pulm, 14.0 * s * pulm, hu["vein"], _BODY
        )
        svc = _profile(t, [0.1, 0.15, 0.45, 0.5], [0.0, 1.0, 1.0, 0.0])
        cv.shape(cx - 26.0 * s, cy - 0.25 * cay, 10.0 * s * svc, 9.0 * s * svc, hu["vein"], _BODY)
        trachea = _profile(t, [0.0, 0.36, 0.38], [1.0, 1.0, 0.0])
        cv.ring(cx, vy_ - 34.0 * s, 10.0 * s * trachea, 9.0 * s * trachea, 2.0, 60.0, _AIR, _BODY)
        bronchi = _profile(t, [0.35, 0.37, 0.48, 0.52], [0.0, 1.0, 1.0, 0.0])
        for side in (-1.0, 1.0):
            spread = (12.0 + 120.0 * np.clip(t - 0.36, 0.0, 0.2)) * s
            cv.ring(
                cx + side * spread,
                vy_ - 32.0 * s,
                7.0 * s * bronchi,
                6.0 * s * bronchi,
                1.5,
                60.0,
                _AIR,
                _BODY,
            )
        cv.shape(cx + 4.0 * s, vy_ - 21.0 * s, 6.0 * s, 5.0 * s, 40.0, _BODY)  # oesophagus

        # Liver dome (right) and spleen tip (left) rise into the base of the thorax.
        dome = _profile(t, [0.66, 0.85, 1.0], [0.0, 0.75, 1.0]) * p.liver
        cv.shape(
            cx - 0.32 * cax,
            cy + 0.08 * cay,
            0.58 * cax * dome,
            0.72 * cay * dome,
            hu["liver"],
            _LIVER,
            clip=clip,
        )
        spleen = _profile(t, [0.82, 1.0], [0.0, 0.6]) * p.spleen
        cv.shape(
            cx + 0.62 * cax,
            cy + 0.35 * cay,
            28.0 * s * spleen,
            45.0 * s * spleen,
            hu["spleen"],
            _SPLEEN,
            angle=-35.0,
            clip=clip,
        )
        stomach = _profile(t, [0.85, 1.0], [0.0, 1.0])
        cv.shape(
            cx + 0.35 * cax,
            cy - 0.25 * cay,
            35.0 * s * stomach,
            25.0 * s * stomach,
            _AIR,
            _BODY,
            clip=clip,
        )

        # Bones: spine, sternum, ribs (oblique, so each rib comes and goes along z).
        _draw_vertebra(cv, cx, vy_, self.spine_scale, self.level_phase(), p.cancellous, p.cortex)
        sternum = _profile(t, [0.1, 0.14, 0.8, 0.86], [0.0, 1.0, 1.0, 0.0])
        manubrium = _profile(t, [0.14, 0.3], [1.6, 1.0])
        sy = cy - bay + self.fat + 0.7 * self.muscle
        cv.ring(
            cx,
            sy,
            13.0 * s * sternum * manubrium,
            6.0 * s * sternum,
            1.5,
            0.6 * p.cortex,
            p.cancellous,
            _BONE,
            kind="rect",
        )
        rib_period = rng.uniform(28.0, 38.0) * p.height
        rx, ry = cax + 0.3 * self.muscle, cay + 0.3 * self.muscle
        for side in (-1.0, 1.0):
            for k, phi in enumerate(np.linspace(-75.0, 72.0, 9)):
                phi_z = np.deg2rad(phi + rng.normal(0, 4) + 10.0 * np.sin(z / 60.0 + k))
                visible = np.sin(2 * math.pi * z / rib_period + rng.uniform(0, 2 * math.pi)) > -0.25
                bx = cx + side * rx * np.cos(phi_z)
                by = cy + ry * np.sin(phi_z)
                # Anterior ribs are costal cartilage: soft-tissue-dense, often calcified.
                cortex = p.cortex * (0.3 if phi < -50 else 0.75)
                tangent = np.rad2deg(phi_z) * side + 90.0
                cv.ring(
                    bx,
                    by,
                    _on(visible, 4.5 * s),
                    8.0 * s,
                    1.5,
                    cortex,
                    p.cancellous,
                    _BONE,
                    angle=tangent,
                )


class _Abdomen(_Anatomy):
    length = 230.0
    z_top = 1160.0
    hosts = (_LIVER, _LIVER, _KIDNEY, _SPLEEN)
    level_mm = 32.0

    def __init__(
        self,
        p: _Patient,
        rng: np.random.Generator,
        t: np.ndarray,
        z: np.ndarray,
        hu: dict[str, float],
    ) -> None:
        super().__init__(p, rng, t, z, hu)
        s = p.scale
        self.s = s
        self.cx = p.shift_x + _drift(rng, z, 2.0)
        self.cy = p.shift_y + _drift(rng, z, 2.0)
        visceral = 1.0 + 0.25 * p.visceral
        self.bax = (150.0 * s + 0.6 * p.fat) * p.girth * visceral * rng.uniform(0.96, 1.04)
        self.bax = self.bax * _profile(t, [0.0, 1.0], [1.0, 1.03])
        self.bay = (100.0 * s + 0.6 * p.fat) * p.aspect * visceral * rng.uniform(0.96, 1.04)
        self.bay = self.bay * _profile(t, [0.0, 1.0], [1.0, 0.95])
        self.fat = 1.2 * p.fat * np.ones_like(t)
        self.muscle = 10.0 * s
        self.cax = self.bax - self.fat - self.muscle
        self.cay = self.bay - self.fat - self.muscle
        self.vert_y = self.cy + self.bay - self.fat - 55.0 * s
        self.spine_scale = 1.15 * s
        self.spine = (self.cx, self.vert_y)
        self.table_y = float((self.cy + self.bay).max()) - rng.uniform(0.0, 10.0)
        self.box = rng.uniform(0.0, 0.3)
        self.fov = float(np.clip(2.0 * self.bax.max() + rng.uniform(10.0, 140.0), 300.0, 500.0))
        self.center = (
            float(self.cx.mean()) + rng.normal(0, 12),
            float(self.cy.mean()) + rng.normal(10, 12),
        )

    def draw(self, cv: _Canvas) -> None:
        p, rng, t, s, hu, z = self.p, self.rng, self.t, self.s, self.hu, self.z
        cx, cy, cax, cay = self.cx, self.cy, self.cax, self.cay
        vy = self.vert_y
        _draw_table(cv, rng, self.table_y, 460.0, 1.0 / 2500.0)
        self.trunk(cv, cx, cy, self.bax, self.bay, self.fat, self.table_y, self.box)
        cv.shape(cx, cy, cax, cay, -95.0, _BODY, box=self.box)

        # Back muscles and psoas frame the spine.
        psoas = _profile(t, [0.25, 1.0], [0.2, 1.0])
        for side in (-1.0, 1.0):
            cv.shape(cx + side * 30.0 * s, vy + 38.0 * s, 26.0 * s, 24.0 * s, hu["muscle"], _BODY)
            cv.shape(
                cx + side * 36.0 * s,
                vy - 2.0 * s,
                22.0 * s * psoas,
                18.0 * s * psoas,
                hu["muscle"],
                _BODY,
            )
        clip = (cx, cy, cax - 1.0, cay - 1.0)
        busy = _profile(t, [0.0, 1.0], [0.4, 1.0])
        loops = int(rng.integers(24, 32) + 14 * (1.0 - p.visceral))
        _bowel_loops(cv, rng, z, cx, cy - 0.15 * cay, 0.8 * cax, 0.75 * cay, loops, busy)
        for side in (-1.0, 1.0):  # ascending and descending colon in the flanks
            content = _AIR if rng.random() < 0.5 else rng.uniform(-200.0, 10.0)
            colon = rng.uniform(18.0, 26.0) * s * busy
            cv.ring(
                cx + side * 0.72 * cax,
                cy - 0.05 * cay + _drift(rng, z, 6.0),
                colon,
                0.85 * colon,
                3.0,
                40.0,
                content,
                _BODY,
                clip=clip,
            )

        # Stomach with an air-fluid level (air floats anteriorly in a supine patient).
        stom = _profile(t, [0.0, 0.3, 0.45], [1.0, 0.8, 0.0])
        sx, sy = cx + 0.45 * cax, cy - 0.35 * cay
        cv.ring(
            sx,
            sy,
            48.0 * s * stom,
            36.0 * s * stom,
            3.0,
            45.0,
            rng.uniform(5, 25),
            _BODY,
            clip=clip,
        )
        level = sy - rng.uniform(0.0, 25.0) * s
        cv.shape(sx, sy, 45.0 * s * stom, 33.0 * s * stom, _AIR, _BODY, y_max=level, clip=clip)

        # Liver (with hepatic vessels and the gallbladder), spleen, pancreas.
        liver = _profile(t, [0.0, 0.25, 0.6, 0.7], [1.0, 1.0, 0.3, 0.0]) * p.liver
        lx, ly = cx - 0.42 * cax, cy + 0.0 * cay
        cv.shape(
            lx,
            ly,
            0.55 * cax * liver,
            0.8 * cay * liver,
            hu["liver"],
            _LIVER,
            angle=20.0,
            clip=clip,
        )
        left_lobe = _profile(t, [0.0, 0.3, 0.4], [1.0, 0.6, 0.0]) * p.liver
        cv.shape(
            cx + 0.05 * cax,
            cy - 0.45 * cay,
            0.3 * cax * left_lobe,
            0.3 * cay * left_lobe,
            hu["liver"],
            _LIVER,
            clip=clip,
        )
        for _ in range(6):
            r = rng.uniform(2.0, 5.0)
            vx = lx + rng.uniform(-0.3, 0.3) * cax * liver + _drift(rng, z, 8.0)
            vyy = ly + rng.uniform(-0.4, 0.4) * cay * liver + _drift(rng, z, 8.0)
            cv.shape(vx, vyy, _on(liver > 0.3, r), r, hu["vein"] - 15.0, _LIVER, within=_LIVER)
        gall = _profile(t, [0.3, 0.38, 0.5, 0.55], [0.0, 1.0, 1.0, 0.0]) * rng.uniform(0.6, 1.3)
        cv.shape(
            lx + 0.2 * cax,
            ly - 0.45 * cay,
            15.0 * s * gall,
            22.0 * s * gall,
            15.0,
            _BODY,
            within=_LIVER,
        )
        spleen = _profile(t, [0.0, 0.1, 0.35, 0.5], [0.6, 1.0, 0.8, 0.0]) * p.spleen
        cv.shape(
            cx + 0.66 * cax,
            cy + 0.35 * cay,
            30.0 * s * spleen,
            55.0 * s * spleen,
            hu["spleen"],
            _SPLEEN,
            angle=-30.0,
            clip=clip,
        )
        panc = _profile(t, [0.2, 0.27, 0.42, 0.48], [0.0, 1.0, 1.0, 0.0])
        cv.shape(
            cx + 0.1 * cax,
            vy - 45.0 * s,
            60.0 * s * panc,
            11.0 * s * panc,
            45.0,
            _BODY,
            angle=-12.0,
        )

        # Kidneys: cortex, medulla (distinct in the arterial phase), sinus fat around the pelvis.
        for side, top in ((-1.0, 0.3), (1.0, 0.25)):  # the right kidney (image left) sits lower
            kid = (
                _profile(t, [top, top + 0.1, top + 0.35, top + 0.45], [0.0, 1.0, 1.0, 0.0])
                * p.kidney
            )
            kx, ky = cx + side * 68.0 * s, vy - 2.0 * s
            ang = side * 30.0
            cv.shape(kx, ky, 26.0 * s * kid, 40.0 * s * kid, hu["kidney"], _KIDNEY, angle=ang)
            cv.shape(kx, ky, 17.0 * s * kid, 30.0 * s * kid, hu["medulla"], _KIDNEY, angle=ang)
            cv.shape(
                kx - side * 12.0 * s,
                ky - 4.0 * s,
                9.0 * s * kid,
                12.0 * s * kid,
                -60.0,
                _KIDNEY,
                angle=ang,
            )
            cv.shape(
                kx - side * 15.0 * s,
                ky - 4.0 * s,
                4.0 * s * kid,
                6.0 * s * kid,
                _URINE,
                _KIDNEY,
                angle=ang,
            )

        # Great vessels, spine, lower ribs.
        cv.shape(cx + 18.0 * s, vy - 28.0 * s, 11.0 * s, 11.0 * s, hu["artery"], _BODY)
        cv.shape(cx - 20.0 * s, vy - 30.0 * s, 13.0 * s, 9.0 * s, hu["vein"], _BODY)
        _draw_vertebra(cv, cx, vy, self.spine_scale, self.level_phase(), p.cancellous, p.cortex)
        ribs = _profile(t, [0.0, 0.3, 0.4], [1.0, 1.0, 0.0])
        rib_period = rng.uniform(28.0, 38.0) * p.height
        for side in (-1.0, 1.0):
            for phi in (-30.0, 0.0, 30.0, 55.0):
                visible = (np.sin(2 * math.pi * z / rib_period + rng.uniform(0, 6.3)) > 0) & (
                    ribs > 0
                )
                ang = np.deg2rad(phi + rng.normal(0, 5))
                bx = cx + side * (cax + 3.0) * math.cos(ang)
                by = cy + (cay + 3.0) * math.sin(ang)
                cv.ring(
                    bx,
                    by,
                    _on(visible, 4.5 * s),
                    8.0 * s,
                    1.5,
                    0.75 * p.cortex,
                    p.cancellous,
                    _BONE,
                    angle=90.0 + side * phi,
                )


class _Pelvis(_Anatomy):
    length = 200.0
    z_top = 930.0
    hosts = (_BLADDER, _BONE)
    level_mm = 32.0

    def __init__(
        self,
        p: _Patient,
        rng: np.random.Generator,
        t: np.ndarray,
        z: np.ndarray,
        hu: dict[str, float],
    ) -> None:
        super().__init__(p, rng, t, z, hu)
        s = p.scale
        self.s = s
        self.cx = p.shift_x + _drift(rng, z, 2.0)
        self.cy = p.shift_y + _drift(rng, z, 2.0)
        hips = 1.08 if p.female else 1.0
        self.bax = (160.0 * s * hips + 0.7 * p.fat) * p.girth * rng.uniform(0.96, 1.04)
        self.bay = (95.0 * s + 0.6 * p.fat) * p.aspect * rng.uniform(0.96, 1.04)
        self.bax = self.bax * _profile(t, [0.0, 0.6, 1.0], [0.95, 1.0, 0.97])
        self.bay = self.bay * np.ones_like(t)
        self.fat = 1.3 * p.fat * np.ones_like(t)
        self.vert_y = self.cy + 0.55 * self.bay  # the sacrum stands in for the spine here
        self.spine = (self.cx, self.vert_y)
        self.table_y = float((self.cy + self.bay).max()) - rng.uniform(0.0, 10.0)
        self.bladder_fill = rng.uniform(0.45, 1.3)
        self.fov = float(np.clip(2.0 * self.bax.max() + rng.uniform(10.0, 130.0), 320.0, 500.0))
        self.center = (
            float(self.cx.mean()) + rng.normal(0, 12),
            float(self.cy.mean()) + rng.normal(10, 12),
        )

    def draw(self, cv: _Canvas) -> None:
        p, rng, t, s, hu, z = self.p, self.rng, self.t, self.s, self.hu, self.z
        cx, cy, bax, bay = self.cx, self.cy, self.bax, self.bay
        _draw_table(cv, rng, self.table_y, 460.0, 1.0 / 2500.0)
        self.trunk(cv, cx, cy, bax, bay, self.fat, self.table_y, box=0.35)
        # Fat planes between the gluteal muscles.
        for side in (-1.0, 1.0):
            cv.shape(
                cx + side * 0.6 * bax,
                cy + 0.45 * bay,
                38.0 * s,
                1.5,
                -80.0,
                _BODY,
                kind="rect",
                angle=side * 55.0,
            )
        cav_ax, cav_ay = 0.5 * bax, 0.55 * bay
        cv.shape(cx, cy - 0.05 * bay, cav_ax, cav_ay, -90.0, _BODY)
        upper = _profile(t, [0.0, 0.5, 0.6], [1.0, 1.0, 0.0])
        _bowel_loops(
            cv,
            rng,
            z,
            cx,
            cy - 0.15 * bay,
            0.85 * cav_ax,
            0.75 * cav_ay,
            int(rng.integers(5, 10)),
            upper,
        )
        rectum = _profile(t, [0.3, 0.4, 1.0], [0.0, 1.0, 0.9])
        content = _AIR if rng.random() < 0.4 else rng.uniform(-150.0, 20.0)
        cv.ring(
            cx, cy + 0.35 * bay, 18.0 * s * rectum, 15.0 * s * rectum, 3.0, 40.0, content, _BODY
        )

        # Bladder (urine inside a thin wall) and prostate/uterus behind it.
        bl = _profile(t, [0.35, 0.5, 0.75, 0.92], [0.0, 0.9, 1.0, 0.4]) * self.bladder_fill
        bly = cy - 0.25 * bay
        cv.ring(
            cx, bly, 45.0 * s * bl, 38.0 * s * bl, 2.5, 35.0, _URINE + rng.uniform(-3, 7), _BLADDER
        )
        organ = _profile(t, [0.55, 0.62, 0.9, 0.96], [0.0, 1.0, 1.0, 0.0])
        cv.shape(cx, cy + 0.08 * bay, 22.0 * s * organ, 17.0 * s * organ, 45.0, _BODY)

        # Pelvic ring: iliac wings, sacrum, acetabula with femoral heads, then femora.
        wing = _profile(t, [0.0, 0.1, 0.35, 0.5], [0.6, 1.0, 0.9, 0.0])
        sac = _profile(t, [0.0, 0.1, 0.45, 0.6], [0.8, 1.0, 0.6, 0.0])
        head = _profile(t, [0.42, 0.5, 0.65, 0.74], [0.0, 1.0, 1.0, 0.0])
        neck = _profile(t, [0.6, 0.68, 0.76, 0.8], [0.0, 1.0, 1.0, 0.0])
        troch = _profile(t, [0.6, 0.7, 0.88, 1.0], [0.0, 25.0, 18.0, 14.0]) * s
        pubis = _profile(t, [0.66, 0.7, 0.84, 0.88], [0.0, 1.0, 1.0, 0.0])
        ischium = _profile(t, [0.62, 0.7, 1.0], [0.0, 1.0, 0.8])
        cortex, canc = 0.7 * p.cortex, p.cancellous
        for side in (-1.0, 1.0):
            cv.ring(
                cx + side * 78.0 * s,
                cy + 0.1 * bay,
                55.0 * s * wing,
                9.0 * s * _on(wing > 0, 1.0),
                2.5,
                cortex,
                canc,
                _BONE,
                angle=side * 52.0,
            )
            cv.shape(
                cx + side * 55.0 * s,
                cy - 0.2 * bay,
                6.0 * s * (wing > 0),
                6.0 * s,
                hu["artery"],
                _BODY,
            )
            fx, fy = cx + side * 92.0 * s, cy + 0.05 * bay
            r = 24.0 * s * head
            cv.shape(fx, fy, _on(head > 0, r + 7.0 * s), r + 7.0 * s, cortex, _BONE)
            cv.shape(fx, fy, _on(head > 0, r + 1.5), r + 1.5, 30.0, _BODY)
            cv.ring(fx, fy, r, r, 2.0, cortex, canc, _BONE)
            cv.shape(
                cx + side * 106.0 * s,
                fy + 4.0 * s,
                24.0 * s * neck,
                12.0 * s * neck,
                canc,
                _BONE,
                kind="rect",
                angle=-side * 20.0,
            )
            marrow = np.where(t > 0.85, p.marrow, canc)
            cv.ring(
                cx + side * 120.0 * s, fy + 8.0 * s, troch, troch * 0.85, 3.0, cortex, marrow, _BONE
            )
            cv.shape(
                cx + side * 30.0 * s,
                cy - 0.6 * bay,
                32.0 * s * pubis,
                7.0 * s * pubis,
                cortex,
                _BONE,
                kind="rect",
                angle=side * 15.0,
            )
            cv.ring(
                cx + side * 58.0 * s,
                cy + 0.4 * bay,
                14.0 * s * ischium,
                20.0 * s * ischium,
                2.5,
                cortex,
                canc,
                _BONE,
                angle=side * 20.0,
            )
        cv.ring(cx, self.vert_y, 48.0 * s * sac, 20.0 * s * sac, 2.5, cortex, canc, _BONE)
        cv.shape(cx, self.vert_y + 6.0 * s, 7.0 * s * sac, 5.0 * s * sac, _CSF, _BODY)


_LIMBS: dict[str, dict[str, float]] = {
    # radius: soft-tissue half-width at the top of the segment (mm); taper: factor at the bottom.
    "thigh": {"radius": 72.0, "taper": 0.78, "z_top": 820.0, "length": 380.0},
    "calf": {"radius": 50.0, "taper": 0.55, "z_top": 470.0, "length": 360.0},
    "upper_arm": {"radius": 42.0, "taper": 0.85, "z_top": 1380.0, "length": 280.0},
    "forearm": {"radius": 36.0, "taper": 0.65, "z_top": 1100.0, "length": 250.0},
}


class _Extremity(_Anatomy):
    hosts = (_BONE, _BODY)

    def __init__(
        self,
        p: _Patient,
        rng: np.random.Generator,
        t: np.ndarray,
        z: np.ndarray,
        hu: dict[str, float],
        limb: str,
    ) -> None:
        super().__init__(p, rng, t, z, hu)
        s = p.scale
        self.s, self.limb = s, limb
        spec = _LIMBS[limb]
        legs = limb in ("thigh", "calf")
        self.count = 2 if legs and rng.random() < 0.75 else 1
        base = spec["radius"] * s + 0.5 * p.fat
        if limb == "calf":  # the calf bulges below the knee, then tapers to the ankle
            taper = _profile(t, [0.0, 0.3, 1.0], [0.95, 1.0, spec["taper"]])
        else:
            taper = _profile(t, [0.0, 1.0], [1.0, spec["taper"]])
        self.radius = base * taper
        self.fat = (0.6 * p.fat + 3.0) * taper
        gap = rng.uniform(10.0, 50.0)
        self.centers = []
        for k in range(self.count):
            offset = 0.0 if self.count == 1 else (k - 0.5) * 2.0 * (base + gap / 2)
            lx = p.shift_x + offset + rng.normal(0, 5) + _drift(rng, z, 3.0)
            self.centers.append((lx, rng.uniform(0.94, 1.06)))
        if self.count == 1 and not legs:  # an arm scanned beside the body, off the isocentre
            shift = rng.uniform(-150.0, 150.0)
            self.centers = [(lx + shift, size) for lx, size in self.centers]
        self.cy = p.shift_y + rng.normal(20.0, 10.0) + _drift(rng, z, 2.0)
        self.table_y = float((self.cy + 0.92 * self.radius).max())
        span = max(abs(float(lx.mean())) for lx, _ in self.centers) if self.count == 2 else 0.0
        self.fov = float(np.clip(2.0 * (span + base) + rng.uniform(30.0, 90.0), 150.0, 500.0))
        mean_x = float(np.mean([lx.mean() for lx, _ in self.centers]))
        self.center = (mean_x + rng.normal(0, 6), float(self.cy.mean()) + rng.normal(0, 6))
        self.spine = (np.full(self.n, mean_x), self.cy)

    def _bone(
        self, cv: _Canvas, x: _Num, y: _Num, radius: _Num, cortex_mm: _Num, marrow: _Num
    ) -> None:
        cv.ring(x, y, radius, radius * 0.92, cortex_mm, self.p.cortex, marrow, _BONE)

    def draw(self, cv: _Canvas) -> None:
        p, rng, t, s, hu = self.p, self.rng, self.t, self.s, self.hu
        _draw_table(cv, rng, self.table_y, 460.0, 1.0 / 2500.0)
        # Fatty marrow in the shaft turns into cancellous bone toward the joint ends.
        metaphysis = _profile(t, [0.0, 0.12, 0.8, 1.0], [1.0, 0.0, 0.0, 1.0])
        marrow = p.marrow + (p.cancellous - p.marrow) * metaphysis
        septa = rng.uniform(0, 180, size=3)
        for k, (lx, size) in enumerate(self.centers):
            side = -1.0 if (self.count == 2 and k == 0) else 1.0  # medial points to the midline
            cy, r = self.cy, self.radius * size
            cv.shape(lx, cy, r, 0.9 * r, 20.0, _BODY, y_max=self.table_y)
            cv.shape(lx, cy, r - 1.5, 0.9 * r - 1.5, _FAT, _BODY, y_max=self.table_y)
            cv.shape(lx, cy, r - self.fat, 0.9 * r - self.fat, hu["muscle"], _BODY)
            for ang in septa:  # fat planes between muscle compartments
                cv.shape(
                    lx,
                    cy,
                    0.8 * (r - self.fat),
                    1.0,
                    -80.0,
                    _BODY,
                    kind="rect",
                    angle=ang,
                    within=_BODY,
                )
            cv.shape(lx + side * 0.3 * r, cy - 0.1 * r, 4.0 * s, 4.0 * s, hu["artery"], _BODY)
            cv.shape(
                lx + side * 0.3 * r + side * 8.0, cy - 0.1 * r, 5.0 * s, 4.5 * s, hu["vein"], _BODY
            )
            if self.limb == "thigh":
                rad = _profile(t, [0.0, 0.1, 0.75, 0.9, 1.0], [22.0, 15.0, 14.0, 22.0, 36.0]) * s
                wall = _profile(t, [0.0, 0.1, 0.75, 0.9, 1.0], [2.5, 6.0, 6.0, 3.0, 1.5]) * s
                self._bone(cv, lx + side * 8.0 * s, cy + 5.0, rad, wall, marrow)
                patella = _profile(t, [0.85, 0.9, 1.0], [0.0, 1.0, 1.0])
                cv.ring(
                    lx,
                    cy - 0.75 * r,
                    20.0 * s * patella,
                    9.0 * s * patella,
                    2.0,
                    p.cortex,
                    p.cancellous,
                    _BONE,
                )
            elif self.limb == "calf":
                rad = _profile(t, [0.0, 0.15, 0.3, 1.0], [32.0, 20.0, 13.0, 16.0]) * s
                wall = _profile(t, [0.0, 0.15, 0.3, 0.9, 1.0], [1.5, 3.0, 5.0, 5.0, 2.0]) * s
                self._bone(cv, lx + side * 12.0 * s, cy - 0.35 * r, rad, wall, marrow)
                self._bone(
                    cv,
                    lx - side * 0.45 * r,
                    cy + 0.1 * r,
                    7.0 * s * np.ones_like(t),
                    2.5 * s,
                    marrow,
                )
            elif self.limb == "upper_arm":
                rad = _profile(t, [0.0, 0.15, 0.85, 1.0], [22.0, 11.0, 11.0, 25.0]) * s
                self._bone(cv, lx, cy, rad, 4.0 * s, marrow)
            else:
                self._bone(cv, lx + 12.0 * s, cy, 7.5 * s * np.ones_like(t), 2.5 * s, marrow)
                self._bone(
                    cv, lx - 10.0 * s, cy + 5.0 * s, 7.0 * s * np.ones_like(t), 2.5 * s, marrow
                )


_TRUNK: dict[str, type[_Anatomy]] = {
    "head_neck": _HeadNeck,
    "thorax": _Thorax,
    "abdomen": _Abdomen,
    "hip_pelvis": _Pelvis,
}

# Dedicated spine views: the anatomy underneath, the part of it (t window) to cover, and how
# often each level is scanned.
_SPINE_LEVELS: dict[str, tuple[type[_Anatomy], tuple[float, float], float]] = {
    "cervical": (_HeadNeck, (0.8, 1.0), 0.2),
    "thoracic": (_Thorax, (0.05, 1.0), 0.4),
    "lumbar": (_Abdomen, (0.3, 1.0), 0.4),
}
