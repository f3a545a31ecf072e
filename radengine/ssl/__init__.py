"""Self-supervised methods, one file each, behind a small registry.

``METHODS[name](backbone, **options)`` builds the method's training module: a ``nn.Module``
whose ``forward(*views)`` returns the loss and whose ``encoder`` is the part to transfer.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from radengine.ssl.simclr import SimCLR

METHODS: dict[str, Callable[..., nn.Module]] = {"simclr": SimCLR}

__all__ = ["METHODS", "SimCLR"]
