"""radengine's ops: each module is the one place that chooses a backend for its op.

See radengine/ops/_dispatch.py for the selection rules and RADENGINE_BACKEND.
"""

from radengine.ops import augment as _augment_module
from radengine.ops import contrastive_loss as _contrastive_loss_module
from radengine.ops import hu_window as _hu_window_module
from radengine.ops import resize as _resize_module
from radengine.ops.augment import (
    PRESETS,
    AugmentParams,
    AugmentSpec,
    augment_views,
    reference_augment_views,
    sample_params,
)
from radengine.ops.contrastive_loss import (
    info_nce,
    nt_xent,
    reference_info_nce,
    reference_nt_xent,
)
from radengine.ops.hu_window import NAMED_WINDOWS, WindowSpec, hu_window, reference_hu_window
from radengine.ops.resize import reference_resize, resize

# op name -> backend table, for `radengine info` and the benchmarks.
OPS = {
    "hu_window": _hu_window_module.IMPLS,
    "resize": _resize_module.IMPLS,
    "contrastive_loss": _contrastive_loss_module.IMPLS,
    "augment": _augment_module.IMPLS,
}

__all__ = [
    "NAMED_WINDOWS",
    "OPS",
    "PRESETS",
    "AugmentParams",
    "AugmentSpec",
    "WindowSpec",
    "augment_views",
    "hu_window",
    "info_nce",
    "nt_xent",
    "reference_augment_views",
    "reference_hu_window",
    "reference_info_nce",
    "reference_nt_xent",
    "reference_resize",
    "resize",
    "sample_params",
]
