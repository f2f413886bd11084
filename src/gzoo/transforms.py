"""Image transforms: the central crop, the recipe's augmentation, and normalisation on the device.

Both pipelines are albumentations ``Compose`` chains that take a decoded RGB uint8 image
(H, W, 3) and give a uint8 tensor (3, S, S):

- :func:`train_transform`: :class:`GalaxyWarp`, the recipe's augmentation (rotation, zoom,
  shift, flips, the central crop and the resize) in one ``cv2.warpAffine``, then any
  albumentations transforms the config appends (``data.augment.extra``), then a CHW tensor.
  The brightness factor is drawn here but applied on the device (the dict carries it under
  "brightness"), in the same arithmetic as the normalisation, so the CPU makes no pass over
  the pixels for it.
- :func:`eval_transform`: the central crop, resized by area.

Images stay uint8 until the device, where :func:`normalise_batch` (called by the network)
turns them into (min(x * brightness, 255) / 255 - mean) / std: a quarter of the bytes
through the loader's queues and onto the GPU.

GalaxyWarp reproduces a plain albumentations chain (``gzoo.tools.reference_transform``: an
affine warp of the whole frame, the flips, the central crop, brightness, resize). Order
matters: the frame is warped before the crop, so rotating never brings empty corners into
the crop. The tests check the geometry against that chain.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import hydra
import numpy as np
import torch

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
    top, left, ch, cw = crop_box(img.shape[:2], fraction)
    return img[top : top + ch, left : left + cw]


def crop_box(shape: tuple[int, int], fraction: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the central crop."""
    h, w = shape
    ch, cw = round(h * fraction), round(w * fraction)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def check_fraction(fraction: float) -> None:
    """The one sentence for a crop fraction outside (0, 1]."""
    if not 0.0 < fraction <= 1.0:
        raise GzooError(f"data.crop_fraction must be in (0, 1], got {fraction}.")


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a whole (H, W, 3) image counter-clockwise; right angles exactly, others with reflected edges."""
    if angle % 360 == 0:  # the usual view (tta=1, and the first of every tta): no copy
        return image
    if angle % 90 == 0:
        return np.ascontiguousarray(np.rot90(image, int(angle // 90)))
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def normalise_batch(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    brightness: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 batch (B, 3, H, W) -> float32 (min(x * brightness, 255) / 255 - mean) / std, on x's device.

    ``brightness`` (B,) is the training pipeline's per-image factor, None for 1.
    """
    mean_ = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_ = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = x.float()
    if brightness is not None:
        x = (x * brightness.to(x.device, torch.float32).view(-1, 1, 1, 1)).clamp_(max=255.0)
    return (x / 255.0 - mean_) / std_


class CentralCropResize(A.ImageOnlyTransform):
    """The evaluation view: the central ``crop_fraction`` of the image, resized to ``size`` by area."""

    def __init__(self, size: int, crop_fraction: float = 0.5, p: float = 1.0):
        super().__init__(p=p)
        check_fraction(crop_fraction)
        self.size, self.crop_fraction = size, crop_fraction

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return cv2.resize(central_crop(img, self.crop_fraction), (self.size, self.size), interpolation=cv2.INTER_AREA)


class GalaxyWarp(A.ImageOnlyTransform):
    """The recipe's augmentation in one warp: rotation, zoom, shift, flips, central crop and resize.

    ``rotate`` is the largest angle in degrees either way (180 = any angle: a galaxy has no
    preferred orientation); ``shift`` a fraction of the frame either way; ``zoom`` the range of
    the scale factor (x and y drawn independently, as albumentations' Affine draws them);
    ``hflip``/``vflip`` the probability of each flip; ``brightness`` the range of a multiplicative
    factor, drawn here and handed on under the "brightness" key (applied by normalise_batch).

    The affine warp, the flips, the crop and the resize are composed into one matrix and
    ``cv2.warpAffine`` computes only the output pixels, straight from the full-resolution frame
    (reflected at its edges). Random draws come from the transform's ``py_random``, which the
    training dataset reseeds per image from (seed, epoch, index) (see data.EpochSampler).
    """

    def __init__(
        self,
        size: int,
        crop_fraction: float = 0.5,
        rotate: float = 180.0,
        shift: float = 0.1,
        zoom: Sequence[float] = (0.8, 1.2),
        hflip: float = 0.5,
        vflip: float = 0.5,
        brightness: Sequence[float] = (0.9, 1.2),
        p: float = 1.0,
    ):
        super().__init__(p=p)
        check_fraction(crop_fraction)
        self.size, self.crop_fraction = size, crop_fraction
        self.rotate, self.shift, self.zoom = rotate, shift, tuple(zoom)
        self.hflip, self.vflip, self.brightness = hflip, vflip, tuple(brightness)
        self._scratch: dict[str, np.ndarray] = {}  # reused between calls; see apply

    def get_params(self) -> dict[str, Any]:
        """One set of random parameters, drawn as the reference draws them."""
        u = [self.py_random.random() for _ in range(8)]
        lerp = lambda lo, hi, t: lo + (hi - lo) * t  # noqa: E731
        return {
            "angle": lerp(-self.rotate, self.rotate, u[0]),
            "shift": (lerp(-self.shift, self.shift, u[1]), lerp(-self.shift, self.shift, u[2])),
            "zoom": (lerp(*self.zoom, u[3]), lerp(*self.zoom, u[4])),  # type: ignore[call-arg]  # mypy: *zoom (2 values) then t
            "hflip": u[5] < self.hflip,
            "vflip": u[6] < self.vflip,
            "brightness": lerp(*self.brightness, u[7]),  # type: ignore[call-arg]  # mypy: *brightness (2 values) then t
        }

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """As albumentations applies any transform, then hand the drawn brightness on beside the image."""
        return {**super().apply_with_params(params, *args, **kwargs), "brightness": float(params["brightness"])}

    def matrix(self, shape: tuple[int, int], out: tuple[int, int], angle: float, shift, zoom, hflip: bool, vflip: bool) -> np.ndarray:
        """The 3x3 matrix taking frame pixels to output pixels: affine, then flips, crop and resize.

        Conventions are albumentations' and OpenCV's: pixel centres at integers, the affine
        about the frame centre ((w-1)/2, (h-1)/2) with the shift truncated to whole pixels, and
        resize mapping x to (x + 0.5) * out / in - 0.5. Written out rather than as a product of
        six matrices: it is computed for every image.
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
        top, left, ch, cw = crop_box(shape, self.crop_fraction)
        sx, sy = out[1] / cw, out[0] / ch
        fx, ox = (-1, w - 1) if hflip else (1, 0)
        fy, oy = (-1, h - 1) if vflip else (1, 0)
        kx, bx = sx * fx, sx * (ox - left + 0.5) - 0.5
        ky, by = sy * fy, sy * (oy - top + 0.5) - 0.5
        # The axes' map after the affine, multiplied out by hand (plain floats are faster than numpy here).
        return np.array([[kx * a00, kx * a01, kx * a02 + bx], [ky * a10, ky * a11, ky * a12 + by], [0.0, 0.0, 1.0]])

    def apply(self, img: np.ndarray, angle=0.0, shift=(0.0, 0.0), zoom=(1.0, 1.0), hflip=False, vflip=False, **params: Any) -> np.ndarray:
        """The warp with the given parameters: uint8 (size, size, 3)."""
        _, _, ch, cw = crop_box(img.shape[:2], self.crop_fraction)
        # Linear interpolation aliases when it shrinks: then warp at crop size and shrink by area.
        shrink = self.size < min(ch, cw)
        out = (ch, cw) if shrink else (self.size, self.size)
        m = self.matrix(img.shape[:2], out, angle, shift, zoom, hflip, vflip)
        # OpenCV's bilinear warp is about twice as fast on 4 channels as on 3. The frame and the
        # warp are written into arrays kept from the last call: a fresh array this large costs
        # page faults that add up to about half the time of a JPEG decode. (So one transform
        # object must not be called from two threads at once; DataLoader workers are processes.)
        rgbx = cv2.cvtColor(img, cv2.COLOR_RGB2RGBA, dst=self._buffer("frame", (*img.shape[:2], 4)))
        warped = cv2.warpAffine(rgbx, m[:2], out[::-1], dst=self._buffer("warped", (*out, 4)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        if shrink:
            warped = cv2.resize(warped, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(warped, cv2.COLOR_RGBA2RGB)  # a new (H, W, 3) array, 60x faster than numpy's [..., :3] copy

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 scratch array of ``shape``, the same one on every call with that shape."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape:
            buf = self._scratch[name] = np.empty(shape, np.uint8)
        return buf

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "crop_fraction", "rotate", "shift", "zoom", "hflip", "vflip", "brightness")


class ToTensorCHW(A.ImageOnlyTransform):
    """uint8 (H, W, C) -> a contiguous uint8 tensor (C, H, W); the DataLoader's collate then copies
    whole blocks (ToTensorV2's permuted view made collate copy pixel by pixel, 10x slower)."""

    def __init__(self, p: float = 1.0):
        super().__init__(p=p)

    def apply(self, img: np.ndarray, **params: Any) -> torch.Tensor:
        planes = cv2.split(img) if img.ndim == 3 else [img]
        return torch.from_numpy(np.stack(planes))


def extra_transforms(specs: Sequence[Any] = ()) -> list[A.BasicTransform]:
    """Albumentations transforms from the config's ``data.augment.extra`` (``_target_`` entries) or as objects.

    A wrong class, a bad value and a misspelt argument (which albumentations itself only warns
    about, running with its defaults) all end in one sentence naming the entry.
    """
    out = []
    for spec in specs:
        if isinstance(spec, A.BasicTransform):
            out.append(spec)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                t = hydra.utils.instantiate(spec)
            except Exception as e:  # a wrong class name or argument, as Hydra reports it
                lines = [line.strip() for line in str(e.__cause__ or e).strip().splitlines() if line.strip()]
                reason = "; ".join(lines[:3])[:300]
                raise GzooError(f"data.augment.extra: {spec} cannot be made ({reason}).") from None
        ignored = [str(w.message) for w in caught if "not valid" in str(w.message)]
        if ignored:
            raise GzooError(f"data.augment.extra: {spec}: {ignored[0].strip()}")
        if not isinstance(t, (A.BasicTransform, A.BaseCompose)):
            raise GzooError(f"data.augment.extra: {spec} is not an albumentations transform.")
        out.append(t)
    return out


def train_transform(image_size: int, crop_fraction: float = 0.5, extra: Sequence[Any] = (), **augment: Any) -> A.Compose:
    """The recipe's augmentation (:class:`GalaxyWarp`, whose arguments ``augment`` holds: rotate, shift,
    zoom, hflip, vflip, brightness), then the ``extra`` albumentations transforms; uint8 out."""
    warp = GalaxyWarp(image_size, crop_fraction, **augment)
    return A.Compose([warp, *extra_transforms(extra), ToTensorCHW()], strict=False)


def eval_transform(image_size: int, crop_fraction: float = 0.5) -> A.Compose:
    """Deterministic: central crop, resize by area; uint8 out."""
    return A.Compose([CentralCropResize(image_size, crop_fraction), ToTensorCHW()], strict=False)


def reseed(pipeline: A.Compose, seed: int) -> None:
    """Make the pipeline's next draws depend on ``seed`` alone (one generator pair shared by its transforms)."""
    pipeline.set_random_state(np.random.Generator(np.random.PCG64(seed)), random.Random(seed))
