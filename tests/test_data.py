"""Catalogue validation, the split, the dataset."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from gzoo import schema
from gzoo.data import GalaxyZooDataModule, read_catalog, split_ids
from gzoo.errors import GzooError
from tests.conftest import write_kaggle


def dm_for(root, **kw):
    return GalaxyZooDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, progress=False, **kw)


def edit_csv(root, fn):
    path = root / "training_solutions_rev1.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def test_reads_a_good_catalogue(kaggle_dir):
    df = read_catalog(kaggle_dir / "training_solutions_rev1.csv")
    assert list(df.columns) == schema.HEADER and len(df) == 40
    assert df[schema.COLUMNS].to_numpy().dtype == np.float64


def test_wrong_header_names_the_column(kaggle_dir):
    edit_csv(kaggle_dir, lambda df: df.rename(columns={"Class3.2": "Class3.3"}))
    with pytest.raises(GzooError, match=r"wrong header: column 8 is 'Class3.3', expected 'Class3.2'"):
        dm_for(kaggle_dir).setup()


def test_value_out_of_range_names_row_and_column(kaggle_dir):
    def bad(df):
        df.loc[4, "Class7.2"] = "1.7"
        return df

    edit_csv(kaggle_dir, bad)
    with pytest.raises(GzooError, match=r"row 6, column Class7.2: value 1.7 is outside \[0, 1\]"):
        dm_for(kaggle_dir).setup()


def test_non_integer_and_duplicate_ids(kaggle_dir):
    edit_csv(kaggle_dir, lambda df: df.assign(GalaxyID=df.GalaxyID.where(df.index != 2, "abc")))
    with pytest.raises(GzooError, match=r"row 4: GalaxyID 'abc' is not an integer"):
        dm_for(kaggle_dir).setup()
    edit_csv(kaggle_dir, lambda df: df.assign(GalaxyID=df.GalaxyID.where(df.index != 2, df.GalaxyID[1])))
    with pytest.raises(GzooError, match=r"row 4: GalaxyID \d+ appears more than once"):
        dm_for(kaggle_dir).setup()


def test_empty_cell_is_an_error_by_default_and_masked_on_request(tmp_path):
    root = write_kaggle(tmp_path / "gz2", n=20, unknown=0.2)
    with pytest.raises(GzooError, match=r"row \d+, column Class[\d.]+ is empty .*data.missing_labels=mask"):
        dm_for(root).setup()
    dm = dm_for(root, missing_labels="mask")
    dm.setup()
    item = dm.datasets["train"][0]
    raw = read_catalog(root / "training_solutions_rev1.csv", "mask").set_index("GalaxyID").loc[item["id"]].to_numpy()
    assert torch.equal(item["mask"], torch.tensor(~np.isnan(raw), dtype=torch.float32))
    assert torch.all(item["target"][item["mask"] == 0] == 0)


def test_missing_image_names_ids_and_folder(kaggle_dir):
    for gid in (100000, 100007):
        (kaggle_dir / "images_training_rev1" / f"{gid}.jpg").unlink()
    with pytest.raises(GzooError, match=r"2 galaxies have no image in .*images_training_rev1: GalaxyID 100000, 100007"):
        dm_for(kaggle_dir).setup()


def test_corrupt_jpeg_names_the_file(kaggle_dir):
    path = kaggle_dir / "images_training_rev1" / "100014.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated download
    with pytest.raises(GzooError, match=r"image .*100014.jpg cannot be read"):
        dm_for(kaggle_dir).setup()


def test_split_is_seeded_disjoint_and_complete():
    ids = np.arange(1000, 3000)
    parts = split_ids(ids, val_fraction=0.15, test_fraction=0.1, seed=7)
    assert sum(len(p) for p in parts.values()) == len(ids)
    assert set(np.concatenate(list(parts.values()))) == set(ids)
    assert not set(parts["train"]) & set(parts["val"]) and not set(parts["val"]) & set(parts["test"])
    assert (len(parts["val"]), len(parts["test"])) == (300, 200)
    # same seed -> same split, whatever the row order; another seed -> another split
    again = split_ids(np.random.default_rng(0).permutation(ids), 0.15, 0.1, seed=7)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["val"], split_ids(ids, 0.15, 0.1, seed=8)["val"])
    # the held-out test part does not move when the validation fraction changes
    assert np.array_equal(parts["test"], split_ids(ids, 0.3, 0.1, seed=7)["test"])


def test_datamodule_split_ignores_loader_settings_and_limit_takes_first_rows(kaggle_dir):
    a, b = dm_for(kaggle_dir), GalaxyZooDataModule(root=str(kaggle_dir), image_size=64, batch_size=16, num_workers=0, progress=False)
    a.setup(), b.setup()
    assert all(np.array_equal(a.splits[k], b.splits[k]) for k in a.splits)
    small = dm_for(kaggle_dir, limit=20)
    small.setup()
    assert len(small.catalog) == 20 and small.catalog.GalaxyID.tolist() == a.catalog.GalaxyID.tolist()[:20]


def test_batches_have_the_expected_shapes(kaggle_dir):
    dm = dm_for(kaggle_dir)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.uint8  # normalised by the module, on the device
    assert batch["target"].shape == batch["mask"].shape == (4, 37)
    # Brightness is drawn per image on the CPU and applied on the device (see transforms.normalise_batch).
    assert batch["brightness"].shape == (4,) and ((0.9 <= batch["brightness"]) & (batch["brightness"] <= 1.2)).all()
    assert "brightness" not in next(iter(dm.val_dataloader()))


def test_loader_workers_run_opencv_on_one_thread(tmp_path):
    # In a fresh interpreter, so that no other test's OpenCV setting leaks in.
    script = (
        "import torch, cv2\n"
        "import gzoo.transforms\n"
        "class D(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 2\n"
        "    def __getitem__(self, i): return cv2.getNumThreads()\n"
        "print(cv2.getNumThreads(), [int(x) for b in torch.utils.data.DataLoader(D(), num_workers=1) for x in b])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.split() == ["1", "[1,", "1]"]
