"""``phase.cache_features=true``: a frozen body's pooled features, computed once, and the tail trained on them.

In the finetune phase the body is frozen and in eval mode, so its output for a given input never
changes: recomputing it for every image in every epoch is wasted work. Here each training galaxy's
features are computed once for ``views`` exact views of its central crop (right-angle rotations and
flips: no interpolation, so they are the same pixels an augmented epoch could show), each validation
galaxy's for the plain evaluation view (so val/rmse means what it means in an uncached run), and the
tail then trains for many cheap epochs, drawing one view per galaxy per epoch from (seed, epoch, index)
as the image pipeline draws its augmentation. What the cache leaves out: the continuous rotation,
shift, zoom and brightness jitter of the image pipeline.

The module is the same GalaxyZooModule with its body inside, so the checkpoint is an ordinary full
one that fulltune, predict, evaluate and export use as they are. The cache is a file in the run
folder whose name is a hash of everything it depends on (the images, the body's weights, the views,
the size and crop), so a change of any of them builds a new one; features are stored as float16.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gzoo.data import EpochSampler, GalaxyZooDataModule, labels_and_mask, make_loader, seed_of
from gzoo.data.datamodule import next_epoch
from gzoo.device import PRECISIONS, autocast
from gzoo.errors import GzooError
from gzoo.fits import FitsCutout, is_fits
from gzoo.inference import dihedral_views
from gzoo.io import atomic_torch_save, remove_stale_temporaries
from gzoo.log import say
from gzoo.net import GalaxyNet

#: The order in which the cache takes the right-angle views of gzoo.inference.dihedral_views
#: (view v: v % 4 quarter turns of the image, or of its mirror image for v >= 4): the most different ones first.
VIEW_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)


def cache_key(net: GalaxyNet, dm: GalaxyZooDataModule, views: int) -> str:
    """A hash of what the features depend on: the body's weights, the view, the views and every image file."""
    h = hashlib.sha256()
    h.update(json.dumps([net.timm_name, net.image_size, net.crop_fraction, net.mean, net.std, views]).encode())
    if any(isinstance(p, FitsCutout) or is_fits(p) for p in dm.paths.values()):  # how FITS cutouts are made (data.fits)
        h.update(json.dumps(dataclasses.asdict(dm.fits), sort_keys=True).encode())
    for name, tensor in net.body.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for part in ("train", "val"):
        for i in dm.ids(part):
            stat = dm.paths[i].stat()
            h.update(f"{part},{i},{dm.paths[i]},{stat.st_size},{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def compute_features(net: GalaxyNet, loader: DataLoader, views: int, precision: str = "32-true", desc: str = "features") -> torch.Tensor:
    """(N, views, F) float16 pooled features of the loader's galaxies (items with one view each, as
    GalaxyZooDataset gives with ``views=(0.0,)``), in the loader's order, with a progress bar."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    rows = []
    with tqdm(total=len(loader.dataset) * views, desc=desc, unit="view") as bar:  # type: ignore[arg-type]  # torch types Dataset without __len__; gzoo's have one
        for batch in loader:
            x = dihedral_views(batch["image"][:, 0].to(device, non_blocking=True), VIEW_ORDER[:views])
            with autocast(device, precision):  # a view at a time: on a CPU one batch of all views runs 2x slower per image
                f = torch.stack([net.features(x[:, v]) for v in range(views)], dim=1)
            rows.append(f.half().cpu())
            bar.update(x.shape[0] * views)
    net.train(was_training)
    return torch.cat(rows)


class FeatureDataset(Dataset):
    """Cached features with labels. Indexed by ``(i, epoch)`` (EpochSampler) it draws one of the
    galaxy's views from (seed, epoch, i); indexed by ``i`` it gives view 0 (the plain view)."""

    def __init__(self, features: torch.Tensor, labels: np.ndarray, ids: np.ndarray, seed: int = 0):
        self.features, self.seed = features, seed
        labels, mask = labels_and_mask(labels)
        self.labels, self.mask = torch.from_numpy(labels), torch.from_numpy(mask)
        self.ids = [int(i) if isinstance(i, (int, np.integer)) else i for i in ids]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            i, epoch = key
            view = seed_of(self.seed, epoch, i) % self.features.shape[1]
        else:
            i, view = key, 0
        return {"id": self.ids[i], "features": self.features[i, view].float(), "target": self.labels[i], "mask": self.mask[i]}


class FeatureDataModule(L.LightningDataModule):
    """The cached features of a data module's train and val parts, batched as the image data module batches them."""

    def __init__(self, dm: GalaxyZooDataModule, train: torch.Tensor, val: torch.Tensor):
        super().__init__()
        self.dm = dm
        self.train_set = FeatureDataset(train, dm.labels("train"), dm.ids("train"), dm.seed)
        self.val_set = FeatureDataset(val, dm.labels("val"), dm.ids("val"), dm.seed)

    def train_dataloader(self) -> DataLoader:
        epoch = next_epoch(self.trainer) if self.trainer is not None else 0  # a resumed run's first epoch is not 0
        sampler = EpochSampler(len(self.train_set), self.dm.seed, epoch)
        return make_loader(self.train_set, self.dm.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.dm.batch_size)


def feature_datamodule(net: GalaxyNet, dm: GalaxyZooDataModule, views: int, folder: Path, precision: str = "32-true") -> FeatureDataModule:
    """The features of ``dm``'s train (``views`` views) and val (plain view) galaxies through ``net``'s
    body, from ``folder``'s cache when it holds them for exactly these inputs, else computed and cached."""
    if not 1 <= views <= len(VIEW_ORDER):
        raise GzooError(f"phase.cache_views must be between 1 and {len(VIEW_ORDER)} (the exact right-angle views), got {views}.")
    precision = precision if precision in PRECISIONS else "32-true"
    key = cache_key(net, dm, views)
    path = folder / f"features-{key}.pt"
    n_train, n_val = len(dm.ids("train")), len(dm.ids("val"))
    if path.is_file():
        cached = read_cache(path, n_train, n_val, views)
        if cached is not None:
            say(f"features of the frozen body from {path}")
            return FeatureDataModule(dm, cached["train"], cached["val"])
    say(f"caching the frozen body's features: {n_train} training galaxies x {views} views + {n_val} validation galaxies, once")
    loader = lambda part: dm.loader(part, views=(0.0,), num_workers=dm.num_workers)  # the evaluation view, one per galaxy
    with torch.random.fork_rng(devices=[]):  # the loaders draw their seeds from torch's generator: the run's own draws stay as without a cache
        train = compute_features(net, loader("train"), views, precision, "features (train)")
        val = compute_features(net, loader("val"), 1, precision, "features (val)") if n_val else torch.zeros(0, 1, net.body.num_features).half()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("features-*.pt"):  # made for other images, weights or views
        old.unlink()
    for old in folder.glob(".features-*.pt.*.tmp"):  # the temporary files of builds that were killed
        remove_stale_temporaries(old.parent / old.name[1:].rsplit(".", 2)[0])
    cache = {"train": train, "val": val, "ids": {"train": dm.ids("train").tolist(), "val": dm.ids("val").tolist()}, "views": views}
    atomic_torch_save(cache, path, "the feature cache", "free space there or set paths.output_root to another disk")
    size = path.stat().st_size / 2**20
    say(f"cached {size:.1f} MB of features in {path}")
    return FeatureDataModule(dm, train, val)


def read_cache(path: Path, n_train: int, n_val: int, views: int) -> dict | None:
    """The feature cache in ``path`` when it reads whole and holds features of the expected shape; else None,
    said in one line (a file cut short by a kill or a full disk, or damaged), so that it is computed again."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        train, val = cached["train"], cached["val"]
        if tuple(train.shape[:2]) != (n_train, views) or val.shape[0] != n_val or train.shape[2:] != val.shape[2:]:
            raise ValueError(f"it holds {tuple(train.shape)} and {tuple(val.shape)} features, not {n_train} x {views} and {n_val}")
    except Exception as e:  # a truncated zip, a damaged pickle, another content: torch raises many kinds
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        say(f"the feature cache {path} cannot be used ({reason[:200]}); computing it again")
        return None
    return cached
