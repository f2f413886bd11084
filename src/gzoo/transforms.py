"""Image transforms: the central crop and the albumentations train/eval pipelines.

Every pipeline takes an RGB uint8 array (H, W, 3) as decoded from the JPEG and
returns a float tensor (3, image_size, image_size) normalised with the backbone's
mean and std.

Order matters for the training pipeline: the geometric augmentation (rotation,
shift, zoom) is applied to the whole frame first, and only then is the central
part cut out, so that rotating never brings empty corners into the crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2


class CentralCrop(A.ImageOnlyTransform):
    """Keep the central ``fraction`` of each side (0.5 of 424 px = the central 212 px).

    The recipe cuts the image into a 4x4 grid and keeps the central 2x2 tiles; as a
    fraction the same rule works for images of any size.
    """

    def __init__(self, fraction: float = 0.5, p: float = 1.0):
        super().__init__(p=p)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return central_crop(img, self.fraction)


def central_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of each side of an (H, W, ...) array."""
    h, w = img.shape[:2]
    ch, cw = round(h * fraction), round(w * fraction)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def _normalise_and_tensor(image_size: int, mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ]


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 0.5
) -> A.Compose:
    """Deterministic: central crop, resize, normalise."""
    return A.Compose([CentralCrop(crop_fraction), *_normalise_and_tensor(image_size, mean, std)])


def train_transform(
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
    """The paper's augmentation: rotation, shift, zoom, flips and brightness, then the crop.

    ``rotate`` is the largest angle in degrees either way (180 = any angle: a galaxy
    has no preferred orientation); ``shift`` a fraction of the frame either way;
    ``zoom`` the range of the scale factor; ``hflip``/``vflip`` the probability of each
    flip; ``brightness`` the range of a multiplicative brightness factor.
    """
    return A.Compose(
        [
            # One warp for rotation, shift and zoom; reflection fills the frame's edges.
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
            *_normalise_and_tensor(image_size, mean, std),
        ]
    )
