"""Synthetic CT series: series planning, lesions, scanner effects, and the public generators
(:func:`generate_ct_series`, :func:`iter_ct_series`, :func:`synthetic_ct`)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from radengine.data.synthetic.anatomy import (
    _BG,
    _BLADDER,
    _BODY,
    _BONE,
    _LESION,
    _LESION_DENSITY,
    _LESION_HALF_EXTENT_MM,
    _LIMBS,
    _LUNG,
    _PHASE_HU,
    _PHASE_PROB,
    _SCAN_FOV_RADIUS_MM,
    _SPINE_LEVELS,
    _TEXTURE_HU,
    _TRUNK,
    _Anatomy,
    _Canvas,
    _Extremity,
    _Patient,
    _sample_patient,
    _sample_positions,
)
from radengine.data.synthetic.common import (
    _MAX_SIZE,
    _MIN_SIZE,
    HU_MAX,
    HU_MIN,
    _check_int,
    _gaussian_blur,
    _gaussian_kernel,
    _region_id,
    _region_ids,
)
from radengine.data.synthetic.labels import (
    BODY_REGIONS,
    CONTRAST_PHASES,
    ORGANS,
)


# --------------------------------------------------------------------------------------------
# Public results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CTSeries:
    """One synthetic CT series: consecutive axial slices of one body region of one patient.

    Attributes:
        patient: Patient id, e.g. ``"synth-0001"``.
        series: Series id, unique in a dataset, e.g. ``"synth-0001-thorax"``.
        region: Body-region id, an index into :data:`BODY_REGIONS`.
        images: int16 HU slices, shape (n, size, size).
        masks: uint8 organ labels (indices into :data:`ORGANS`), shape (n, size, size).
        lesion: uint8 per-slice flag, 1 where the mask holds any lesion pixel, shape (n,).
        slice_position: float64 patient z of each slice in mm, shape (n,), decreasing.
        pixel_spacing: In-plane pixel size in mm (square pixels).
        slice_spacing: Distance between consecutive slices in mm.
        contrast: Contrast phase: ``"none"``, ``"arterial"`` or ``"venous"``.
        variant: Region sub-type: limb (``"thigh"``, ``"calf"``, ``"upper_arm"``,
            ``"forearm"``) for extremities, level (``"cervical"``, ``"thoracic"``,
            ``"lumbar"``) for spine, else ``""``.
    """

    patient: str
    series: str
    region: int
    images: np.ndarray
    masks: np.ndarray
    lesion: np.ndarray
    slice_position: np.ndarray
    pixel_spacing: float
    slice_spacing: float
    contrast: str
    variant: str

    @property
    def region_name(self) -> str:
        """The body-region name, e.g. ``"thorax"``."""
        return BODY_REGIONS[self.region]

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class SyntheticCT:
    """A whole synthetic CT dataset, one row per slice (all arrays share their first axis N).

    Attributes:
        images: int16 HU slices, (N, H, W).
        masks: uint8 organ labels (indices into :data:`ORGANS`), (N, H, W).
        region: int64 body-region ids (indices into :data:`BODY_REGIONS`), (N,).
        lesion: uint8 lesion present flags, (N,).
        patient: Patient ids (str), (N,).
        series: Series ids (str), (N,).
        slice_position: float64 patient z in mm, (N,).
        pixel_spacing: float64 in-plane pixel size in mm, (N,).
    """

    images: np.ndarray
    masks: np.ndarray
    region: np.ndarray
    lesion: np.ndarray
    patient: np.ndarray
    series: np.ndarray
    slice_position: np.ndarray
    pixel_spacing: np.ndarray

    region_names: ClassVar[tuple[str, ...]] = BODY_REGIONS
    organ_names: ClassVar[tuple[str, ...]] = ORGANS

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _phase_hu(rng: np.random.Generator, region: str) -> tuple[str, dict[str, float]]:
    """Pick a contrast phase and jitter its enhancement (bolus timing varies)."""
    phase = str(rng.choice(CONTRAST_PHASES, p=_PHASE_PROB[region]))
    base, plain = _PHASE_HU[phase], _PHASE_HU["none"]
    gain = rng.uniform(0.8, 1.2)
    return phase, {k: plain[k] + gain * (v - plain[k]) + rng.normal(0, 2) for k, v in base.items()}


def _plan_series(
    region: str, p: _Patient, rng: np.random.Generator, n: int
) -> tuple[_Anatomy, np.ndarray, float, str, str]:
    """Choose the series' variant, slice positions and contrast, and build its anatomy."""
    contrast, hu = _phase_hu(rng, region)
    variant = ""
    window = (0.0, 1.0)
    kwargs: dict[str, str] = {}
    if region == "spine":
        names = tuple(_SPINE_LEVELS)
        variant = str(rng.choice(names, p=[_SPINE_LEVELS[k][2] for k in names]))
        cls, window, _ = _SPINE_LEVELS[variant]
        length, z_top = cls.length, cls.z_top
    elif region == "extremities":
        variant = str(rng.choice(tuple(_LIMBS), p=(0.35, 0.3, 0.2, 0.15)))
        cls, kwargs = _Extremity, {"limb": variant}
        length, z_top = _LIMBS[variant]["length"], _LIMBS[variant]["z_top"]
    else:
        cls = _TRUNK[region]
        length, z_top = cls.length, cls.z_top
        if region == "head_neck":
            window = (0.03, 1.0)  # skip the very vertex, where a slice is barely a skull cap
    length *= p.height
    depth, spacing = _sample_positions(rng, n, length, window)
    z = z_top * p.height - depth
    anatomy = cls(p, rng, depth / length, z, hu, **kwargs)
    if region == "spine":
        # Reconstruct a small field of view centred just behind the vertebral body.
        sx, sy = anatomy.spine
        anatomy.fov = (
            rng.uniform(90.0, 130.0) if variant == "cervical" else rng.uniform(110.0, 170.0)
        )
        anatomy.center = (
            float(np.mean(sx)) + rng.normal(0, 4),
            float(np.mean(sy + 12.0 * anatomy.spine_scale)) + rng.normal(0, 4),
        )
        anatomy.hosts = (_BONE,)
    return anatomy, z, spacing, contrast, variant


def _lesion_hu(rng: np.random.Generator, host: int, host_mean: float) -> float:
    if host == _LUNG:
        return rng.uniform(-30.0, 60.0)  # a solid nodule in aerated lung
    if host == _BONE:  # lytic or sclerotic metastasis
        return rng.uniform(20.0, 90.0) if rng.random() < 0.5 else rng.uniform(800.0, 1200.0)
    if host == _BLADDER:
        return rng.uniform(35.0, 60.0)  # a soft-tissue tumour in urine
    if host == _BODY:
        return rng.uniform(15.0, 40.0)  # a soft-tissue mass
    # Parenchymal organs: mostly hypodense (cysts, metastases), sometimes hyperdense.
    sign = -1.0 if rng.random() < 0.65 else 1.0
    return host_mean + sign * rng.uniform(25.0, 60.0)


def _add_lesions(
    cv: _Canvas, rng: np.random.Generator, z: np.ndarray, hosts: Sequence[int]
) -> None:
    """Ellipsoidal lesions inside host organs, placed as a Poisson process along z.

    Each lesion is anchored on a random pixel of its host organ on the slice nearest its centre
    and clipped to that organ on every slice, so lesions always sit inside an organ.
    """
    lo_mm, hi_mm = _LESION_HALF_EXTENT_MM
    count = rng.poisson(_LESION_DENSITY * (float(z.max() - z.min()) + 2.0 * hi_mm))
    min_radius = max(1.5, 0.75 * cv.spacing)
    for _ in range(count):
        zc = rng.uniform(z.min() - hi_mm, z.max() + hi_mm)
        rz = rng.uniform(lo_mm, hi_mm)
        radius = max(min(rz * rng.uniform(0.7, 1.2), 15.0), 1.3 * min_radius)
        anchor = int(np.argmin(np.abs(z - zc)))
        for host in rng.permutation(np.asarray(hosts)):
            rows, cols = np.nonzero(cv.mask[anchor] == host)
            if rows.size:
                break
        else:
            continue
        pick = rng.integers(rows.size)
        x0, y0 = cv.to_patient(float(cv.x[0, 0, cols[pick]]), float(cv.y[0, rows[pick], 0]))
        section = radius * np.sqrt(np.clip(1.0 - ((z - zc) / rz) ** 2, 0.0, 1.0))
        section = np.where(section >= min_radius, section, 0.0)
        host_mean = float(cv.img[anchor][rows, cols].mean())
        hu = _lesion_hu(rng, int(host), host_mean)
        elong = rng.uniform(0.8, 1.25)
        cv.shape(
            x0,
            y0,
            section * elong,
            section / elong,
            hu,
            _LESION,
            within=int(host),
            angle=rng.uniform(0, 180),
        )


def _finish(
    cv: _Canvas, rng: np.random.Generator, z: np.ndarray, psf_mm: float, noise_hu: float
) -> np.ndarray:
    """Tissue texture, partial-volume blur and scanner noise; returns int16 HU."""
    n, size = cv.n, cv.size
    # Texture that varies smoothly along z: rotate between two fixed random fields.
    fields = rng.standard_normal((2, size, size), dtype=np.float32)
    fields = _gaussian_blur(fields, max(0.7, 2.5 / cv.spacing), axes=(1, 2))
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-6
    angle = z / rng.uniform(8.0, 15.0) + rng.uniform(0, 2 * math.pi)
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    texture = cos * fields[0] + sin * fields[1]
    texture *= _TEXTURE_HU[cv.mask]
    img = cv.img
    img += texture
    del texture
    # Noise is added before the point-spread blur so that it gets CT's correlated texture; its
    # amplitude is raised by the blur's variance reduction to end at ``noise_hu`` per pixel.
    sigma = math.hypot(0.45, psf_mm / cv.spacing)
    kernel = _gaussian_kernel(sigma)
    gain = float(np.sum(kernel.astype(np.float64) ** 2))  # per-axis std factor is sqrt(gain)
    img += rng.standard_normal((n, size, size), dtype=np.float32) * np.float32(noise_hu / gain)
    img = _gaussian_blur(img, sigma, axes=(1, 2))
    # Outside the scanner's circular scan field of view there is no data.
    outside = (cv.x * cv.x + cv.y * cv.y) > _SCAN_FOV_RADIUS_MM**2
    if outside.any():
        img[:, outside[0]] = HU_MIN
        cv.mask[:, outside[0]] = _BG
    np.rint(img, out=img)
    np.clip(img, HU_MIN, HU_MAX, out=img)
    return img.astype(np.int16)


def _patient_id(index: int) -> str:
    return f"synth-{index + 1:04d}"


def generate_ct_series(
    patient: int,
    region: str | int,
    *,
    num_slices: int = 32,
    size: int = 256,
    seed: int = 0,
) -> CTSeries:
    """Generate one synthetic CT series (one body region of one patient).

    The result depends only on ``(seed, patient, region, num_slices, size)``: it is identical
    whether produced here, by :func:`iter_ct_series` or inside :func:`synthetic_ct`. The
    patient's habitus (size, fat, organ sizes, bone density, ...) depends only on
    ``(seed, patient)``, so all regions of one patient share it.

    Args:
        patient: Zero-based patient index; the id is ``f"synth-{patient + 1:04d}"``.
        region: Body-region name or id from :data:`BODY_REGIONS`.
        num_slices: Number of consecutive axial slices.
        size: Image height and width in pixels (32 to 2048; 64-512 is the intended range).
        seed: Non-negative dataset seed.

    Returns:
        The series, with int16 HU images, uint8 organ masks and per-slice lesion flags.

    Raises:
        ValueError: If an argument is out of range or the region is unknown.
    """
    patient = _check_int("patient", patient, 0)
    region_id = _region_id(region, "region")
    num_slices = _check_int("num_slices", num_slices, 1)
    size = _check_int("size", size, _MIN_SIZE, _MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    region_name = BODY_REGIONS[region_id]

    habitus = _sample_patient(np.random.default_rng([seed, 1, patient]))
    rng = np.random.default_rng([seed, 2, patient, region_id])
    anatomy, z, slice_spacing, contrast, variant = _plan_series(
        region_name, habitus, rng, num_slices
    )
    tilt = float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0))
    cv = _Canvas(num_slices, size, anatomy.fov, anatomy.center, tilt)
    anatomy.draw(cv)
    _add_lesions(cv, rng, z, anatomy.hosts)
    sharp = region_name == "spine"  # spine studies use a sharper (bone) kernel
    psf = rng.uniform(0.3, 0.6) if sharp else rng.uniform(0.5, 1.1)
    images = _finish(cv, rng, z, psf, rng.uniform(10.0, 20.0))
    lesion = (cv.mask == _LESION).any(axis=(1, 2)).astype(np.uint8)
    pid = _patient_id(patient)
    return CTSeries(
        patient=pid,
        series=f"{pid}-{region_name}",
        region=region_id,
        images=images,
        masks=cv.mask,
        lesion=lesion,
        slice_position=np.round(z, 4),
        pixel_spacing=cv.spacing,
        slice_spacing=slice_spacing,
        contrast=contrast,
        variant=variant,
    )


def iter_ct_series(
    num_patients: int,
    slices_per_series: int = 32,
    size: int = 256,
    seed: int = 0,
    regions: Sequence[str | int] | str = BODY_REGIONS,
) -> Iterator[CTSeries]:
    """Stream a synthetic CT dataset one series at a time (patient-major order).

    Each patient gets one series per requested region, so memory stays at one series however
    large the dataset. The stream is exactly the content of :func:`synthetic_ct` with the same
    arguments.

    Args:
        num_patients: Number of patients (>= 1).
        slices_per_series: Slices per series (>= 1).
        size: Image height and width in pixels (32 to 2048).
        seed: Non-negative dataset seed.
        regions: Region names or ids to generate, a subset of :data:`BODY_REGIONS`.

    Yields:
        One :class:`CTSeries` per (patient, region).

    Raises:
        ValueError: If an argument is out of range or a region is unknown (raised at the call,
            before anything is generated).
    """
    num_patients = _check_int("num_patients", num_patients, 1)
    slices_per_series = _check_int("slices_per_series", slices_per_series, 1)
    size = _check_int("size", size, _MIN_SIZE, _MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    region_ids = _region_ids(regions)

    def stream() -> Iterator[CTSeries]:
        for patient in range(num_patients):
            for region_id in region_ids:
                yield generate_ct_series(
                    patient, region_id, num_slices=slices_per_series, size=size, seed=seed
                )

    return stream()


def synthetic_ct(
    num_patients: int,
    slices_per_series: int = 32,
    size: int = 256,
    seed: int = 0,
    regions: Sequence[str | int] | str = BODY_REGIONS,
) -> SyntheticCT:
    """Generate a whole synthetic CT dataset in memory.

    ``N = num_patients * len(regions) * slices_per_series`` slices, in patient-major order. The
    same arguments always give bit-identical arrays; a different seed gives different data.
    For datasets that do not fit in memory use :func:`iter_ct_series`.

    Args:
        num_patients: Number of patients (>= 1).
        slices_per_series: Slices per series (>= 1).
        size: Image height and width in pixels (32 to 2048; 64-512 is the intended range).
        seed: Non-negative dataset seed.
        regions: Region names or ids to generate, a subset of :data:`BODY_REGIONS`.

    Returns:
        A :class:`SyntheticCT` with ``images`` int16 (N, size, size) in HU, ``masks`` uint8
        (N, size, size) indexing :data:`ORGANS`, ``region`` int64 (N,) indexing
        :data:`BODY_REGIONS`, ``lesion`` uint8 (N,), ``patient`` and ``series`` str (N,),
        ``slice_position`` and ``pixel_spacing`` float64 (N,) in mm.

    Raises:
        ValueError: If an argument is out of range or a region is unknown.
    """
    stream = iter_ct_series(num_patients, slices_per_series, size, seed, regions)
    total = num_patients * len(_region_ids(regions)) * slices_per_series
    images = np.empty((total, size, size), dtype=np.int16)
    masks = np.empty((total, size, size), dtype=np.uint8)
    region = np.empty(total, dtype=np.int64)
    lesion = np.empty(total, dtype=np.uint8)
    patient = np.empty(total, dtype=object)
    series = np.empty(total, dtype=object)
    position = np.empty(total, dtype=np.float64)
    spacing = np.empty(total, dtype=np.float64)
    start = 0
    for item in stream:
        stop = start + len(item)
        images[start:stop] = item.images
        masks[start:stop] = item.masks
        region[start:stop] = item.region
        lesion[start:stop] = item.lesion
        patient[start:stop] = item.patient
        series[start:stop] = item.series
        position[start:stop] = item.slice_position
        spacing[start:stop] = item.pixel_spacing
        start = stop
    return SyntheticCT(
        images=images,
        masks=masks,
        region=region,
        lesion=lesion,
        patient=patient.astype(str),
        series=series.astype(str),
        slice_position=position,
        pixel_spacing=spacing,
    )
