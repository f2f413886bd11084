"""gzoo: Galaxy Zoo 2 morphology (37 vote fractions) from images with timm EfficientNets."""

from gzoo.errors import GzooError

__version__ = "0.1.0"
__all__ = ["GzooError", "__version__"]
