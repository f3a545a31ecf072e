"""radengine: self-supervised pretraining and transfer evaluation for CT and natural images.

Importing ``radengine`` is cheap: torch and the ``radengine::*`` torch.library ops load on
first use of an op (``radengine.hu_window``, or ``import radengine.ops``), so data tools and
ingest worker processes start without importing torch. The native modules
(``radengine._cpu``, ``radengine._cuda``) are optional: a missing one only removes its
backend, and ``radengine info`` says why.
"""

from typing import Any

from radengine.threads import configure_openmp as _configure_openmp

# Before torch (or radengine._cpu) loads the OpenMP runtime, which reads its wait policy only
# then: passive waiting, so a busy machine cannot stall every parallel region (threads.py).
_configure_openmp()

__version__ = "0.1.0"
__all__ = ["__version__", "hu_window", "resize"]


def __getattr__(name: str) -> Any:
    if name in ("hu_window", "resize"):
        import radengine.ops

        return getattr(radengine.ops, name)
    raise AttributeError(f"module 'radengine' has no attribute {name!r}")
