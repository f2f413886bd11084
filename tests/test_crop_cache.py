"""data.crop_cache: decoded once, then batches equal to the decoded images' bit for bit; rebuilt when the images change."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

from gzoo.data import GalaxyZooDataModule
from gzoo.data import crop_cache as cc
from gzoo.errors import GzooError
from gzoo.images import load_image
from tests.conftest import write_kaggle

KW = dict(image_size=48, batch_size=4, num_workers=0, val_fraction=0.25, seed=5, progress=False)


def caches(folder):
    return sorted(folder.glob("crop-cache-*.npy"))


def test_the_caches_batches_equal_the_decoded_images_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("GZOO_CACHE", str(tmp_path / "user-cache"))
    data = write_kaggle(tmp_path / "gz2", n=12)
    plain = GalaxyZooDataModule(data, **KW)
    cached = GalaxyZooDataModule(data, crop_cache=str(tmp_path / "cache"), **KW)
    for dm in (plain, cached):
        dm.setup()
    (path,) = caches(tmp_path / "cache")
    frames = np.load(path, mmap_mode="r")
    assert frames.shape == (12, 424, 424, 3) and frames.dtype == np.uint8
    for row, gid in enumerate(plain.ids("all")):  # whole frames, in the order of the sorted ids
        assert np.array_equal(frames[row], load_image(plain.paths[gid]))
    for part in ("train", "val"):  # the training warp and the evaluation view, from the cache without a decode
        for a, b in zip(plain.loader(part), cached.loader(part), strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dev = GalaxyZooDataModule(data, crop_cache="auto", augment_on="device", **KW)  # auto: the user's cache folder, not the data's
    dev.setup()
    assert len(caches(tmp_path / "user-cache" / "crops")) == 1 and not (data / ".gzoo-cache").exists()
    batch = next(iter(dev.loader("train")))
    assert all(np.array_equal(batch["image"][j].numpy(), load_image(plain.paths[int(gid)])) for j, gid in enumerate(batch["id"]))


def test_an_existing_cache_is_read_and_a_changed_image_list_rebuilds_it(tmp_path, monkeypatch):
    data = write_kaggle(tmp_path / "gz2", n=12)
    folder = tmp_path / "cache"
    GalaxyZooDataModule(data, crop_cache=str(folder), limit=8, **KW).setup()
    (first,) = caches(folder)
    with monkeypatch.context() as m:  # the same list: read, nothing decoded
        m.setattr(cc, "load_image", lambda p: pytest.fail("decoded again"))
        dm = GalaxyZooDataModule(data, crop_cache=str(folder), limit=8, **KW)
        dm.setup()
        assert dm.cache.path == first
    GalaxyZooDataModule(data, crop_cache=str(folder), limit=10, **KW).setup()  # two more images: another cache
    assert len(caches(folder)) == 2
    image = next(iter(sorted((data / "images_training_rev1").iterdir())))
    Image.fromarray(np.full((424, 424, 3), 7, np.uint8)).save(image)  # one image rewritten: its size and time change
    os.utime(image, ns=(1, 1))
    dm = GalaxyZooDataModule(data, crop_cache=str(folder), limit=10, **KW)
    dm.setup()
    assert len(caches(folder)) == 3 and np.array_equal(dm.cache[0], load_image(image))
    assert not list(folder.glob(".*.tmp"))  # written through a temporary file, renamed when complete


def test_too_little_room_is_refused_in_one_sentence_before_anything_is_written(tmp_path, monkeypatch):
    data = write_kaggle(tmp_path / "gz2", n=6)
    folder = tmp_path / "cache"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(GzooError) as e:
        GalaxyZooDataModule(data, crop_cache=str(folder), **KW).setup()
    assert str(e.value).startswith("data.crop_cache: the cache of 6 images needs 0.00 GB") and "0.00 GB free" in str(e.value)
    assert str(e.value).count(".") >= 1 and "\n" not in str(e.value)
    assert not caches(folder) and not list(folder.glob("*.json"))
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))  # negative control: with room it builds
    GalaxyZooDataModule(data, crop_cache=str(folder), **KW).setup()
    assert len(caches(folder)) == 1


def test_images_of_two_sizes_and_bad_settings_end_in_one_sentence(tmp_path):
    data = write_kaggle(tmp_path / "gz2", n=6)
    image = sorted((data / "images_training_rev1").iterdir())[-1]
    Image.fromarray(np.zeros((200, 300, 3), np.uint8)).save(image)
    with pytest.raises(GzooError, match=r"stores frames of one size, but .* is 300x200 px"):
        GalaxyZooDataModule(data, crop_cache=str(tmp_path / "cache"), **KW).setup()
    assert not caches(tmp_path / "cache")
    with pytest.raises(GzooError, match="data.crop_cache must be null, auto or a folder"):
        GalaxyZooDataModule(data, crop_cache=True, **KW).setup()
