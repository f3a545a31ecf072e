"""radengine's C++ CPU kernels on numpy arrays, for worker processes (ingest, data loaders).

No torch here: a spawned worker that only needs these starts in a fraction of a second
instead of importing torch. Each function computes exactly what the op of the same name in
:mod:`radengine.ops` computes with its ``cpu`` backend, and falls back to that op's plain
torch reference when the native module is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radengine import _native


def resize_array(a: np.ndarray, size: int | Sequence[int], *, num_threads: int = 1) -> np.ndarray:
    """:func:`radengine.ops.resize` on a numpy array (B, H, W) or (B, H, W, C).

    Args:
        a: int16, uint8 or float32 images.
        size: output (h, w), or one int for (size, size).
        num_threads: OpenMP threads (1 suits one worker process per core).

    Returns:
        A new contiguous array (B, h, w[, C]) of ``a``'s dtype.
    """
    if a.dtype not in (np.int16, np.uint8, np.float32) or a.ndim not in (3, 4):
        raise ValueError(
            f"a must be int16, uint8 or float32 (B, H, W[, C]); got {a.dtype} {a.shape}"
        )
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 1 or min(a.shape[1:3]) < 1:
        raise ValueError(f"bad sizes: {a.shape} -> {(h, w)}")
    if _native.cpu is None:
        import torch

        from radengine.ops.resize import reference_resize

        x = torch.from_numpy(np.require(a, requirements="CW"))
        return reference_resize(x, (h, w)).numpy()
    a = np.ascontiguousarray(a)
    B, H, W = a.shape[:3]
    C = a.shape[3] if a.ndim == 4 else 1
    out = np.empty((B, h, w, *a.shape[3:]), dtype=a.dtype)
    if B:
        code = _native.DTYPE_CODES[a.dtype.name]
        _native.cpu.resize(a.ctypes.data, out.ctypes.data, B, H, W, C, h, w, code, num_threads)
    return out
