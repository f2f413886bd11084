"""Nothing silent in the data path: one image under two ids, the crop cache's draws from the run's random
generators, images too small to crop, a killed or damaged crop cache, and where data.crop_cache=auto writes."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from gzoo.data import GalaxyZooDataModule
from gzoo.data import crop_cache as cc
from gzoo.data.catalog import read_own_catalog
from gzoo.data.dataset import GalaxyZooDataset
from gzoo.errors import GzooError
from gzoo.images import check_image, load_image
from gzoo.train import train
from gzoo.transforms import eval_transform
from tests.conftest import make_cfg, write_kaggle

KW = dict(image_size=32, batch_size=4, val_fraction=0.25, seed=5, progress=False)


def pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- (4) one image under two ids


def write_catalog(folder: Path, names: list[str]) -> Path:
    """A catalogue of galaxies g0, g1, ... whose file_loc column is ``names``."""
    table = pd.DataFrame({"id_str": [f"g{k}" for k in range(len(names))], "file_loc": names, "is_bar": 0.5})
    table.to_csv(folder / "catalog.csv", index=False)
    return folder / "catalog.csv"


@pytest.fixture
def cutouts(tmp_path: Path) -> Path:
    (tmp_path / "cutouts").mkdir()
    for k in range(4):
        Image.fromarray(pixels(16, 16, k)).save(tmp_path / "cutouts" / f"{k}.png")
    return tmp_path


def test_one_file_under_two_ids_is_refused_naming_both_rows_and_the_file(cutouts, monkeypatch):
    a = (cutouts / "cutouts" / "0.png").resolve()
    (cutouts / "cutouts" / "link.png").symlink_to("0.png")
    os.link(a, cutouts / "cutouts" / "hard.png")
    distinct = ["cutouts/0.png", "cutouts/1.png", "cutouts/2.png"]
    for second in ("cutouts/0.png", str(a), "cutouts/../cutouts/0.png", "cutouts/link.png", "cutouts/hard.png"):
        catalog = write_catalog(cutouts, [*distinct, second])
        with pytest.raises(GzooError) as e:
            read_own_catalog(catalog, ["is_bar"])
        said = str(e.value)
        also = f" (as {a.with_name('hard.png')}, a hard link)" if "hard" in second else ""
        assert said.startswith(f"catalogue {catalog}, rows 2 and 5 ('g0' and 'g3') are both the image {a}{also}; "), said
        assert "\n" not in said
    # The negative control: four files, four ids; relative names are read from the catalogue's folder
    # whatever the working folder, and come back resolved.
    monkeypatch.chdir("/")
    _, files = read_own_catalog(write_catalog(cutouts, [*distinct, "cutouts/3.png"]), ["is_bar"])
    assert list(files.values()) == [(cutouts / "cutouts" / f"{k}.png").resolve() for k in range(4)]


def test_the_data_module_refuses_a_catalogue_listing_one_file_twice(cutouts):
    catalog = write_catalog(cutouts, ["cutouts/0.png", "cutouts/1.png", "cutouts/2.png", str(cutouts / "cutouts" / "1.png")])
    dm = GalaxyZooDataModule(root=cutouts, catalog=catalog, labels=["is_bar"], **KW, num_workers=0)
    with pytest.raises(GzooError, match=r"rows 3 and 5 \('g1' and 'g3'\) are both the image .*1\.png"):
        dm.setup()


# ----------------------------------------------------------------------------- (5) the crop cache and the run's random streams


def draws_after_setup(data: Path, **kw) -> tuple:
    """What the run's random generators give after the data module's setup, all seeded alike before it."""
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    GalaxyZooDataModule(data, **KW, **kw).setup()
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()


def test_building_the_crop_cache_draws_nothing_from_the_runs_random_generators(tmp_path):
    data = write_kaggle(tmp_path / "gz2", n=8, size=48)
    plain = draws_after_setup(data, num_workers=0)
    fresh = draws_after_setup(data, crop_cache=str(tmp_path / "c"), num_workers=1)  # built, in a worker process
    assert len(list((tmp_path / "c").glob("crop-cache-*.npy"))) == 1
    existing = draws_after_setup(data, crop_cache=str(tmp_path / "c"), num_workers=1)  # read
    built_here = draws_after_setup(data, crop_cache=str(tmp_path / "c0"), num_workers=0)  # built in this process
    assert fresh == existing == built_here == plain


# ----------------------------------------------------------------------------- (7) images too small to crop


def test_an_image_one_pixel_wide_is_refused_by_the_scan_and_the_decoder_in_the_same_words(tmp_path):
    for name in ("thin.png", "thin.jpg", "thin.tif"):
        Image.fromarray(pixels(424, 1)).save(tmp_path / name)
        assert check_image(tmp_path / name) == "is 1x424 px, smaller than the 8 px a side gzoo needs"
        with pytest.raises(ValueError, match=r"^is 1x424 px, smaller than the 8 px a side gzoo needs$"):
            load_image(tmp_path / name)
    Image.fromarray(pixels(8, 8)).save(tmp_path / "small.png")  # the negative control: 8 px is enough
    assert check_image(tmp_path / "small.png") is None and load_image(tmp_path / "small.png").shape == (8, 8, 3)
    assert eval_transform(32)(image=load_image(tmp_path / "small.png"))["image"].shape == (3, 32, 32)


def thin_kaggle(root: Path) -> tuple[Path, Path]:
    """A Kaggle folder whose first galaxy's image is a PNG one pixel wide."""
    data = write_kaggle(root, n=12, size=48)
    first = sorted((data / "images_training_rev1").glob("*.jpg"))[0]
    first.unlink()
    thin = first.with_suffix(".png")
    Image.fromarray(pixels(424, 1)).save(thin)
    return data, thin


def test_training_refuses_an_image_one_pixel_wide_at_the_scan_naming_it(tmp_path):
    data, thin = thin_kaggle(tmp_path / "gz2")
    with pytest.raises(GzooError) as e:
        train(make_cfg(tmp_path, data))  # the real entry: before the fix, OpenCV's traceback from a loader, no file named
    said = str(e.value)
    assert said.startswith(f"image {thin} cannot be read (is 1x424 px, smaller than the 8 px a side gzoo needs)")
    assert "on_bad_image=skip" in said and "\n" not in said


def test_with_on_bad_image_skip_the_thin_image_is_left_out_and_listed(tmp_path):
    data, thin = thin_kaggle(tmp_path / "gz2")
    dm = GalaxyZooDataModule(data, on_bad_image="skip", num_workers=0, **KW)
    dm.setup()
    assert dm.skipped == [(thin, "is 1x424 px, smaller than the 8 px a side gzoo needs")]
    assert len(dm.ids("all")) == 11
    batches = list(dm.loader("train")) + list(dm.loader("val"))  # every kept image goes through the transforms
    assert sum(len(b["id"]) for b in batches) == 11


def test_a_transform_failing_for_one_image_is_that_images_error_naming_it(tmp_path):
    Image.fromarray(pixels(10, 10)).save(tmp_path / "a.png")  # decodes; the central 5 % of 10 px is no pixel at all
    Image.fromarray(pixels(64, 64)).save(tmp_path / "b.png")
    tf = eval_transform(16, crop_fraction=0.05)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(GzooError) as e:  # before: cv2.error out of OpenCV, naming no file
        GalaxyZooDataset(paths, None, ["a", "b"], tf)[0]
    assert str(e.value).startswith(f"image {tmp_path / 'a.png'} cannot be read (OpenCV") and "\n" not in str(e.value)
    skip = GalaxyZooDataset(paths, None, ["a", "b"], tf, on_bad_image="skip")
    bad, good = skip[0], skip[1]
    assert bad["error"].startswith("OpenCV") and bad["image"].shape == (3, 16, 16) and not bad["image"].any()
    assert good["error"] == "" and good["image"].any()
    views = GalaxyZooDataset(paths, None, ["a", "b"], tf, views=(0, 90), on_bad_image="skip")[0]
    assert views["image"].shape == (2, 3, 16, 16) and views["error"].startswith("OpenCV")

    def needs_astropy(image):  # not the image's fault: the sentence says what to do, as it is
        raise GzooError("reading FITS needs astropy.")

    with pytest.raises(GzooError, match="^reading FITS needs astropy.$"):
        GalaxyZooDataset(paths, None, ["a", "b"], needs_astropy, on_bad_image="skip")[1]


# ----------------------------------------------------------------------------- (10) a killed or damaged crop cache


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_builds_temporary_file_is_removed_before_the_room_is_judged(tmp_path, monkeypatch):
    data = write_kaggle(tmp_path / "gz2", n=6, size=48)
    folder = tmp_path / "cache"
    folder.mkdir()
    paths = sorted((data / "images_training_rev1").iterdir())
    key = cc.cache_key(paths)
    left = folder / f".crop-cache-{key}.npy.{dead_pid()}.tmp"  # what a build killed outright leaves: as large as the cache
    with open(left, "wb") as f:
        f.truncate(6 * 48 * 48 * 3 + 4096)
    room = 6 * 48 * 48 * 3 + 4096 + 1000  # a disk with room for one cache, and the killed build's file taking it
    usage = namedtuple("usage", "total used free")
    taken = lambda: sum(p.stat().st_size for p in folder.iterdir())  # noqa: E731
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(room, taken(), room - taken()))
    dm = GalaxyZooDataModule(data, crop_cache=str(folder), num_workers=0, **KW)
    dm.setup()  # before: refused "for lack of room", the killed build's file left in place
    assert not left.exists() and len(dm.cache) == 6
    assert sorted(p.name for p in folder.iterdir()) == [f"crop-cache-{key}.json", f"crop-cache-{key}.npy"]


def test_a_failed_build_leaves_neither_the_cache_nor_its_json(tmp_path, monkeypatch):
    data = write_kaggle(tmp_path / "gz2", n=6, size=48)
    folder = tmp_path / "cache"
    broken = sorted((data / "images_training_rev1").iterdir())[3]
    real = cc.load_image

    def load(path, *a):
        if Path(path) == broken:
            raise ValueError("cut short")
        return real(path, *a)

    monkeypatch.setattr(cc, "load_image", load)  # fails in the middle of the build (no workers: this process)
    with pytest.raises(GzooError, match=re.escape(f"image {broken} cannot be read (cut short); the crop cache was not written.")):
        GalaxyZooDataModule(data, crop_cache=str(folder), num_workers=0, **KW).setup()
    assert list(folder.iterdir()) == []  # before: an orphan crop-cache-<key>.json
    monkeypatch.setattr(cc, "load_image", real)  # the negative control: the same build, whole, writes both
    GalaxyZooDataModule(data, crop_cache=str(folder), num_workers=0, **KW).setup()
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".npy"]


@pytest.mark.parametrize("damage", ["cut short", "longer than its header", "garbage", "empty"])
def test_a_damaged_cache_file_is_said_in_one_line_and_built_again(tmp_path, capsys, damage):
    data = write_kaggle(tmp_path / "gz2", n=6, size=48)
    folder = tmp_path / "cache"
    GalaxyZooDataModule(data, crop_cache=str(folder), num_workers=0, **KW).setup()
    (path,) = folder.glob("crop-cache-*.npy")
    whole = path.read_bytes()
    damaged = {"cut short": whole[: len(whole) // 2], "longer than its header": whole + b"\0" * 100, "garbage": b"not a cache", "empty": b""}
    path.write_bytes(damaged[damage])
    capsys.readouterr()
    dm = GalaxyZooDataModule(data, crop_cache=str(folder), num_workers=0, progress=True, **{k: v for k, v in KW.items() if k != "progress"})
    dm.setup()  # before: a traceback from numpy's memory map (or, too long, a file read as it is)
    said = [line for line in capsys.readouterr().out.splitlines() if " is damaged (" in line]
    assert len(said) == 1 and said[0].startswith(f"[gzoo] crop cache: {path} is damaged (") and said[0].endswith("); building it again")
    assert path.read_bytes() == whole
    batch = next(iter(dm.loader("val")))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert cc.damage(path, 6) is None and cc.damage(path, 7) == "it holds 6 frames, not 7"  # the check itself, and a miss


# ----------------------------------------------------------------------------- (21) where data.crop_cache=auto writes


def test_auto_puts_the_cache_in_the_users_cache_folder_not_the_data_folder(tmp_path, monkeypatch):
    data = write_kaggle(tmp_path / "gz2", n=6, size=48)
    monkeypatch.setenv("GZOO_CACHE", str(tmp_path / "mine"))
    GalaxyZooDataModule(data, crop_cache="auto", num_workers=0, **KW).setup()
    assert len(list((tmp_path / "mine" / "crops").glob("crop-cache-*.npy"))) == 1
    assert sorted(p.name for p in data.iterdir()) == ["images_training_rev1", "training_solutions_rev1.csv"]  # nothing beside the data
    monkeypatch.delenv("GZOO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.cache_folder("auto") == tmp_path / "xdg" / "gzoo" / "crops"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cc.cache_folder("auto") == Path.home() / ".cache" / "gzoo" / "crops"
    assert cc.cache_folder(str(tmp_path / "given")) == tmp_path / "given"  # a folder given is used as it is
