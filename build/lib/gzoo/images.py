"""Decoding image files: the one place gzoo turns a file into pixels.

:func:`load_image` gives an RGB uint8 array (H, W, 3) for any file PIL or libjpeg-turbo
reads (greyscale, RGBA and PNG-in-disguise are converted); :func:`check_image` is the quick
scan the data module runs over every image before training.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image


def load_image(path: str | Path) -> np.ndarray:
    """Decode an image to an RGB uint8 array (H, W, 3).

    JPEGs go through simplejpeg (libjpeg-turbo, the same pixels as PIL, about 3x faster
    here); anything it cannot read (PNG, CMYK JPEG) through PIL.
    """
    data = Path(path).read_bytes()
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


def check_image(path: str | Path) -> str | None:
    """None if the image decodes; otherwise the reason it does not (a quick scan: 1/8 scale for JPEGs)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (im.width // 8, im.height // 8))  # decode at 1/8 scale: fast, still reads every byte
            im.load()
        return None
    except Exception as e:  # PIL raises many kinds for bad files
        return str(e) or type(e).__name__
