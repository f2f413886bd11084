"""The dataset of galaxy images, its epoch-seeded sampler, and labels with their mask.

Every part that reads galaxies (training, validation, test, prediction, evaluation, the
benchmark) gets its batches from :class:`GalaxyZooDataset` through gzoo.data.loader.make_loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from gzoo.data.crop_cache import CachedImages
from gzoo.errors import GzooError
from gzoo.fits import FitsCutout, FitsOptions
from gzoo.images import FitsStretch, ImageItem, load_image
from gzoo.transforms import reseed, rotate


def seed_of(*keys: int) -> int:
    """A 32-bit seed that depends only on ``keys`` (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def labels_and_mask(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as float32 with their unknown cells (NaN) set to 0, and the mask: 1.0 where a label is known, 0.0 where not.

    Every dataset of labels (images here, cached features in gzoo.feature_cache) prepares them this way."""
    labels = np.asarray(labels, dtype=np.float32)
    return np.nan_to_num(labels, nan=0.0), (~np.isnan(labels)).astype(np.float32)


class EpochSampler(Sampler):
    """Shuffles by a permutation that depends only on (seed, epoch) and yields ``(index, epoch)``.

    With the epoch in every key, the dataset draws each image's augmentation from
    (seed, epoch, index): the same in any worker process, and the same in a run resumed
    from a checkpoint as in one that never stopped. Lightning calls ``set_epoch`` before
    each epoch; where nobody does (inside a DDP wrapper), each pass moves to the next epoch.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed_of(self.seed, epoch)))
        return iter([(int(i), epoch) for i in order])


class GalaxyZooDataset(Dataset):
    """Galaxy images (paths, decoded RGB uint8 arrays, or a crop cache's rows) with their labels, through a transform.

    An item is a dict: "image" (uint8 (3, S, S), or (V, 3, S, S) with ``views``), "id", and with
    labels "target" and "mask" (unknown cells, NaN in ``labels``, are 0 in both); the training
    pipeline adds "brightness". Indexed by ``i`` or, for training, by ``(i, epoch)`` from
    :class:`EpochSampler`, in which case the augmentation's random draws come from (seed, epoch, i).

    ``views``: angles (degrees) by which the whole image is rotated before the transform, one view
    each (test-time augmentation). ``on_bad_image="skip"``: an unreadable image gives a zero image and
    its reason under "error" ("" for a good one) instead of stopping with an error naming it.
    ``fits``: how FITS cutouts (files, or gzoo.fits.FitsCutout items) become images (gzoo.fits.FitsOptions; the
    GZ2 preset when None).
    """

    def __init__(
        self,
        images: Sequence[ImageItem | np.ndarray],
        labels: np.ndarray | None,
        ids: Sequence[Any] | np.ndarray,
        transform,
        seed: int = 0,
        views: Sequence[float] = (),
        on_bad_image: str = "error",
        fits: FitsOptions | FitsStretch | None = None,
    ):
        self.images: Sequence[ImageItem | np.ndarray]
        self.labels: np.ndarray | None
        self.mask: np.ndarray | None
        self.images, self.transform, self.seed, self.fits = list(images), transform, seed, fits
        if isinstance(images, CachedImages):  # data.crop_cache: rows read from the memory-mapped file as they are asked for
            self.images = images
        self.ids = [i.item() if isinstance(i, np.generic) else i for i in ids]  # plain ints (or names) for collate
        self.views, self.skip_bad = tuple(views), on_bad_image == "skip"
        self.labels, self.mask = labels_and_mask(labels) if labels is not None else (None, None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            i, epoch = key
            reseed(self.transform, seed_of(self.seed, epoch, i))
        else:
            i = key
        item: dict[str, Any] = {"id": self.ids[i]}
        try:  # the decode and the transform: whatever fails for one image (a decoder's, OpenCV's error) is that image's
            source = self.images[i]
            image = source if isinstance(source, np.ndarray) else load_image(source, self.fits)
            if not self.views:
                # The transform's dict as it comes: "image", and "brightness" from the training pipeline.
                item.update(self.transform(image=image))
            else:
                item["image"] = torch.stack([self.transform(image=rotate(image, a))["image"] for a in self.views])
        except GzooError:
            raise  # not the file's fault (astropy missing): the sentence says what to do
        except Exception as e:  # decoders and OpenCV raise many kinds for bad files
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]  # one line (OpenCV ends its message in a newline)
            if not self.skip_bad:
                raise GzooError(f"image {self._name(i)} cannot be read ({reason}).") from None
            item["error"] = reason
            blank = self._blank()
            item.update(blank if not self.views else {"image": torch.stack([blank["image"]] * len(self.views))})
        if self.skip_bad:
            item.setdefault("error", "")
        if self.labels is not None and self.mask is not None:  # set together
            item["target"] = torch.from_numpy(self.labels[i])
            item["mask"] = torch.from_numpy(self.mask[i])
        return item

    def _blank(self) -> dict[str, Any]:
        """The transform's dict for a zero image of its output size, standing in for an unreadable one
        (with the training pipeline's "brightness" too, so the batch's items have the same keys). Made from
        a zero frame of Kaggle's 424 px, which any reasonable crop fraction crops to a few pixels at least."""
        out = self.transform(image=np.zeros((424, 424, 3), np.uint8))
        out["image"] = out["image"].zero_()
        return out

    def _name(self, i: int) -> str:
        """The image's file, or for a decoded array (a crop cache's row) the galaxy's id."""
        image = self.images[i] if not isinstance(self.images, CachedImages) else None
        return str(image) if isinstance(image, (str, Path, FitsCutout)) else f"of galaxy {self.ids[i]!r}"
