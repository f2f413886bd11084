"""The train/validation/test split: each galaxy's part depends only on its id, the seed and the fractions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig

from gzoo.errors import GzooError
from gzoo.images import id_sort_key


def _unit_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per GalaxyID that depends only on the id and the seed (splitmix64)."""
    with np.errstate(over="ignore"):
        z = ids + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_ids(ids: np.ndarray, val_fraction: float, test_fraction: float = 0.0, seed: int = 0, train_limit: int | None = None) -> dict[str, np.ndarray]:
    """Split GalaxyIDs into disjoint train/val/test parts that together cover all of them.

    Each id gets a fixed pseudo-random number from (id, seed); ids are ranked by it and
    the first ``test_fraction`` go to test, the next ``val_fraction`` to validation.
    A galaxy's place therefore depends only on the seed and the fractions, not on row
    order, batch size or any other setting.

    ``train_limit`` keeps only the next ``train_limit`` ids of that ranking in train (the rest are
    in no part): validation and test stay the same, and a smaller limit's training galaxies are
    among a larger one's (a learning curve's subsets are nested).
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GzooError(f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must be in [0, 1) and sum to less than 1.")
    ids = id_array(ids)
    order = np.argsort(_unit_hash(_id_keys(ids), seed), kind="stable")
    n_test = round(len(ids) * test_fraction)
    n_val = round(len(ids) * val_fraction)
    train = order[n_test + n_val :]
    if train_limit is not None:
        if not 1 <= train_limit <= len(train):
            raise GzooError(f"data.train_limit={train_limit}, but the split leaves {len(train)} training galaxies: choose 1 to {len(train)}, or null for all.")
        train = train[:train_limit]
    return {
        "test": sort_ids(ids[order[:n_test]]),
        "val": sort_ids(ids[order[n_test : n_test + n_val]]),
        "train": sort_ids(ids[train]),
    }


def id_array(ids) -> np.ndarray:
    """int64 when every id is an integer (the Kaggle layout), else an object array of ints and names."""
    ids = list(ids)
    if all(isinstance(i, (int, np.integer)) for i in ids):
        return np.asarray(ids, dtype=np.int64)
    return np.asarray([i.item() if isinstance(i, np.generic) else i for i in ids], dtype=object)


def _id_keys(ids: np.ndarray) -> np.ndarray:
    """A uint64 per id: an integer id is itself (so the Kaggle split never changes), a name its BLAKE2 hash."""
    if ids.dtype != object:
        return ids.astype(np.uint64)
    keys = [i if isinstance(i, int) else int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in ids]
    return np.asarray(keys, dtype=np.uint64)


def sort_ids(ids: np.ndarray) -> np.ndarray:
    """Ids in order: integers by value, then names by text (see gzoo.images.id_sort_key)."""
    if ids.dtype != object:
        return np.sort(ids)
    return np.asarray(sorted(ids.tolist(), key=id_sort_key), dtype=object)


# ----------------------------------------------------------------------------- the split a checkpoint was trained on


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


SPLIT_KEYS = ("labels_csv", "split_seed", "val_fraction", "test_fraction", "limit", "train_limit")


def _catalog(data: DictConfig | dict) -> str | None:
    catalog = data.get("catalog")
    return str(Path(catalog).expanduser().resolve()) if catalog else None


def split_record(data: DictConfig | dict) -> dict[str, Any]:
    """What identifies the split of a run's ``data`` node: the data root and labels file (and the file's
    SHA-256, so data moved to another folder is still recognised), your own catalogue and label columns,
    the split seed, the fractions and the limits."""
    from gzoo.schema import label_columns

    labels = Path(data["catalog"]) if data.get("catalog") else Path(data["root"]) / data["labels_csv"]  # your catalogue, or Kaggle's CSV
    digest = hashlib.sha256()
    with open(labels, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "root": str(Path(data["root"]).resolve()),
        "labels_sha256": digest.hexdigest(),
        "catalog": _catalog(data),
        "labels": list(label_columns(data.get("labels", "gz2"))),
        **{k: data.get(k) for k in SPLIT_KEYS},  # a key a run's config predates (train_limit) is None, its value then
    }


def split_mismatch(record: dict[str, Any], data: DictConfig | dict) -> str | None:
    """How ``data`` differs from a checkpoint's split record (``data.key=value`` for the first difference), or None.
    A record from before a key was recorded is not compared on that key."""
    from gzoo.schema import is_gz2, label_columns

    for key in SPLIT_KEYS:
        if record.get(key) != data.get(key):
            return f"data.{key}={_shown(record.get(key))}, not {_shown(data.get(key))}"
    if "labels" in record:
        ours = list(label_columns(data.get("labels", "gz2")))
        if record["labels"] != ours:
            shown = lambda v: "gz2" if is_gz2(v) else "[" + ",".join(v) + "]"
            return f"data.labels={shown(record['labels'])}, not {shown(ours)}"
    same_labels = split_record(data)["labels_sha256"] == record.get("labels_sha256")
    if "catalog" in record and record["catalog"] != _catalog(data) and not same_labels:
        return f"data.catalog={record['catalog']} (SHA-256 {record.get('labels_sha256', '?')[:12]}...), not {_catalog(data)}"
    same_root = Path(data["root"]).resolve() == Path(record["root"])
    if not data.get("catalog") and not same_root and not same_labels:
        return f"data.root={record['root']} (labels file SHA-256 {record.get('labels_sha256', '?')[:12]}...), not {data['root']}"
    return None


class RecordSplit(L.Callback):
    """Writes :func:`split_record` of the run's data into every checkpoint, under "gzoo_split"."""

    def __init__(self, data: DictConfig | dict):
        self.record = split_record(data)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["gzoo_split"] = dict(self.record)
