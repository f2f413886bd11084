"""Reading galaxies: the catalogue and its checks, the split, the dataset, and the data module.

catalog.py     read_catalog (the Kaggle labels CSV), check_images
split.py       split_ids: each galaxy's part from its id, the seed and the fractions
dataset.py     GalaxyZooDataset, EpochSampler, labels_and_mask (NaN labels -> labels and mask)
loader.py      make_loader (the one DataLoader builder), its workers' signal handling
crop_cache.py  the decoded images (whole frames), cached once in a memory-mapped file
datamodule.py  GalaxyZooDataModule: all of the above for a run, from its config
"""

from gzoo.data.catalog import BAD_IMAGE_MODES, MISSING_LABEL_MODES, check_images, read_catalog
from gzoo.data.datamodule import PARTS, GalaxyZooDataModule
from gzoo.data.dataset import EpochSampler, GalaxyZooDataset, labels_and_mask, seed_of
from gzoo.data.loader import make_loader
from gzoo.data.split import split_ids

__all__ = [
    "BAD_IMAGE_MODES",
    "MISSING_LABEL_MODES",
    "PARTS",
    "EpochSampler",
    "GalaxyZooDataModule",
    "GalaxyZooDataset",
    "check_images",
    "labels_and_mask",
    "make_loader",
    "read_catalog",
    "seed_of",
    "split_ids",
]
