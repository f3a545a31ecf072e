"""Label vocabularies of the synthetic data: body regions, organ mask classes, contrast phases
and natural-image classes. Every label column or mask value of a built-in store is an index
into one of these tuples."""

from __future__ import annotations

BODY_REGIONS: tuple[str, ...] = (
    "head_neck",
    "thorax",
    "abdomen",
    "extremities",
    "hip_pelvis",
    "spine",
)
"""The six CT body-region classes; a slice's ``region`` label is an index into this tuple."""

ORGANS: tuple[str, ...] = (
    "background",  # 0: air, the patient table, outside the scan field of view
    "body",  # 1: any other tissue: skin, fat, muscle, bowel, vessels, airway, CSF in the canal
    "bone",  # 2: cortical and cancellous bone, marrow, teeth, costal cartilage
    "lung",  # 3: lung parenchyma including its vessels (the airway is "body")
    "liver",  # 4
    "kidney",  # 5: parenchyma and renal sinus
    "spleen",  # 6
    "heart",  # 7: myocardium and chambers (the great vessels are "body")
    "brain",  # 8: brain tissue, ventricles and intracranial CSF
    "bladder",  # 9: urinary bladder with its wall
    "lesion",  # 10: a synthetic lesion inside one of the organs above
)
"""Organ classes of the segmentation masks; a mask value is an index into this tuple.

Every class occurs: lung/heart in thorax, liver/kidney/spleen in abdomen (liver and spleen also
at the thoracic base), brain in head_neck, bladder in hip_pelvis, bone everywhere.
"""

NATURAL_CLASSES: tuple[str, ...] = (
    "disk",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "stripes",
    "checker",
    "dots",
    "waves",
    "crescent",
    "hexagon",
)
"""Class names of :func:`synthetic_natural`; ``num_classes=k`` uses the first k."""

CONTRAST_PHASES: tuple[str, ...] = ("none", "arterial", "venous")
"""Contrast phases of a series (:attr:`CTSeries.contrast`); the CT store's ``contrast`` column
is an index into this tuple."""
