"""Image transforms: the central crop and the train/eval pipelines.

Every pipeline takes an RGB uint8 array (H, W, 3) as decoded from the JPEG and
returns a dict (albumentations' way: ``transform(image=array)["image"]``) whose "image"
is a tensor (3, image_size, image_size). With ``normalise=True`` (the default) it is
float32, normalised with the backbone's mean and std. With ``normalise=False`` it stays
uint8, which is what the data module and prediction use: a quarter of the bytes to move
between processes and to the device, where GalaxyZooModule normalises the batch
(:func:`normalise_batch`). The training pipeline then leaves brightness to the device
too: its dict carries the drawn factor under "brightness", and normalise_batch applies
it in the same arithmetic as the normalisation, so the CPU never makes a pass over the
pixels for it.

The training augmentation is specified by :func:`reference_train_transform`, a plain
albumentations chain: an affine warp of the whole frame (rotation, shift, zoom), the
flips, the central crop, brightness, resize, normalise. Order matters: the frame is
warped before the crop, so rotating never brings empty corners into the crop.

:func:`train_transform` computes the same geometry in one pass: the affine warp, the
flips, the crop and the resize are composed into one matrix and ``cv2.warpAffine``
computes only the output pixels, straight from the full-resolution frame (reflected
at its edges, as in the reference). Brightness (clipped at 255) is a multiplication
after the warp: a linear warp commutes with it except where the clip bites. The tests
check that it matches the reference.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from gzoo.errors import GzooError

# OpenCV on one thread in every gzoo process: the parallelism is the DataLoader's workers, and
# OpenCV's own pool (one thread per core) gave no speed per image here, only 40 % more CPU taken
# from the model. Set here, at import, in the main process: DataLoader workers inherit it when they
# start; setting it inside a worker forked after the pool had started can deadlock.
cv2.setNumThreads(1)


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


def to_tensor(img: np.ndarray, mean: np.ndarray, std: np.ndarray, brightness: float = 1.0) -> torch.Tensor:
    """uint8 (H, W, 3 or 4) -> float32 tensor (3, H, W): (min(x * brightness, 255) / 255 - mean) / std.

    One lookup table per channel does it all in one pass, into a new array; a 4th channel
    (RGBX from the warp) maps to 0 and is left out of the view. The result is a view of an
    (H, W, C) array, as permute gives; the DataLoader's collate copies it into the batch.
    """
    channels = img.shape[2]
    levels = np.minimum(np.arange(256.0) * brightness, 255.0)
    lut = np.zeros((256, channels), np.float32)
    lut[:, :3] = (levels[:, None] - 255.0 * mean) / (255.0 * std)
    out = cv2.LUT(img, lut.reshape(256, 1, channels))
    return torch.from_numpy(out.transpose(2, 0, 1)[:3])  # one torch call: each costs microseconds


def to_uint8_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3 or 4) -> uint8 tensor (3, H, W), a new contiguous array (a 4th channel is left out)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)[:3]))


def normalise_batch(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    brightness: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 batch (B, 3, H, W) from ``normalise=False`` -> float32 (min(x * brightness, 255) / 255 - mean) / std.

    On x's device; ``brightness`` (B,) is the training pipeline's per-image factor, None for 1.
    GalaxyZooModule.forward calls it on every uint8 batch (mean and std already on the device).
    """
    mean_ = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_ = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = x.float()
    if brightness is not None:
        x = (x * brightness.to(x.device, torch.float32).view(-1, 1, 1, 1)).clamp_(max=255.0)
    return (x / 255.0 - mean_) / std_


class EvalTransform:
    """Deterministic: central crop -> resize (INTER_AREA) -> normalise."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], crop_fraction: float = 0.5, normalise: bool = True):
        _check_fraction(crop_fraction)
        self.size, self.crop_fraction, self.normalise = image_size, crop_fraction, normalise
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        crop = central_crop(image, self.crop_fraction)
        resized = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
        if self.normalise:
            return {"image": to_tensor(resized, self.mean, self.std)}
        return {"image": torch.from_numpy(resized).permute(2, 0, 1)}  # a view of a new array: collate copies it


class TrainTransform:
    """The reference augmentation (see :func:`reference_train_transform`) in one warp.

    Random draws come from a generator that the training dataset reseeds for every image
    from (seed, epoch, index) (see data.EpochSampler), so runs repeat exactly, also after a
    resume; without ``reseed`` they come from Python's global generator (``random.seed``;
    Lightning's seed_everything and every DataLoader worker seed it). Python's generator,
    not torch's: between decodes and warps a torch call measured 30-70 microseconds per image
    here (2-5 in a loop of its own), as much as the colour conversion.
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
        self.rng: random.Random | None = None  # None: Python's global generator
        self._scratch: dict[str, np.ndarray] = {}  # reused between calls; see apply

    def reseed(self, seed: int) -> None:
        """Draw the next parameters from a generator seeded with ``seed`` (see data.EpochSampler)."""
        self.rng = random.Random(seed)

    def draw(self) -> dict:
        """One set of random parameters, drawn as the reference draws them (x and y zoom and shift independently)."""
        rng = self.rng or random
        u = [rng.random() for _ in range(8)]
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

    def apply(self, image: np.ndarray, angle=0.0, shift=(0.0, 0.0), zoom=(1.0, 1.0), hflip=False, vflip=False, brightness=1.0) -> dict:
        """The augmentation with the given parameters: {"image": tensor} (+ "brightness" with normalise=False)."""
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
        if self.normalise:
            return {"image": to_tensor(warped, self.mean, self.std, brightness)}
        # uint8: brightness goes to the device with the image (see normalise_batch); a plain float,
        # which the DataLoader's collate turns into one (B,) tensor per batch.
        return {"image": to_uint8_tensor(warped), "brightness": float(brightness)}

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 scratch array of ``shape``, the same one on every call with that shape."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape:
            buf = self._scratch[name] = np.empty(shape, np.uint8)
        return buf

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        return self.apply(image, **self.draw())


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
    uint8 out, with the brightness factor beside it for :func:`normalise_batch`.
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
