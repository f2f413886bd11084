"""data.augment_on=device: the same draws as the CPU warp, the same geometry, and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gzoo.data import GalaxyZooDataModule
from gzoo.device_augment import GalaxyWarpParams, device_train_transform, warp_batch, warp_on_device, warp_theta
from gzoo.errors import GzooError
from gzoo.module import GalaxyZooModule
from gzoo.train import train
from gzoo.transforms import GalaxyWarp, reseed, train_transform
from tests.conftest import make_cfg, write_kaggle


def smooth_image(size: int = 424) -> np.ndarray:
    """Slow colour waves: interpolation differences stay small, a wrong geometry shows at once."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    planes = [128 + 100 * np.sin(xx / 23) * np.cos(yy / 31), 128 + 80 * np.cos((xx + yy) / 40), 100 + 60 * np.sin(xx / 50 + yy / 70)]
    return np.stack(planes, -1).clip(0, 255).astype(np.uint8)


def on_device(item: dict, size: int) -> torch.Tensor:
    return warp_batch(item["image"][None], item["warp"][None], size)[0]


@pytest.mark.parametrize("size", [224, 64], ids=["enlarge", "shrink by area"])
def test_device_warp_gives_the_cpu_warps_geometry_for_the_same_draws(size):
    img = smooth_image()
    cpu, dev = train_transform(size), device_train_transform(size)
    for seed in range(4):
        reseed(cpu, seed)
        reseed(dev, seed)
        a, b = cpu(image=img), dev(image=img)
        assert b["brightness"] == a["brightness"]  # the same draws
        assert b["image"].shape == img.shape and b["image"].dtype == torch.uint8  # the frame goes on whole
        warped = on_device(b, size)
        assert warped.shape == a["image"].shape and warped.dtype == torch.uint8
        diff = (warped.int() - a["image"].int()).abs().float()
        assert diff.mean() < 0.5 and diff.max() <= 3, (seed, diff.mean(), diff.max())
        reseed(dev, seed + 100)  # negative control: another draw's warp is far off
        other = (on_device(dev(image=img), size).int() - a["image"].int()).abs().float().mean()
        assert other > 10


def test_a_different_rotation_alone_differs_a_lot():
    img, warp = smooth_image(), GalaxyWarp(224)
    params = {"angle": 30.0, "shift": (0.05, -0.03), "zoom": (0.9, 1.1), "hflip": True, "vflip": False}
    cpu = torch.from_numpy(warp.apply(img, **params)).permute(2, 0, 1)
    frames = torch.from_numpy(img)[None].repeat(2, 1, 1, 1)
    thetas = [warp_theta(warp.matrix(img.shape[:2], (224, 224), **{**params, "angle": a}), img.shape[:2], (224, 224)) for a in (30.0, 40.0)]
    same, rotated = warp_batch(frames, torch.from_numpy(np.stack(thetas)), 224)  # one call for the batch
    assert (same.int() - cpu.int()).abs().float().mean() < 0.5
    assert (rotated.int() - cpu.int()).abs().float().mean() > 10


def test_the_warp_reads_outside_the_central_crop_and_the_frame():
    """Why the frame travels whole (and the crop cache stores whole frames): the recipe's warp reaches past the frame."""
    warp = GalaxyWarp(224)
    reseed(warp, 0)
    corners = np.array([[0, 223, 0, 223], [0, 0, 223, 223], [1, 1, 1, 1]], float)
    reached = []
    for _ in range(300):
        p = warp.get_params()
        p.pop("brightness")
        reached.append((np.linalg.inv(warp.matrix((424, 424), (224, 224), **p)) @ corners)[:2])
    reached = np.concatenate(reached, axis=1)
    assert reached.min() < 0 and reached.max() > 423  # the central crop is 106 .. 317


def test_the_datamodules_device_batches_match_its_cpu_batches(tmp_path):
    data = write_kaggle(tmp_path / "gz2", n=12)
    kw = dict(image_size=48, batch_size=4, num_workers=0, val_fraction=0.25, seed=3, progress=False)
    cpu, dev = GalaxyZooDataModule(data, **kw), GalaxyZooDataModule(data, augment_on="device", **kw)
    for dm in (cpu, dev):
        dm.setup()
    for a, b in zip(cpu.loader("train"), dev.loader("train")):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["brightness"], b["brightness"])
        assert b["image"].shape[1:] == (424, 424, 3) and b["warp"].shape == (len(b["image"]), 2, 3)
        warped = warp_on_device(b, 48, 0.5)
        assert "warp" not in warped and warped["image"].shape == a["image"].shape
        assert (warped["image"].int() - a["image"].int()).abs().float().mean() < 1.0
    a, b = next(iter(cpu.loader("val"))), next(iter(dev.loader("val")))
    assert torch.equal(a["image"], b["image"]) and "warp" not in b  # evaluation is untouched


def test_the_module_warps_training_batches_after_the_transfer_and_leaves_others_alone():
    module = GalaxyZooModule(timm_name="test_efficientnet", image_size=32, pretrained=False)
    tf = device_train_transform(32)
    reseed(tf, 0)
    item = tf(image=smooth_image(100))
    batch = {"image": item["image"][None], "warp": item["warp"][None], "brightness": torch.tensor([item["brightness"]])}
    out = module.on_after_batch_transfer(batch, 0)
    assert out["image"].shape == (1, 3, 32, 32) and out["image"].dtype == torch.uint8 and "warp" not in out
    plain = {"image": torch.zeros(1, 3, 32, 32, dtype=torch.uint8)}
    assert module.on_after_batch_transfer(plain, 0) is plain


def test_user_mistakes_end_in_one_sentence(tmp_path):
    with pytest.raises(GzooError, match="data.augment_on must be one of cpu, device, got 'gpu'"):
        GalaxyZooDataModule(tmp_path, augment_on="gpu")
    with pytest.raises(GzooError, match="data.augment.extra runs albumentations transforms on the CPU"):
        device_train_transform(32, extra=[{"_target_": "albumentations.GaussNoise"}])
    tf = GalaxyWarpParams(32)
    tf(image=np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(GzooError, match="must all have one size, but images of 40x40 and 50x40 px"):
        tf(image=np.zeros((40, 50, 3), np.uint8))


@pytest.mark.slow  # three tiny runs: about 10 s on 2 busy cores
def test_a_resumed_run_with_device_augmentation_ends_with_the_same_weights(tmp_path):
    """Two epochs at once, or one then a resumed second: the same weights (all of the body trains, on the warped frames)."""
    data = write_kaggle(tmp_path / "gz2", n=16)
    exact = [
        "data.augment_on=device", "phase=fulltune", "phase.init_from=null", "trainer.deterministic=true", "data.val_fraction=0.25",
        "callbacks.val_gallery=null",
    ]  # fmt: skip
    train(make_cfg(tmp_path / "whole", data, *exact, "trainer.max_epochs=2"))
    train(make_cfg(tmp_path / "parts", data, *exact, "trainer.max_epochs=1"))
    train(make_cfg(tmp_path / "parts", data, *exact, "trainer.max_epochs=2", "resume=true"))
    whole, parts = (torch.load(tmp_path / r / "outputs/default/tiny/fulltune/checkpoints/last.ckpt", weights_only=False) for r in ("whole", "parts"))
    assert whole["global_step"] == parts["global_step"] == 4
    assert all(torch.equal(whole["state_dict"][k], parts["state_dict"][k]) for k in whole["state_dict"])
