"""Catalogue validation, the split, the dataset, the data module (and its config: extra transforms, exact resume)."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from gzoo import schema
from gzoo.data import PARTS, GalaxyZooDataModule, read_catalog, split_ids
from gzoo.errors import GzooError
from tests.conftest import make_cfg, write_kaggle


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
    item = dm.dataset("train")[0]
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


def test_train_limit_keeps_validation_and_test_and_nests_the_training_galaxies():
    ids = np.arange(1000, 3000)
    whole = split_ids(ids, 0.2, 0.1, seed=3)
    small, large = split_ids(ids, 0.2, 0.1, seed=3, train_limit=250), split_ids(ids, 0.2, 0.1, seed=3, train_limit=1000)
    assert all(np.array_equal(whole[k], p[k]) for p in (small, large) for k in ("val", "test"))
    assert (len(small["train"]), len(large["train"])) == (250, 1000)
    assert set(small["train"]) < set(large["train"]) < set(whole["train"])
    assert not np.array_equal(small["train"], whole["train"][:250])  # drawn by the seed, not the first ids
    assert np.array_equal(split_ids(ids, 0.2, 0.1, seed=3, train_limit=1400)["train"], whole["train"])
    with pytest.raises(GzooError, match=r"data.train_limit=1401, but the split leaves 1400 training galaxies: choose 1 to 1400"):
        split_ids(ids, 0.2, 0.1, seed=3, train_limit=1401)


def test_datamodule_split_ignores_loader_settings_and_limit_takes_first_rows(kaggle_dir):
    a, b = dm_for(kaggle_dir), GalaxyZooDataModule(root=str(kaggle_dir), image_size=64, batch_size=16, num_workers=0, progress=False)
    a.setup(), b.setup()
    assert all(np.array_equal(a.ids(k), b.ids(k)) for k in PARTS)
    assert np.array_equal(np.sort(np.concatenate([a.ids(k) for k in ("train", "val", "test")])), a.ids("all"))
    small = dm_for(kaggle_dir, limit=20)
    small.setup()
    rows = read_catalog(kaggle_dir / "training_solutions_rev1.csv")[schema.ID_COLUMN].tolist()
    assert len(small.catalog) == 20 and small.catalog.index.tolist() == rows[:20]
    assert small.ids("all").tolist() == sorted(rows[:20])
    np.testing.assert_array_equal(small.labels("all"), small.catalog.loc[small.ids("all"), schema.COLUMNS].to_numpy())
    with pytest.raises(GzooError, match="data.limit"):
        dm_for(kaggle_dir, limit=0).setup()


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


# ----------------------------------------------------------------------------- the config's extra transforms

NOISE = "data.augment.extra=[{_target_: albumentations.GaussNoise, std_range: [0.2, 0.3], p: 1.0}]"


def dm_from_config(tmp_path, root, *overrides):
    cfg = make_cfg(tmp_path, root, *overrides)
    dm = GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed, progress=False)
    dm.setup()
    return dm


def test_an_albumentations_transform_appended_in_the_config_is_applied_to_training_images_only(tmp_path, kaggle_dir):
    plain, noisy = dm_from_config(tmp_path, kaggle_dir), dm_from_config(tmp_path, kaggle_dir, NOISE)
    assert [type(t).__name__ for t in noisy.train_tf.transforms] == ["GalaxyWarp", "GaussNoise", "ToTensorCHW"]
    train_plain, train_noisy = plain.dataset("train"), noisy.dataset("train")
    for i, epoch in [(0, 0), (3, 0), (3, 2)]:
        a, b = train_plain[(i, epoch)], train_noisy[(i, epoch)]
        assert a["id"] == b["id"] and b["image"].shape == a["image"].shape == (3, 32, 32) and b["image"].dtype == torch.uint8
        assert a["brightness"] == b["brightness"]  # the noise draws after the warp: same geometry, same brightness
        diff = b["image"].float() - a["image"].float()
        assert diff.std() > 20  # grey levels: noise of std 0.2-0.3 of 255 (some of it clipped at 0 and 255)
        assert (diff != 0).float().mean() > 0.5  # all over the image, not a shift of a few pixels
    # Validation (and every other evaluation view) stays the plain central crop.
    val_plain, val_noisy = plain.dataset("val"), noisy.dataset("val")
    assert len(val_plain) > 0
    for j in range(len(val_plain)):
        assert torch.equal(val_plain[j]["image"], val_noisy[j]["image"])
    assert "brightness" not in val_noisy[0]


@pytest.mark.parametrize(
    "override",
    [
        "data.augment.extra=[{_target_: albumentations.NoSuchNoise, p: 1.0}]",
        "data.augment.extra=[{_target_: albumentations.GaussNoise, std_range: [0.5, 0.1]}]",
        "data.augment.extra=[{_target_: collections.OrderedDict}]",
    ],
    ids=["unknown-class", "bad-argument", "not-a-transform"],
)
def test_a_wrong_extra_transform_is_a_clear_error_naming_the_option(tmp_path, kaggle_dir, override):
    cfg = make_cfg(tmp_path, kaggle_dir, override)
    with pytest.raises(GzooError, match=r"^data\.augment\.extra: ") as e:
        GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed, progress=False)
    assert "\n" not in str(e.value) and override.split("_target_: ")[1].split(",")[0].rstrip("}]") in str(e.value)


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("overrides", [(), (NOISE,)], ids=["recipe", "with-gauss-noise"])
def test_each_training_item_depends_only_on_seed_epoch_and_index(tmp_path, kaggle_dir, overrides):
    dm = dm_from_config(tmp_path, kaggle_dir, *overrides)
    train = dm.dataset("train")
    first = train[(2, 5)]
    _ = train[(7, 5)], train[(2, 4)], train[(0, 0)]  # other items in between, as another worker's would be
    again = train[(2, 5)]
    assert torch.equal(first["image"], again["image"]) and first["brightness"] == again["brightness"]
    # A resumed run is a new process: a new data module from the same config draws the same.
    resumed = dm_from_config(tmp_path, kaggle_dir, *overrides).dataset("train")[(2, 5)]
    assert torch.equal(first["image"], resumed["image"]) and first["brightness"] == resumed["brightness"]
    # Another epoch (or another run seed) draws anew.
    other_epoch = train[(2, 6)]
    assert not torch.equal(first["image"], other_epoch["image"]) and first["brightness"] != other_epoch["brightness"]
    other_seed = dm_from_config(tmp_path, kaggle_dir, *overrides, "seed=43").dataset("train")[(2, 5)]
    assert first["brightness"] != other_seed["brightness"]


def test_the_noise_itself_is_reseeded_per_item(tmp_path, kaggle_dir):
    # Same geometry and brightness are not enough: the noise (numpy's generator) must repeat too.
    plain, noisy = dm_from_config(tmp_path, kaggle_dir).dataset("train"), dm_from_config(tmp_path, kaggle_dir, NOISE).dataset("train")
    noise = [noisy[(1, 3)]["image"].float() - plain[(1, 3)]["image"].float() for _ in range(2)]
    assert torch.equal(noise[0], noise[1])
    assert not torch.equal(noise[0], noisy[(1, 4)]["image"].float() - plain[(1, 4)]["image"].float())
