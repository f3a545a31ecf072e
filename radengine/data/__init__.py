"""Data for radengine: ingest, store and loaders, and the built-in synthetic datasets.

The synthetic generators (:mod:`radengine.data.synthetic`) are what the pipeline runs on when a
user has no data: a CT set with body-region, lesion and organ labels, and a natural-image proxy
that is explicitly not ImageNet.
"""

from radengine.data.synthetic import (
    BODY_REGIONS,
    HU_MAX,
    HU_MIN,
    NATURAL_CLASSES,
    ORGANS,
    CTSeries,
    SyntheticCT,
    SyntheticImages,
    generate_ct_series,
    iter_ct_series,
    synthetic_ct,
    synthetic_natural,
)

__all__ = [
    "BODY_REGIONS",
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
