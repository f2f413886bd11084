"""Reading the Kaggle layout: catalogue validation, the split, the dataset and the data module.

Layout (as Kaggle ships it)::

    <root>/training_solutions_rev1.csv     GalaxyID,Class1.1,...,Class11.6
    <root>/images_training_rev1/<GalaxyID>.jpg

Everything a user can get wrong is checked in :meth:`GalaxyZooDataModule.setup`
before any training starts, and ends in a :class:`GzooError` with one sentence
that names the file, row or option.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import simplejpeg
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from gzoo import schema
from gzoo.errors import GzooError
from gzoo.transforms import eval_transform, train_transform

MISSING_LABEL_MODES = ("error", "mask")
BAD_IMAGE_MODES = ("error", "skip")


# ----------------------------------------------------------------------------- catalogue


def read_catalog(csv_path: str | Path, missing_labels: str = "error") -> pd.DataFrame:
    """Read and validate a Kaggle labels CSV; returns it indexed 0..N-1 with NaN for unknown cells."""
    csv_path = Path(csv_path)
    if missing_labels not in MISSING_LABEL_MODES:
        raise GzooError(f"data.missing_labels must be one of {MISSING_LABEL_MODES}, got {missing_labels!r}.")
    if not csv_path.is_file():
        raise GzooError(f"labels file {csv_path} not found; set data.root (or $GZOO_DATA) to the folder holding it.")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise GzooError(f"labels file {csv_path} is not a readable CSV ({e}).") from None

    header = list(df.columns)
    if header != schema.HEADER:
        wrong = next(
            (f"column {i + 1} is {got!r}, expected {want!r}" for i, (got, want) in enumerate(zip(header, schema.HEADER)) if got != want),
            f"it has {len(header)} columns, expected {len(schema.HEADER)}",
        )
        raise GzooError(f"labels file {csv_path} has the wrong header: {wrong} (expected GalaxyID then Class1.1 ... Class11.6 in Kaggle order).")
    if len(df) == 0:
        raise GzooError(f"labels file {csv_path} has no rows.")

    # GalaxyID: unique integers.
    ids = pd.to_numeric(df[schema.ID_COLUMN], errors="coerce")
    bad = ids.isna() | (ids != ids.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise GzooError(f"labels file {csv_path}, row {row + 2}: GalaxyID {df[schema.ID_COLUMN].iloc[row]!r} is not an integer.")
    ids = ids.astype(np.int64)
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise GzooError(f"labels file {csv_path}, row {row + 2}: GalaxyID {ids.iloc[row]} appears more than once.")

    # Values: empty = unknown; otherwise finite numbers in [0, 1].
    raw = df[schema.COLUMNS]
    empty = raw.apply(lambda c: c.str.strip() == "").to_numpy()
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    not_number = np.isnan(values) & ~empty
    if not_number.any():
        r, c = np.argwhere(not_number)[0]
        raise GzooError(f"labels file {csv_path}, row {r + 2}, column {schema.COLUMNS[c]}: {raw.iat[r, c]!r} is not a number.")
    bad_value = ~empty & (~np.isfinite(values) | (values < 0) | (values > 1))
    if bad_value.any():
        r, c = np.argwhere(bad_value)[0]
        raise GzooError(f"labels file {csv_path}, row {r + 2}, column {schema.COLUMNS[c]}: value {raw.iat[r, c]} is outside [0, 1].")
    if empty.any() and missing_labels == "error":
        r, c = np.argwhere(empty)[0]
        raise GzooError(
            f"labels file {csv_path}, row {r + 2}, column {schema.COLUMNS[c]} is empty ({int(empty.sum())} empty cells in all); "
            "pass data.missing_labels=mask to leave unknown cells out of the loss and metrics."
        )
    values[empty] = np.nan
    out = pd.DataFrame(values, columns=schema.COLUMNS)
    out.insert(0, schema.ID_COLUMN, ids.to_numpy())
    return out


def _check_one_image(path: Path) -> str | None:
    """None if the JPEG decodes; otherwise the reason it does not."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (im.width // 8, im.height // 8))  # decode at 1/8 scale: fast, still reads every byte
            im.load()
        return None
    except Exception as e:  # PIL raises many kinds for bad files
        return str(e) or type(e).__name__


def check_images(
    ids: np.ndarray, images_dir: Path, progress: bool = True, on_bad_image: str = "error"
) -> tuple[dict[int, Path], list[tuple[Path, str]]]:
    """Check that every GalaxyID has a JPEG that decodes; returns {id: path} and the unreadable files.

    A missing image is always an error (a wrong folder should not silently skip everything).
    An unreadable one (truncated, corrupt, empty, not an image) is an error naming it, or,
    with ``on_bad_image="skip"``, left out and returned with its reason.
    """
    if on_bad_image not in BAD_IMAGE_MODES:
        raise GzooError(f"data.on_bad_image must be one of {BAD_IMAGE_MODES}, got {on_bad_image!r}.")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise GzooError(f"image folder {images_dir} not found; set data.root and data.images_dir to the folder of <GalaxyID>.jpg files.")
    paths = {int(i): images_dir / f"{int(i)}.jpg" for i in ids}
    missing = [i for i, p in paths.items() if not p.is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise GzooError(f"{len(missing)} galaxies have no image in {images_dir}: GalaxyID {shown}.")
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
        reasons = list(tqdm(pool.map(_check_one_image, paths.values()), total=len(paths), desc="checking images", disable=not progress, leave=False))
    bad = [(p, r) for p, r in zip(paths.values(), reasons) if r is not None]
    if bad and on_bad_image == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise GzooError(f"image {bad[0][0]} cannot be read ({bad[0][1]}){more}; replace or remove it, or pass data.on_bad_image=skip to leave such files out.")
    good = {i: p for (i, p), r in zip(paths.items(), reasons) if r is None}
    return good, bad


# ----------------------------------------------------------------------------- split


def _unit_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per GalaxyID that depends only on the id and the seed (splitmix64)."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_ids(ids: np.ndarray, val_fraction: float, test_fraction: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Split GalaxyIDs into disjoint train/val/test parts that together cover all of them.

    Each id gets a fixed pseudo-random number from (id, seed); ids are ranked by it and
    the first ``test_fraction`` go to test, the next ``val_fraction`` to validation.
    A galaxy's place therefore depends only on the seed and the fractions, not on row
    order, batch size or any other setting.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GzooError(f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must be in [0, 1) and sum to less than 1.")
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(_unit_hash(ids, seed), kind="stable")
    n_test = round(len(ids) * test_fraction)
    n_val = round(len(ids) * val_fraction)
    return {
        "test": np.sort(ids[order[:n_test]]),
        "val": np.sort(ids[order[n_test : n_test + n_val]]),
        "train": np.sort(ids[order[n_test + n_val :]]),
    }


# ----------------------------------------------------------------------------- dataset


def load_rgb(path: str | Path) -> np.ndarray:
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


def seed_of(*keys: int) -> int:
    """A 32-bit seed that depends only on ``keys`` (e.g. seed, epoch, index)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


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
    """Images and their 37 fractions. Unknown cells are 0 in ``target`` and 0 in ``mask``.

    Indexed by ``i`` or, for training, by ``(i, epoch)`` from :class:`EpochSampler`, in which
    case the augmentation's random draws come from (seed, epoch, i).
    """

    def __init__(self, paths: list[Path], labels: np.ndarray | None, ids: np.ndarray, transform, seed: int = 0):
        self.paths, self.ids, self.transform, self.seed = list(paths), np.asarray(ids), transform, seed
        if labels is not None:
            labels = np.asarray(labels, dtype=np.float32)
            self.mask = (~np.isnan(labels)).astype(np.float32)
            self.labels = np.nan_to_num(labels, nan=0.0)
        else:
            self.labels = self.mask = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            i, epoch = key
            self.transform.reseed(seed_of(self.seed, epoch, i))
        else:
            i = key
        try:
            image = load_rgb(self.paths[i])
        except Exception as e:
            raise GzooError(f"image {self.paths[i]} cannot be read ({e}).") from None
        # The transform's dict as it comes: "image", and "brightness" from the training pipeline (applied on the device).
        item = {**self.transform(image=image), "id": int(self.ids[i])}
        if self.labels is not None:
            item["target"] = torch.from_numpy(self.labels[i])
            item["mask"] = torch.from_numpy(self.mask[i])
        return item


class GalaxyZooDataModule(L.LightningDataModule):
    """GZ2 in the Kaggle layout, split with a fixed seed, with the recipe's augmentation."""

    def __init__(
        self,
        root: str,
        labels_csv: str = "training_solutions_rev1.csv",
        images_dir: str = "images_training_rev1",
        missing_labels: str = "error",
        val_fraction: float = 0.15,
        test_fraction: float = 0.0,
        split_seed: int = 1234,
        limit: int | None = None,
        batch_size: int = 70,
        num_workers: int = 2,
        image_size: int = 224,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        crop_fraction: float = 0.5,
        augment: dict | None = None,
        persistent_workers: bool = True,
        on_bad_image: str = "error",
        seed: int = 0,
        progress: bool = True,
    ):
        super().__init__()
        self.root = Path(root)
        self.labels_path = self.root / labels_csv
        self.images_path = self.root / images_dir
        self.missing_labels, self.limit, self.progress = missing_labels, limit, progress
        self.on_bad_image, self.seed = on_bad_image, seed
        self.skipped: list[tuple[Path, str]] = []  # unreadable images left out (on_bad_image="skip")
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.batch_size, self.num_workers, self.persistent_workers = batch_size, num_workers, persistent_workers
        # uint8 out: GalaxyZooModule normalises on the device (a quarter of the bytes to move).
        self.train_tf = train_transform(image_size, mean, std, crop_fraction, **(augment or {}), normalise=False)
        self.eval_tf = eval_transform(image_size, mean, std, crop_fraction, normalise=False)
        self.catalog: pd.DataFrame | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.datasets: dict[str, GalaxyZooDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Validate the catalogue and the images, then split. Safe to call more than once."""
        if self.catalog is not None:
            return
        if self.limit is not None and self.limit < 1:
            raise GzooError(f"data.limit must be a positive number of galaxies or null, got {self.limit}.")
        catalog = read_catalog(self.labels_path, self.missing_labels)
        if self.limit is not None:
            catalog = catalog.iloc[: self.limit].reset_index(drop=True)
        ids = catalog[schema.ID_COLUMN].to_numpy()
        paths, self.skipped = check_images(ids, self.images_path, self.progress, self.on_bad_image)
        if self.skipped:
            catalog = catalog[catalog[schema.ID_COLUMN].isin(paths.keys())].reset_index(drop=True)
            ids = catalog[schema.ID_COLUMN].to_numpy()
        self.splits = split_ids(ids, self.val_fraction, self.test_fraction, self.split_seed)
        if len(self.splits["train"]) == 0 or (self.val_fraction > 0 and len(self.splits["val"]) == 0):
            raise GzooError(f"{len(ids)} galaxies are too few to split with data.val_fraction={self.val_fraction}; use more data or a larger data.limit.")
        by_id = catalog.set_index(schema.ID_COLUMN)
        for part, part_ids in self.splits.items():
            tf = self.train_tf if part == "train" else self.eval_tf
            labels = by_id.loc[part_ids, schema.COLUMNS].to_numpy()
            self.datasets[part] = GalaxyZooDataset([paths[i] for i in part_ids], labels, part_ids, tf, self.seed)
        self.catalog = catalog

    def train_mean(self) -> np.ndarray:
        """Each column's mean over the training part (over known cells): the predict-the-mean baseline."""
        labels = self.catalog.set_index(schema.ID_COLUMN).loc[self.splits["train"], schema.COLUMNS]
        return labels.mean(skipna=True).fillna(0.0).to_numpy()

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        # Under DDP each process evaluates its own share of the galaxies, each galaxy exactly once:
        # Lightning's own DistributedSampler would repeat some to even out the shares, and they
        # would count twice in val/rmse. Lightning keeps a DistributedSampler it is given.
        sampler = None
        if shuffle:  # start at the epoch Lightning will set (a resumed run's first epoch is not 0)
            epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0
            sampler = EpochSampler(len(self.datasets[part]), self.seed, epoch)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(self.datasets[part], shuffle=False)
        return DataLoader(
            self.datasets[part],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
