"""GalaxyZooDataModule: the labelled galaxies of a run, validated, split, and served as batches.

Layout (as Kaggle ships it)::

    <root>/training_solutions_rev1.csv     GalaxyID,Class1.1,...,Class11.6
    <root>/images_training_rev1/<GalaxyID>.jpg

:meth:`GalaxyZooDataModule.setup` checks everything a user can get wrong before any training
starts. Training, evaluation and the notebooks build the data module from the run's config
(:meth:`from_config`), so they read the same galaxies, split the same way, with the same
images left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from gzoo import schema
from gzoo.data.catalog import check_files, check_images, read_catalog, read_own_catalog
from gzoo.data.crop_cache import CachedImages, cache_folder, open_cache
from gzoo.data.dataset import EpochSampler, GalaxyZooDataset
from gzoo.data.loader import make_loader
from gzoo.data.split import id_array, sort_ids, split_ids
from gzoo.device_augment import check_augment_on, device_train_transform
from gzoo.errors import GzooError
from gzoo.fits import FitsCutout, FitsOptions, as_options, is_fits
from gzoo.options import DataOptions, ModelOptions
from gzoo.transforms import eval_transform, train_transform

#: The parts of a labelled set: the three of the split, and "all" of it.
PARTS = ("train", "val", "test", "all")


def next_epoch(trainer: L.Trainer) -> int:
    """The epoch of the trainer's next training pass: the fit loop's count of finished epochs, or a resumed
    run's checkpoint's while its loops are not yet restored. Lightning builds and starts iterating the train
    loader that early when configure_optimizers asks for trainer.estimated_stepping_batches, and loader
    workers fetch ahead at once, so an EpochSampler started at 0 would serve a resumed run's first epoch
    in epoch 0's order (its set_epoch comes too late)."""
    done = trainer.fit_loop.epoch_progress.current.processed  # type: ignore[attr-defined]  # Lightning types it as the _ReadyCompletedTracker it extends
    loaded = getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}
    saved = loaded.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    return max(done, saved) if isinstance(saved, int) else done


class GalaxyZooDataModule(L.LightningDataModule):
    """GZ2 in the Kaggle layout, split with a fixed seed, with the recipe's augmentation.

    The keyword arguments are the data options (gzoo/options.py, DataOptions: their defaults and what each means),
    plus ``seed`` (the run's seed, for the augmentation and the shuffling) and ``progress``.
    """

    def __init__(
        self,
        root: str | Path,
        labels_csv: str = DataOptions.labels_csv,
        images_dir: str = DataOptions.images_dir,
        missing_labels: str = DataOptions.missing_labels,
        val_fraction: float = DataOptions.val_fraction,
        test_fraction: float = DataOptions.test_fraction,
        split_seed: int = DataOptions.split_seed,
        limit: int | None = DataOptions.limit,
        train_limit: int | None = DataOptions.train_limit,
        batch_size: int = DataOptions.batch_size,
        num_workers: int = DataOptions.num_workers,
        persistent_workers: bool = DataOptions.persistent_workers,
        on_bad_image: str = DataOptions.on_bad_image,
        image_size: int = ModelOptions.image_size,
        crop_fraction: float = DataOptions.crop_fraction,
        augment: dict | None = None,
        augment_on: str = DataOptions.augment_on,
        crop_cache: str | None = DataOptions.crop_cache,
        catalog: str | Path | None = DataOptions.catalog,
        id_column: str = DataOptions.id_column,
        file_column: str = DataOptions.file_column,
        labels: str | list[str] = DataOptions.labels,
        layout: str = DataOptions.layout,
        fits: FitsOptions | dict | None = None,
        seed: int = 0,
        progress: bool = True,
    ):
        super().__init__()
        if layout not in ("kaggle", "catalog"):
            raise GzooError(f"data.layout must be kaggle or catalog, got {layout!r}.")
        if layout == "catalog" and not catalog:
            raise GzooError(
                "data=catalog reads your own catalogue: name it with data.catalog=PATH (a .csv or .parquet file with id_str, file_loc and label columns)."
            )
        self.catalog_path = Path(catalog).expanduser() if catalog else None  # your own catalogue, instead of the Kaggle layout
        self.id_column, self.file_column = id_column, file_column
        self.columns = schema.label_columns(labels)  # the label columns learned: the 37 answers (gz2) or your own
        self.root = self.catalog_path.parent if self.catalog_path else Path(root)
        self.labels_path = self.catalog_path or self.root / labels_csv
        self.images_path = self.root / images_dir
        self.missing_labels, self.limit, self.train_limit, self.progress = missing_labels, limit, train_limit, progress
        self.on_bad_image, self.seed = on_bad_image, seed
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.batch_size, self.num_workers, self.persistent_workers = batch_size, num_workers, persistent_workers
        self.image_size, self.crop_fraction = image_size, crop_fraction
        self.augment_on, self.crop_cache = check_augment_on(augment_on), crop_cache or None
        make_train_tf = device_train_transform if augment_on == "device" else train_transform  # device: the warp runs in GalaxyZooModule
        self.train_tf = make_train_tf(image_size, crop_fraction, **(augment or {}))
        self.eval_tf = eval_transform(image_size, crop_fraction)
        self.fits = as_options(fits)  # how FITS cutouts become images (data.fits; recorded in the checkpoint)
        self.skipped: list[tuple[Any, str]] = []  # unreadable images (files, or FitsCutouts) left out (on_bad_image="skip")
        self.catalog: pd.DataFrame | None = None  # the labels of every galaxy kept, NaN = unknown
        self.paths: dict = {}  # {id: image file, or gzoo.fits.FitsCutout}
        self.cache: CachedImages | None = None  # data.crop_cache: every image of "all", in its order
        self.splits: dict[str, np.ndarray] = {}

    @classmethod
    def from_config(cls, data: DictConfig | dict, seed: int = 0, **overrides: Any) -> GalaxyZooDataModule:
        """From a run config's ``data`` node (``synth``, which says how a synthetic set was made, is not read)."""
        values = cast(dict, OmegaConf.to_container(data, resolve=True)) if isinstance(data, DictConfig) else dict(data)
        values.pop("synth", None)
        return cls(**{**values, **overrides}, seed=seed)

    def setup(self, stage: str | None = None) -> None:
        """Validate the catalogue and the images, then split. Safe to call more than once."""
        if self.catalog is not None:
            return
        if self.limit is not None and self.limit < 1:
            raise GzooError(f"data.limit must be a positive number of galaxies or null, got {self.limit}.")
        if self.catalog_path is not None:
            catalog, files = read_own_catalog(self.catalog_path, self.columns, self.id_column, self.file_column, self.missing_labels, self.fits)
            catalog = catalog.rename(columns={"id": schema.ID_COLUMN})
            if self.limit is not None:
                catalog = catalog.iloc[: self.limit].reset_index(drop=True)
            files = {i: files[i] for i in catalog[schema.ID_COLUMN]}
            self.paths, self.skipped = check_files(files, self.progress, self.on_bad_image, self.fits)
        else:
            wrong = [c for c in self.columns if c not in schema.COLUMN_INDEX]
            if wrong:
                raise GzooError(
                    f"data.labels names {wrong[0]!r}, which is not a Kaggle column; name your own label columns with data.catalog=PATH (data=catalog)."
                )
            catalog = read_catalog(self.labels_path, self.missing_labels)
            if self.limit is not None:
                catalog = catalog.iloc[: self.limit].reset_index(drop=True)
            self.paths, self.skipped = check_images(catalog[schema.ID_COLUMN].to_numpy(), self.images_path, self.progress, self.on_bad_image, self.fits)
        if self.skipped:
            catalog = catalog[catalog[schema.ID_COLUMN].isin(self.paths.keys())].reset_index(drop=True)
        ids = catalog[schema.ID_COLUMN].to_numpy()
        self.splits = split_ids(ids, self.val_fraction, self.test_fraction, self.split_seed, self.train_limit)
        if len(self.splits["train"]) == 0 or (self.val_fraction > 0 and len(self.splits["val"]) == 0):
            raise GzooError(f"{len(ids)} galaxies are too few to split with data.val_fraction={self.val_fraction}; use more data or a larger data.limit.")
        self.splits["all"] = sort_ids(id_array(ids))
        self.catalog = catalog.set_index(schema.ID_COLUMN)
        if self.crop_cache is not None:
            if any(isinstance(p, FitsCutout) or is_fits(p) for p in self.paths.values()):
                raise GzooError(
                    "data.crop_cache keeps decoded JPEG/PNG frames, not FITS composites; make the composites once with "
                    "python -m gzoo.prepare catalog=... out=DIR and train on DIR/catalog.parquet, or set data.crop_cache=null."
                )
            folder = cache_folder(self.crop_cache)  # auto: the user's cache folder, never the data's
            self.cache = open_cache([self.paths[i] for i in self.splits["all"]], folder, self.num_workers, self.progress)

    # ------------------------------------------------------------------------- what each part holds

    def ids(self, part: str) -> np.ndarray:
        """The GalaxyIDs of a part (train, val, test or all), sorted."""
        if part not in PARTS:
            raise GzooError(f"split must be one of {', '.join(PARTS)}, got {part!r}.")
        self.setup()
        return self.splits[part]

    def labels(self, part: str) -> np.ndarray:
        """(N, labels) labels of a part in the order of :meth:`ids`, NaN for unknown cells."""
        return self.catalog.loc[self.ids(part), self.columns].to_numpy(dtype=np.float64)  # type: ignore[union-attr]  # read by setup()

    def train_mean(self) -> np.ndarray:
        """Each column's mean over the training part's known cells: the predict-the-mean baseline (0 if never known)."""
        return self.catalog.loc[self.ids("train"), self.columns].mean(skipna=True).fillna(0.0).to_numpy()  # type: ignore[union-attr]  # read by setup()

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each id stands in the "all" part (the crop cache's order)."""
        where = {i: k for k, i in enumerate(self.splits["all"].tolist())}
        return np.asarray([where[i] for i in ids.tolist()], dtype=np.int64)

    def dataset(self, part: str, views: tuple[float, ...] = (), on_bad_image: str = "error") -> GalaxyZooDataset:
        """The part's galaxies with their labels: the training augmentation for "train", else the evaluation view."""
        ids = self.ids(part)
        tf = self.train_tf if part == "train" and not views else self.eval_tf
        images = [self.paths[i] for i in ids] if self.cache is None else self.cache.subset(self._positions(ids))
        return GalaxyZooDataset(images, self.labels(part), ids, tf, self.seed, views, on_bad_image, self.fits)

    # ------------------------------------------------------------------------- batches

    def loader(self, part: str, views: tuple[float, ...] = (), batch_size: int | None = None, num_workers: int | None = None) -> DataLoader:
        """Batches of a part: "train" shuffled by epoch (see EpochSampler), the others in order, each galaxy once.

        Under DDP each process evaluates its own share of the galaxies, each galaxy exactly once:
        Lightning's own DistributedSampler would repeat some to even out the shares, and they would
        count twice in val/rmse. Lightning keeps a DistributedSampler it is given.
        """
        dataset = self.dataset(part, views)
        sampler: Sampler | None = None
        if part == "train" and not views:  # start at the epoch Lightning will set (a resumed run's first epoch is not 0)
            epoch = next_epoch(self.trainer) if self.trainer is not None else 0
            sampler = EpochSampler(len(dataset), self.seed, epoch)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return make_loader(
            dataset,
            batch_size=batch_size or self.batch_size,
            num_workers=self.num_workers if num_workers is None else num_workers,
            sampler=sampler,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
