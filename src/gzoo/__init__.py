"""gzoo: Galaxy Zoo 2 morphology (37 vote fractions) from images with timm EfficientNets.

``gzoo.load(ckpt)`` gives a :class:`gzoo.Model` whose ``.predict(...)`` and ``.embed(...)`` return
DataFrames (see gzoo.api). Both are imported on first use, so ``import gzoo`` stays light (no torch).
"""

from gzoo.errors import GzooError

__version__ = "0.1.0"
__all__ = ["GzooError", "Model", "__version__", "load"]


def __getattr__(name: str):
    if name in ("load", "Model"):  # torch, timm and Lightning load only when the API is used
        from gzoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'gzoo' has no attribute {name!r}")
