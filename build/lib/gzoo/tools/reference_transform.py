"""The specification of gzoo's training augmentation as a plain albumentations chain.

gzoo.transforms.GalaxyWarp computes the same geometry in one warp; the tests check it against
this chain and the benchmark compares their cost. Slower, and not used for training.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from gzoo.transforms import central_crop


class CentralCrop(A.ImageOnlyTransform):
    """albumentations' form of :func:`gzoo.transforms.central_crop`."""

    def __init__(self, fraction: float = 0.5, p: float = 1.0):
        super().__init__(p=p)
        self.fraction = fraction

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return central_crop(img, self.fraction)


def reference_train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 0.5,
    rotate: float = 180.0,
    shift: float = 0.1,
    zoom: Sequence[float] = (0.8, 1.2),
    hflip: float = 0.5,
    vflip: float = 0.5,
    brightness: Sequence[float] = (0.9, 1.2),
) -> A.Compose:
    """Affine warp of the whole frame, flips, central crop, brightness, resize, normalise: float out."""
    return A.Compose(
        [
            # Rotation, shift and zoom of the whole frame; reflection fills its edges.
            A.Affine(
                rotate=(-rotate, rotate),
                translate_percent=(-shift, shift),
                scale=tuple(zoom),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            ),
            A.HorizontalFlip(p=hflip),
            A.VerticalFlip(p=vflip),
            CentralCrop(crop_fraction),
            A.MultiplicativeNoise(multiplier=tuple(brightness), per_channel=False, elementwise=False, p=1.0),
            A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )
