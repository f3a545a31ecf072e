"""Tests of the synthetic CT and natural-image generators (radengine.data.synthetic)."""

import numpy as np
import pytest

from radengine.data.synthetic import (
    BODY_REGIONS,
    HU_MAX,
    HU_MIN,
    NATURAL_CLASSES,
    ORGANS,
    generate_ct_series,
    iter_ct_series,
    synthetic_ct,
    synthetic_natural,
)

REGION = {name: i for i, name in enumerate(BODY_REGIONS)}
ORGAN = {name: i for i, name in enumerate(ORGANS)}

PATIENTS, SLICES, SIZE = 6, 8, 64
FIELDS = ("images", "masks", "region", "lesion", "patient", "series", "slice_position")


@pytest.fixture(scope="module")
def ct():
    """One small dataset shared by the read-only tests (about 0.3 s to generate)."""
    return synthetic_ct(PATIENTS, SLICES, SIZE, seed=0)


def _region(ct, name):
    keep = ct.region == REGION[name]
    return ct.images[keep], ct.masks[keep]


# ------------------------------------------------------------------------------------------
# Synthetic CT: structure
# ------------------------------------------------------------------------------------------
def test_ct_shapes_and_dtypes(ct):
    n = PATIENTS * len(BODY_REGIONS) * SLICES
    assert len(ct) == n
    assert ct.images.shape == (n, SIZE, SIZE) and ct.images.dtype == np.int16
    assert ct.masks.shape == (n, SIZE, SIZE) and ct.masks.dtype == np.uint8
    assert ct.region.shape == (n,) and ct.region.dtype == np.int64
    assert ct.lesion.shape == (n,) and ct.lesion.dtype == np.uint8
    assert ct.slice_position.dtype == np.float64 and ct.pixel_spacing.dtype == np.float64
    assert ct.patient.shape == ct.series.shape == (n,)
    assert ct.images.min() >= HU_MIN and ct.images.max() <= HU_MAX
    assert ct.masks.max() < len(ORGANS)
    assert set(np.unique(ct.lesion)) <= {0, 1}
    assert ct.patient[0] == "synth-0001" and ct.patient[-1] == f"synth-{PATIENTS:04d}"
    # Patients -> series -> slices: one series per (patient, region), SLICES slices each.
    assert len(np.unique(ct.patient)) == PATIENTS
    series, counts = np.unique(ct.series, return_counts=True)
    assert len(series) == PATIENTS * len(BODY_REGIONS) and set(counts) == {SLICES}
    for name in series:
        rows = ct.series == name
        assert len(np.unique(ct.patient[rows])) == 1 and len(np.unique(ct.region[rows])) == 1


def test_ct_all_regions_present_and_balanced(ct):
    counts = np.bincount(ct.region, minlength=len(BODY_REGIONS))
    assert counts.tolist() == [PATIENTS * SLICES] * len(BODY_REGIONS)


def test_ct_every_organ_class_appears(ct):
    assert set(np.unique(ct.masks).tolist()) == set(range(len(ORGANS)))


def test_ct_slice_geometry(ct):
    for name in np.unique(ct.series):
        z = ct.slice_position[ct.series == name]
        steps = np.diff(z)
        assert np.all(steps < 0), "slices run head to feet"
        np.testing.assert_allclose(steps, steps[0], rtol=1e-6, atol=1e-3)
        assert len(np.unique(ct.pixel_spacing[ct.series == name])) == 1
    fov = ct.pixel_spacing * SIZE
    assert fov.min() >= 80.0 and fov.max() <= 500.0


@pytest.mark.parametrize("size", [32, 64, 512])
def test_ct_sizes(size):
    series = generate_ct_series(0, "thorax", num_slices=2, size=size, seed=3)
    assert series.images.shape == series.masks.shape == (2, size, size)
    assert (series.masks == ORGAN["lung"]).any()


# ------------------------------------------------------------------------------------------
# Synthetic CT: determinism and streaming
# ------------------------------------------------------------------------------------------
def test_ct_same_seed_is_bit_identical():
    a = synthetic_ct(2, 3, 48, seed=7)
    b = synthetic_ct(2, 3, 48, seed=7)
    for field in (*FIELDS, "pixel_spacing"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_ct_different_seed_differs():
    a = synthetic_ct(2, 3, 48, seed=7)
    b = synthetic_ct(2, 3, 48, seed=8)
    assert not np.array_equal(a.images, b.images)
    assert not np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.slice_position, b.slice_position)


def test_ct_stream_and_single_series_match_the_dataset():
    full = synthetic_ct(2, 3, 48, seed=5)
    streamed = list(iter_ct_series(2, 3, 48, seed=5))
    assert [s.series for s in streamed] == list(dict.fromkeys(full.series))
    np.testing.assert_array_equal(np.concatenate([s.images for s in streamed]), full.images)
    np.testing.assert_array_equal(np.concatenate([s.masks for s in streamed]), full.masks)
    np.testing.assert_array_equal(np.concatenate([s.lesion for s in streamed]), full.lesion)
    # A series does not depend on which other series are generated alongside it.
    alone = generate_ct_series(1, "abdomen", num_slices=3, size=48, seed=5)
    rows = full.series == "synth-0002-abdomen"
    np.testing.assert_array_equal(alone.images, full.images[rows])
    subset = synthetic_ct(2, 3, 48, seed=5, regions=["abdomen"])
    np.testing.assert_array_equal(subset.images[3:], full.images[rows])


def test_ct_consecutive_slices_vary_smoothly(ct):
    stack = ct.images.reshape(PATIENTS, len(BODY_REGIONS), SLICES, SIZE, SIZE).astype(np.float32)
    consecutive = np.abs(np.diff(stack, axis=2)).mean()
    across_patients = np.abs(stack[1:] - stack[:-1]).mean()
    assert consecutive < 0.5 * across_patients


# ------------------------------------------------------------------------------------------
# Synthetic CT: plausible Hounsfield units and consistent labels
# ------------------------------------------------------------------------------------------
def test_ct_air_outside_the_body(ct):
    for name in BODY_REGIONS:
        images, masks = _region(ct, name)
        background = images[masks == ORGAN["background"]]
        assert np.median(background) < -850, name
    # The wide trunk views show air in the image corners.
    images, _ = _region(ct, "abdomen")
    assert np.all(images[:, 0, 0] < -900)


def test_ct_thorax_has_lung_valued_pixels(ct):
    images, masks = _region(ct, "thorax")
    body = masks != ORGAN["background"]
    low = ((images < -600) & body).sum(axis=(1, 2)) / body.sum(axis=(1, 2))
    assert low.min() > 0.02 and low.mean() > 0.08
    assert (masks == ORGAN["lung"]).any(axis=(1, 2)).all()


def test_ct_every_slice_has_bone_and_head_has_a_skull(ct):
    assert ((ct.images > 300).sum(axis=(1, 2)) >= 3).all()
    images, masks = _region(ct, "head_neck")
    assert (images > 300).any(axis=(1, 2)).all()
    assert (masks == ORGAN["brain"]).any(axis=(1, 2)).mean() > 0.5


def test_ct_region_specific_anatomy(ct):
    _, masks = _region(ct, "head_neck")
    assert not (masks == ORGAN["lung"]).any()
    _, masks = _region(ct, "abdomen")
    assert (masks == ORGAN["kidney"]).any() and (masks == ORGAN["liver"]).any()
    _, masks = _region(ct, "hip_pelvis")
    assert (masks == ORGAN["bladder"]).any() and not (masks == ORGAN["lung"]).any()
    _, masks = _region(ct, "extremities")
    assert (masks == ORGAN["bone"]).any(axis=(1, 2)).all()
    assert not np.isin(masks, [ORGAN[k] for k in ("lung", "liver", "heart", "brain")]).any()
    # The dedicated spine view is zoomed: bone fills far more of the image than elsewhere.
    _, spine = _region(ct, "spine")
    _, thorax = _region(ct, "thorax")
    assert (spine == ORGAN["bone"]).mean() > 2 * (thorax == ORGAN["bone"]).mean()


@pytest.mark.parametrize(
    ("organ", "low", "high"),
    [
        ("lung", -1000, -500),
        ("bone", 200, 1600),
        ("brain", 0, 90),
        ("liver", 30, 170),
        ("kidney", -20, 220),
        ("heart", 20, 350),
        ("bladder", -30, 50),
        ("background", -1024, -800),
    ],
)
def test_ct_masks_are_consistent_with_images(ct, organ, low, high):
    values = ct.images[ct.masks == ORGAN[organ]]
    assert values.size > 0
    assert low < values.mean() < high, f"{organ}: mean {values.mean():.0f} HU"


def test_ct_lesion_flags_match_masks_and_rate_is_sensible():
    data = synthetic_ct(8, 10, 48, seed=2)
    np.testing.assert_array_equal(data.lesion, (data.masks == ORGAN["lesion"]).any(axis=(1, 2)))
    assert 0.2 <= data.lesion.mean() <= 0.6


# ------------------------------------------------------------------------------------------
# Synthetic natural-image proxy
# ------------------------------------------------------------------------------------------
def test_natural_shapes_classes_and_pixels():
    data = synthetic_natural(60, num_classes=10, size=48, seed=0)
    assert data.images.shape == (60, 48, 48, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (60,) and data.labels.dtype == np.int64
    assert data.class_names == NATURAL_CLASSES[:10]
    assert np.bincount(data.labels).tolist() == [6] * 10
    flat = data.images.reshape(60, -1).astype(np.float32)
    assert (flat.std(axis=1) > 5).all(), "every image has structure"
    # The object carries the class: per-class mean images differ.
    means = np.stack([flat[data.labels == k].mean(0) for k in range(10)])
    assert np.abs(means[:, None] - means[None]).mean() > 1.0


def test_natural_backgrounds_are_cluttered_scenes():
    """Dead-leaves backgrounds: every image holds many occluding surfaces of varied colour,
    not a smooth two-colour gradient (which gave ~20-45 coarse colours per image)."""
    data = synthetic_natural(40, num_classes=10, size=48, seed=1)
    coarse = (data.images // 32).reshape(40, -1, 3)
    counts = np.array([len(np.unique(img, axis=0)) for img in coarse])
    assert counts.min() >= 48, counts
    # muted scene colours: the background is far less saturated than the objects' colours
    sat = data.images.max(-1).astype(np.float32) - data.images.min(-1)
    assert np.median(sat) < 60


def test_natural_determinism():
    a = synthetic_natural(20, num_classes=5, size=32, seed=3)
    b = synthetic_natural(20, num_classes=5, size=32, seed=3)
    c = synthetic_natural(20, num_classes=5, size=32, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


# ------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------
BAD_ARGUMENTS = {
    "size<32": (lambda: synthetic_ct(1, 1, size=31), "size"),
    "no patients": (lambda: synthetic_ct(0, 1, size=64), "num_patients"),
    "no slices": (lambda: synthetic_ct(1, 0, size=64), "slices_per_series"),
    "negative seed": (lambda: synthetic_ct(1, 1, size=64, seed=-1), "seed"),
    "unknown region": (lambda: synthetic_ct(1, 1, size=64, regions=["thorax", "brain"]), "regions"),
    "no regions": (lambda: synthetic_ct(1, 1, size=64, regions=[]), "regions"),
    "stream size": (lambda: iter_ct_series(1, 1, size=16), "size"),
    "series region name": (lambda: generate_ct_series(0, "knee", num_slices=1), "region"),
    "series region id": (lambda: generate_ct_series(0, 6, num_slices=1), "region"),
    "no images": (lambda: synthetic_natural(0), "num_images"),
    "too many classes": (lambda: synthetic_natural(10, len(NATURAL_CLASSES) + 1), "num_classes"),
    "natural size": (lambda: synthetic_natural(10, size=8), "size"),
}


@pytest.mark.parametrize(("call", "argument"), BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_raise_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


# ------------------------------------------------------------------------------------------
# The package: its import surface, contrast phases, one-slice series
# ------------------------------------------------------------------------------------------
def test_package_exports_every_name_the_repo_imports():
    import radengine.data as data
    from radengine.data import synthetic
    from radengine.data.synthetic import anatomy, common, ct, labels, natural

    for name in synthetic.__all__:
        assert hasattr(synthetic, name), name
        assert getattr(data, name, getattr(synthetic, name)) is getattr(synthetic, name)
    # used by the CLI (size bounds) and by dicom/ingest (BODY_REGIONS)
    assert (synthetic._MIN_SIZE, synthetic._MAX_SIZE) == (common._MIN_SIZE, common._MAX_SIZE)
    assert synthetic.BODY_REGIONS is labels.BODY_REGIONS
    assert synthetic.generate_ct_series is ct.generate_ct_series
    assert synthetic.synthetic_natural is natural.synthetic_natural
    assert issubclass(anatomy._Thorax, anatomy._Anatomy)


def test_contrast_phase_is_one_of_the_phases_and_plain_dominates_head_scans():
    phases = {
        r: [generate_ct_series(p, r, num_slices=1, size=32).contrast for p in range(40)]
        for r in ("head_neck", "abdomen")
    }
    from radengine.data.synthetic import CONTRAST_PHASES

    assert all(c in CONTRAST_PHASES for v in phases.values() for c in v)
    assert phases["head_neck"].count("none") > phases["abdomen"].count("none")


def test_one_slice_series_are_valid_and_vary_in_position():
    series = [generate_ct_series(p, "abdomen", num_slices=1, size=48) for p in range(6)]
    for s in series:
        assert len(s) == 1 and s.images.shape == (1, 48, 48) and s.slice_spacing > 0
    assert len({float(s.slice_position[0]) for s in series}) == 6
