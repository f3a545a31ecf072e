"""radengine: self-supervised pretraining and transfer evaluation for CT and natural images.

Importing the package registers the ``radengine::*`` torch.library ops. The native modules
(``radengine._cpu``, ``radengine._cuda``) are optional at import time: a missing one only
removes its backend, and ``radengine info`` says why.
"""

from radengine.ops import hu_window

__version__ = "0.1.0"
__all__ = ["__version__", "hu_window"]
