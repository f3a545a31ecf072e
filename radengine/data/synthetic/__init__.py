"""Deterministic procedural synthetic data: the built-in dataset for a machine with no data.

Two generators live in this package (modules ``labels``, ``common``, ``anatomy``, ``ct``,
``natural``), both pure numpy and bit-reproducible from an integer seed:

* **Synthetic CT** (:func:`synthetic_ct`, :func:`iter_ct_series`, :func:`generate_ct_series`):
  axial CT slices in Hounsfield units (int16) for the six body-region classes of the CT
  body-region task (:data:`BODY_REGIONS`), with a per-slice region label, a lesion flag and an
  organ segmentation mask (:data:`ORGANS`). Data are organised as patients -> series -> slices
  so that patient-level splits work exactly as on real archives.
* **Synthetic natural-image proxy** (:func:`synthetic_natural`): RGB images of textured,
  coloured shapes in front of cluttered dead-leaves scenes, one class per shape/texture family
  (:data:`NATURAL_CLASSES`). It is a synthetic stand-in that lets the cross-domain half of the
  pipeline run end to end; it is **not ImageNet** and numbers measured on it say nothing about
  ImageNet.

CT conventions
--------------
* Image axes are (row, column) = (y, x) of the usual radiological display: y grows toward the
  patient's back (posterior, so the table is at the bottom) and x grows toward the patient's
  left (so the liver is on the image left). Geometry is built in millimetres around the
  scanner isocentre and sampled at ``pixel_spacing = display FOV / size``; the display FOV
  follows the anatomy (about 200-290 mm for a head, 300-500 mm for the trunk, 150-500 mm for
  limbs, 90-170 mm for a dedicated spine view), so anatomy keeps its physical size at any
  ``size``.
* ``slice_position`` is the patient z coordinate in mm (superior is positive, as DICOM's
  ImagePositionPatient); slices within a series are ordered head to feet.
* Outside the scanner's circular scan field of view (500 mm diameter around the isocentre) pixels
  are set to -1024 HU, the value many scanners write there; it can appear in the corners of
  wide or off-centre reconstructions. All values are clipped to [-1024, 3071].
* Scanner effects: partial-volume blur (a separable Gaussian point-spread function, at least half
  a pixel wide) and Gaussian noise of 10-20 HU whose texture is correlated by that same blur.

CT content
----------
* head_neck: scalp, three-layer skull, CSF, grey/white matter and ventricles; toward the skull
  base petrous bones, orbits and sinuses; lower down jaw, airway, thyroid and cervical spine.
* thorax: body with fat and muscle layers, lungs (gravity-dependent density, vessels), heart,
  aorta and other mediastinal vessels, trachea/bronchi, ribs, sternum, scapulae, spine;
  sometimes breasts or arms down; liver dome and spleen tip at the base.
* abdomen: liver (vessels, gallbladder), spleen, kidneys, pancreas, stomach with an air-fluid
  level, bowel loops with gas, fluid or faeces, aorta/IVC, psoas, lumbar spine, lower ribs.
* hip_pelvis: iliac wings, sacrum, acetabula and femoral heads, femoral necks and trochanters,
  pubis and ischia, bladder, rectum, prostate/uterus, gluteal muscles.
* extremities: thigh, calf, upper arm or forearm (one limb or both legs): skin, fat, muscle
  compartments with fat septa, vessels, long bones with fatty marrow in the shaft.
* spine: a cervical, thoracic or lumbar level reconstructed in a small FOV around the vertebra
  (vertebral body or disc, pedicles, laminae, processes, canal and cord) with a sharper kernel.

Anatomy varies per patient (size, shape, fat, organ sizes, bone and lung density, brain
atrophy), per series (position along the region, slice spacing, contrast phase, display FOV,
off-centring, a tilt of a few degrees, table) and smoothly with slice position within a series
(organ size profiles, wandering bowel and vessels, the periodic vertebral level). Lesions are
ellipsoids placed along z as a Poisson process inside a region's host organs (brain; lung or
liver; liver, kidney or spleen; bladder or bone; bone or soft tissue; vertebrae) and touch
roughly 30-45% of slices.

Everything random is drawn from generators seeded by ``(seed, patient index[, region])``, so a
series is the same whether it is produced alone, streamed, or inside a full dataset.
"""

from __future__ import annotations

from radengine.data.synthetic.common import _MAX_SIZE as _MAX_SIZE  # the CLI's size bounds
from radengine.data.synthetic.common import _MIN_SIZE as _MIN_SIZE
from radengine.data.synthetic.common import HU_MAX, HU_MIN
from radengine.data.synthetic.ct import (
    CTSeries,
    SyntheticCT,
    generate_ct_series,
    iter_ct_series,
    synthetic_ct,
)
from radengine.data.synthetic.labels import (
    BODY_REGIONS,
    CONTRAST_PHASES,
    NATURAL_CLASSES,
    ORGANS,
)
from radengine.data.synthetic.natural import SyntheticImages, synthetic_natural

__all__ = [
    "BODY_REGIONS",
    "CONTRAST_PHASES",
    "HU_MAX",
    "HU_MIN",
    "NATURAL_CLASSES",
    "ORGANS",
    "CTSeries",
    "SyntheticCT",
    "SyntheticImages",
    "generate_ct_series",
    "iter_ct_series",
    "synthetic_ct",
    "synthetic_natural",
]
