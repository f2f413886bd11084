"""The recipe's augmentation on the model's device (``data.augment_on=device``).

The CPU pipeline (:class:`gzoo.transforms.GalaxyWarp`) decodes, warps and resizes every image in
a loader worker. With ``augment_on=device`` the worker only decodes (or reads the crop cache) and
draws the warp's parameters, with the very same random draws as GalaxyWarp
(:class:`GalaxyWarpParams` is a GalaxyWarp that does not warp), and the item carries:

    "image"       the whole frame, uint8 (H, W, 3), as decoded (the warp reads outside the central
                  crop: with the recipe's zoom, shift and rotation it reaches -45 .. 463 px of a
                  424 px frame, reflected at the edges, so the frame travels whole)
    "warp"        float32 (2, 3): the affine map from output coordinates to frame coordinates, both
                  normalised to [-1, 1] (torch.nn.functional.affine_grid's theta; see :func:`warp_theta`)
    "brightness"  the drawn factor, applied with the normalisation by GalaxyNet as before

Then :func:`warp_on_device`, called by the LightningModule once the batch is on the device,
warps the whole batch with one ``affine_grid``/``grid_sample`` (bilinear, edges reflected as
OpenCV's BORDER_REFLECT_101 reflects them), shrinks by area when the output is smaller than
the crop (as GalaxyWarp does) and gives uint8 (B, 3, S, S), which GalaxyNet normalises as it
normalises the CPU pipeline's batches. The parameters, and so the randomness rules (draws from
(seed, epoch, index), exact resume), are the CPU pipeline's; the pixels agree with it within
interpolation (OpenCV interpolates in 1/32 pixel steps, grid_sample in float).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gzoo.errors import GzooError
from gzoo.transforms import GalaxyWarp, check_fraction, crop_box

#: Where the recipe's augmentation runs: in the loader's workers or on the model's device.
AUGMENT_ON = ("cpu", "device")


def check_augment_on(augment_on: str) -> str:
    if augment_on not in AUGMENT_ON:
        raise GzooError(f"data.augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}.")
    return augment_on


def warp_theta(matrix: np.ndarray, frame: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """GalaxyWarp's 3x3 ``matrix`` (frame pixels -> pixels of an ``out`` grid) as affine_grid's theta.

    theta maps output coordinates normalised over the pixels' edges (affine_grid with
    align_corners=False: u = (2x + 1) / out - 1, so the same theta serves any output size, as the
    resize convention (x + 0.5) * out / in - 0.5 is that normalisation) to frame coordinates
    normalised over the pixels' centres (grid_sample with align_corners=True: v = 2x / (W - 1) - 1,
    whose reflection is about the edge pixels' centres, as OpenCV's BORDER_REFLECT_101).
    """
    (h, w), (oh, ow) = frame, out
    to_out = np.array([[ow / 2, 0.0, (ow - 1) / 2], [0.0, oh / 2, (oh - 1) / 2], [0.0, 0.0, 1.0]])  # normalised -> out px
    to_norm = np.array([[2 / max(w - 1, 1), 0.0, -1.0], [0.0, 2 / max(h - 1, 1), -1.0], [0.0, 0.0, 1.0]])  # frame px -> normalised
    return (to_norm @ np.linalg.inv(matrix) @ to_out)[:2].astype(np.float32)


class GalaxyWarpParams:
    """GalaxyWarp's random draws without its warp: the frame goes on whole, with the warp's theta.

    The training pipeline of ``augment_on=device``, called as a pipeline is (``tf(image=frame)``,
    reseeded by :func:`gzoo.transforms.reseed`). It holds a :class:`GalaxyWarp` with the same
    arguments and draws as the CPU pipeline draws (Compose's one draw for its p, then GalaxyWarp's
    ``get_params``: the same parameters from the same seed, which the tests check) and its matrix. Not an albumentations Compose:
    the Compose's per-call checks cost more than everything else a cached item needs. The item's
    "image" is the frame as a uint8 (H, W, 3) tensor (no copy; the DataLoader's collate copies it
    into the batch), "warp" the theta of :func:`warp_theta` and "brightness" the factor. Every frame
    must have the same size, as they are batched whole.
    """

    def __init__(self, size: int, crop_fraction: float = 0.5, **augment: Any):
        self.warp = GalaxyWarp(size, crop_fraction, **augment)
        self._frame: tuple[int, ...] | None = None  # the first frame's shape seen by this process

    def set_random_state(self, random_generator: np.random.Generator, py_random) -> None:
        self.warp.set_random_state(random_generator, py_random)

    def __call__(self, image: np.ndarray) -> dict[str, Any]:
        if self._frame is None:
            self._frame = image.shape
        elif image.shape != self._frame:
            raise GzooError(
                f"data.augment_on=device batches whole frames, which must all have one size, but images of "
                f"{self._frame[1]}x{self._frame[0]} and {image.shape[1]}x{image.shape[0]} px were found; use data.augment_on=cpu."
            )
        self.warp.py_random.random()  # the one draw albumentations' Compose makes first (p), so the same parameters follow
        p, size, shape = self.warp.get_params(), self.warp.size, image.shape[:2]
        m = self.warp.matrix(shape, (size, size), p["angle"], p["shift"], p["zoom"], p["hflip"], p["vflip"])
        frame = torch.from_numpy(image if image.flags.writeable else image.copy())  # a read-only frame is copied
        return {"image": frame, "warp": torch.from_numpy(warp_theta(m, shape, (size, size))), "brightness": float(p["brightness"])}


def device_train_transform(image_size: int, crop_fraction: float = 0.5, extra: Sequence[Any] = (), **augment: Any) -> GalaxyWarpParams:
    """The training pipeline of ``augment_on=device``: decode only, draw the warp (see GalaxyWarpParams)."""
    if extra:
        raise GzooError(
            "data.augment.extra runs albumentations transforms on the CPU after the warp, which data.augment_on=device "
            "moves to the device; use data.augment_on=cpu with extra transforms, or data.augment.extra=[]."
        )
    return GalaxyWarpParams(image_size, crop_fraction, **augment)


def warp_batch(frames: torch.Tensor, theta: torch.Tensor, size: int, crop_fraction: float = 0.5) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) and thetas (B, 2, 3) -> the warped crops, uint8 (B, 3, size, size), on frames' device.

    One grid_sample for the batch. As GalaxyWarp does, an output smaller than the crop is
    warped at the crop's size and then shrunk by area (bilinear sampling alone would alias).
    """
    check_fraction(crop_fraction)
    b, h, w, _ = frames.shape
    _, _, ch, cw = crop_box((h, w), crop_fraction)
    shrink = size < min(ch, cw)
    out = (ch, cw) if shrink else (size, size)
    x = frames.permute(0, 3, 1, 2).float()  # a view (channels-last strides), converted once
    grid = F.affine_grid(theta.to(x.device, torch.float32), [b, 3, *out], align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    if shrink:
        y = F.interpolate(y, size=(size, size), mode="area")
    return y.round_().clamp_(0, 255).to(torch.uint8)


def warp_on_device(batch: Any, size: int, crop_fraction: float) -> Any:
    """A batch with "warp" (data.augment_on=device) with its frames warped (see warp_batch); any other as it is."""
    if not isinstance(batch, dict) or "warp" not in batch:
        return batch
    batch = dict(batch)
    batch["image"] = warp_batch(batch["image"], batch.pop("warp"), size, crop_fraction)
    return batch
