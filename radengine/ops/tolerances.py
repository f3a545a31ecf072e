"""How close each op's backends must come to its reference: the tolerances of the op tests
(tests/ops/test_*.py), in one place so that ``radengine selftest`` checks a machine with the
same bar as the test suite. tests/test_selftest.py asserts that these equal the tests' own
constants, so the two cannot drift apart.

Every tolerance is ``(rtol, atol)`` in the sense of ``torch.testing.assert_close``: an
element passes when ``|out - ref| <= atol + rtol * |ref|``.
"""

from __future__ import annotations

import torch

# hu_window, every backend against reference_hu_window (tests/ops/test_hu_window.py TOL):
# one output ulp (rtol) at each output dtype; atol covers fp32 rounding near zero.
HU_WINDOW: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2**-10, 1e-5),
    torch.bfloat16: (2**-7, 1e-5),
}

# augment_views, a backend against the reference from the same params
# (tests/ops/test_augment.py cpu_vs_reference, test_augment_cuda.py, test_augment_triton.py
# FP32_ATOL): fp32 within an absolute 1e-5 after normalisation; fp16/bf16 within one of
# their own ulps of the fp32 reference rounded to them, plus the same fp32 slack.
AUGMENT_FP32_ATOL = 1e-5
AUGMENT_ULP_SLACK = 1e-5

# NT-Xent / InfoNCE, loss and gradients against the fp64 oracle per input dtype
# (tests/ops/test_contrastive_loss.py TOL). fp32 gradients are compared relative to their
# natural size max(|g|max, 1 / (2 N T)) with atol raised to CONTRASTIVE_FP32_GRAD_ATOL_T / T
# (fp32 logits carry an error of ~eps32 / T that the softmax passes on).
CONTRASTIVE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-11),
    torch.float32: (2e-5, 2e-6),
}
CONTRASTIVE_FP32_GRAD_ATOL_T = 1e-7
# fp16 / bf16 inputs (flash-attention's rule, test_low_precision_error_at_most_twice_torch):
# the error against fp64 at most this factor times plain torch's computing in the input
# dtype, plus the slack (loss, gradient).
CONTRASTIVE_LOW_PRECISION_FACTOR = 2.0
CONTRASTIVE_LOW_PRECISION_SLACK = (1e-6, 1e-9)

# resize against the float64 oracle (tests/ops/test_resize.py): float32 within rtol 1e-5 and
# atol 1e-5 x the largest |input|; integer outputs differ by at most 1, and only where the
# exact value lies within RESIZE_HALF_SLACK (relative) of a .5 rounding boundary.
RESIZE_FP32_RTOL = 1e-5
RESIZE_FP32_ATOL_PER_MAX = 1e-5
RESIZE_HALF_SLACK = 1e-3
