"""Image transforms: the central crop and the train/eval pipelines.

Every pipeline takes an RGB uint8 array (H, W, 3) as decoded from the JPEG and
returns a tensor (3, image_size, image_size); call it as ``transform(image=array)["image"]``
(albumentations' way). With ``normalise=True`` (the default) it is float32, normalised
with the backbone's mean and std; with ``normalise=False`` it stays uint8, which is what
the data module and prediction use: a quarter of the bytes to move between processes and
to the device, and GalaxyZooModule normalises uint8 batches on the device
(:func:`normalise_batch`).

The training augmentation is specified by :func:`reference_train_transform`, a plain
albumentations chain: an affine warp of the whole frame (rotation, shift, zoom), the
flips, the central crop, brightness, resize, normalise. Order matters: the frame is
warped before the crop, so rotating never brings empty corners into the crop.

:func:`train_transform` computes the same geometry in one pass: the affine warp, the
flips, the crop and the resize are composed into one matrix and ``cv2.warpAffine``
computes only the output pixels, straight from the full-resolution frame (reflected
at its edges, as in the reference). Pixels stay uint8 until the last step, where one
lookup table applies brightness (clipped at 255), scaling to [0, 1] and normalisation.
The tests check that it matches the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from gzoo.errors import GzooError


def central_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of each side of an (H, W, ...) array (0.5 of 424 px = the central 212 px).

    The recipe cuts the image into a 4x4 grid and keeps the central 2x2 tiles; as a
    fraction the same rule works for images of any size.
    """
    top, left, ch, cw = _crop_box(img.shape[:2], fraction)
    return img[top : top + ch, left : left + cw]


def _crop_box(shape: tuple[int, int], fraction: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the central crop."""
    h, w = shape
    ch, cw = round(h * fraction), round(w * fraction)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise GzooError(f"data.crop_fraction must be in (0, 1], got {fraction}.")


def to_tensor(img: np.ndarray, mean: np.ndarray, std: np.ndarray, brightness: float = 1.0, normalise: bool = True) -> torch.Tensor:
    """uint8 (H, W, 3 or 4) -> tensor (3, H, W) of min(x * brightness, 255), normalised or not.

    normalise=True: float32 (x / 255 - mean) / std. normalise=False: uint8, for
    :func:`normalise_batch` on the device (a quarter of the bytes to move). One lookup
    table does it all in one pass, into a new array. A 4th channel (RGBX from the warp) goes
    through the table too and is then left out of the view: no extra pass to drop it. The result
    is a view of an (H, W, C) array, as permute gives; the DataLoader's collate copies it
    into the contiguous batch.
    """
    channels = img.shape[2]
    levels = np.minimum(np.arange(256.0) * brightness, 255.0)
    if normalise:  # one table per channel (the 4th, if any, maps to 0)
        lut = np.zeros((256, channels), np.float32)
        lut[:, :3] = (levels[:, None] - 255.0 * mean) / (255.0 * std)
        out = cv2.LUT(img, lut.reshape(256, 1, channels))
    else:  # one table for all channels: about twice as fast
        out = cv2.LUT(img, np.rint(levels).astype(np.uint8))
    return torch.from_numpy(out.transpose(2, 0, 1)[:3])  # one torch call: each costs microseconds


def normalise_batch(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """uint8 batch (B, 3, H, W) from ``normalise=False`` -> float32 (x / 255 - mean) / std, on x's device.

    GalaxyZooModule.forward calls it on every uint8 batch (mean and std already on the device).
    """
    mean_ = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_ = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean_) / std_


class EvalTransform:
    """Deterministic: central crop -> resize (INTER_AREA) -> normalise."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 0.5, normalise: bool = True):
        _check_fraction(crop_fraction)
        self.size, self.crop_fraction, self.normalise = image_size, crop_fraction, normalise
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        crop = central_crop(image, self.crop_fraction)
        resized = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return {"image": to_tensor(resized, self.mean, self.std, normalise=self.normalise)}


class TrainTransform:
    """The reference augmentation (see :func:`reference_train_transform`) in one warp.

    Random draws come from a generator that the training dataset reseeds for every image
    from (seed, epoch, index) (see data.EpochSampler), so runs repeat exactly, also after a
    resume; without ``reseed`` they come from torch's global generator.
    """

    def __init__(
        self,
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
        normalise: bool = True,
    ):
        _check_fraction(crop_fraction)
        self.size, self.crop_fraction, self.normalise = image_size, crop_fraction, normalise
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.rotate, self.shift, self.zoom = rotate, shift, tuple(zoom)
        self.hflip, self.vflip, self.brightness = hflip, vflip, tuple(brightness)
        self.generator: torch.Generator | None = None  # None: torch's global generator
        self._scratch: dict[str, np.ndarray] = {}  # reused between calls; see apply

    def reseed(self, seed: int) -> None:
        """Draw the next parameters from a generator seeded with ``seed`` (see data.EpochSampler)."""
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self) -> dict:
        """One set of random parameters, drawn as the reference draws them (x and y zoom and shift independently)."""
        u = torch.rand(8, dtype=torch.float64, generator=self.generator).tolist()
        lerp = lambda lo, hi, t: lo + (hi - lo) * t  # noqa: E731
        return {
            "angle": lerp(-self.rotate, self.rotate, u[0]),
            "shift": (lerp(-self.shift, self.shift, u[1]), lerp(-self.shift, self.shift, u[2])),
            "zoom": (lerp(*self.zoom, u[3]), lerp(*self.zoom, u[4])),
            "hflip": u[5] < self.hflip,
            "vflip": u[6] < self.vflip,
            "brightness": lerp(*self.brightness, u[7]),
        }

    def matrix(self, shape: tuple[int, int], out: tuple[int, int], angle: float, shift, zoom, hflip: bool, vflip: bool) -> np.ndarray:
        """The 3x3 matrix taking frame pixels to output pixels: affine, then flips, crop and resize.

        Conventions are albumentations' and OpenCV's: pixel centres at integers, the
        affine about the frame centre ((w-1)/2, (h-1)/2) with the shift truncated to whole
        pixels, and resize mapping x to (x + 0.5) * out / in - 0.5. Written out rather than
        as a product of six matrices: it is computed for every image.
        """
        h, w = shape
        # albumentations' Affine: p -> rotation @ zoom @ (p - c) + c + shift
        a = math.radians(angle % 360)
        cos, sin = math.cos(a), math.sin(a)
        cx, cy = w / 2 - 0.5, h / 2 - 0.5
        a00, a01, a10, a11 = cos * zoom[0], sin * zoom[1], -sin * zoom[0], cos * zoom[1]
        a02 = cx + int(shift[0] * w) - a00 * cx - a01 * cy
        a12 = cy + int(shift[1] * h) - a10 * cx - a11 * cy
        # Flip (x -> w - 1 - x), crop (x -> x - left) and resize act on each axis alone: x -> kx * x + bx.
        top, left, ch, cw = _crop_box(shape, self.crop_fraction)
        sx, sy = out[1] / cw, out[0] / ch
        fx, ox = (-1, w - 1) if hflip else (1, 0)
        fy, oy = (-1, h - 1) if vflip else (1, 0)
        kx, bx = sx * fx, sx * (ox - left + 0.5) - 0.5
        ky, by = sy * fy, sy * (oy - top + 0.5) - 0.5
        # The axes' map after the affine, multiplied out by hand (plain floats are faster than numpy here).
        return np.array([[kx * a00, kx * a01, kx * a02 + bx], [ky * a10, ky * a11, ky * a12 + by], [0.0, 0.0, 1.0]])

    def apply(self, image: np.ndarray, angle=0.0, shift=(0.0, 0.0), zoom=(1.0, 1.0), hflip=False, vflip=False, brightness=1.0) -> torch.Tensor:
        """The augmentation with the given parameters."""
        _, _, ch, cw = _crop_box(image.shape[:2], self.crop_fraction)
        # Linear interpolation aliases when it shrinks: then warp at crop size and shrink by area.
        shrink = self.size < min(ch, cw)
        out = (ch, cw) if shrink else (self.size, self.size)
        m = self.matrix(image.shape[:2], out, angle, shift, zoom, hflip, vflip)
        # OpenCV's bilinear warp is about twice as fast on 4 channels as on 3. The frame and the
        # warp are written into arrays kept from the last call: a fresh array this large costs
        # page faults that add up to about half the time of a JPEG decode. (So one transform
        # object must not be called from two threads at once; DataLoader workers are processes.)
        rgbx = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA, dst=self._buffer("frame", (*image.shape[:2], 4)))
        warped = cv2.warpAffine(
            rgbx, m[:2], out[::-1], dst=self._buffer("warped", (*out, 4)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        if shrink:
            warped = cv2.resize(warped, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return to_tensor(warped, self.mean, self.std, brightness, self.normalise)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 scratch array of ``shape``, the same one on every call with that shape."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape:
            buf = self._scratch[name] = np.empty(shape, np.uint8)
        return buf

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        return {"image": self.apply(image, **self.draw())}


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 0.5, normalise: bool = True
) -> EvalTransform:
    """Deterministic: central crop, resize, normalise (normalise=False: uint8 out, see :func:`normalise_batch`)."""
    return EvalTransform(image_size, mean, std, crop_fraction, normalise)


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
    normalise: bool = True,
) -> TrainTransform:
    """The paper's augmentation: rotation, shift, zoom, flips and brightness, then the crop.

    ``rotate`` is the largest angle in degrees either way (180 = any angle: a galaxy
    has no preferred orientation); ``shift`` a fraction of the frame either way;
    ``zoom`` the range of the scale factor; ``hflip``/``vflip`` the probability of each
    flip; ``brightness`` the range of a multiplicative brightness factor. normalise=False:
    uint8 out, see :func:`normalise_batch`.
    """
    return TrainTransform(image_size, mean, std, crop_fraction, rotate, shift, zoom, hflip, vflip, brightness, normalise)


class CentralCrop(A.ImageOnlyTransform):
    """albumentations' form of :func:`central_crop`, for the reference chain."""

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
    """The specification of :func:`train_transform` as a plain albumentations chain (slower; tests and bench use it)."""
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
