"""The fast transforms against the albumentations reference: same geometry, crop, values.

The CPU pipelines give uint8 images (and the training one a brightness factor); the device
turns them into the network's input with normalise_batch. Every comparison with the float
reference chain therefore goes through normalise_batch, as training does.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from gzoo.data import GalaxyZooDataset
from gzoo.errors import GzooError
from gzoo.images import load_image
from gzoo.tools.reference_transform import CentralCrop, reference_train_transform
from gzoo.transforms import (
    GalaxyWarp,
    central_crop,
    eval_transform,
    normalise_batch,
    reseed,
    train_transform,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STD_PX = torch.tensor(STD).view(3, 1, 1) * 255  # normalised units -> grey levels

# Fixed draws: identity, and mixes of rotation, anisotropic zoom, shift, flips, brightness.
PARAMS = [
    dict(angle=0.0, shift=(0.0, 0.0), zoom=(1.0, 1.0), hflip=False, vflip=False, brightness=1.0),
    dict(angle=37.0, shift=(0.07, -0.05), zoom=(0.85, 1.15), hflip=True, vflip=False, brightness=1.1),
    dict(angle=-150.0, shift=(-0.1, 0.1), zoom=(0.8, 0.8), hflip=True, vflip=True, brightness=0.9),
    dict(angle=95.0, shift=(0.02, 0.09), zoom=(1.2, 0.9), hflip=False, vflip=True, brightness=1.2),
]


def galaxy(seed: int = 0, size: int = 424) -> np.ndarray:
    """A 424x424 RGB test image: an off-centre elliptical blob, a smooth texture and some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    blob = 200 * np.exp(-(((xx - 230) / 40) ** 2 + ((yy - 200) / 25) ** 2) / 2)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (size, size, 3)), (0, 0), 4)
    return np.clip(blob[..., None] + 30 + texture + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)


def spots() -> np.ndarray:
    """Three small spots, one per colour, placed asymmetrically: any wrong rotation, flip or shift moves them."""
    img = np.zeros((424, 424, 3), np.uint8)
    for channel, (x, y) in enumerate([(180, 250), (245, 190), (200, 170)]):
        plane = np.zeros((424, 424), np.uint8)
        cv2.circle(plane, (x, y), 4, 255, -1)
        img[..., channel] = cv2.GaussianBlur(plane, (0, 0), 2)
    return img


def fixed_reference(size: int, p: dict, crop_fraction: float = 0.5) -> A.Compose:
    """The reference chain with every random draw pinned to ``p``."""
    return A.Compose(
        [
            A.Affine(
                rotate=(p["angle"], p["angle"]),
                translate_percent={"x": (p["shift"][0],) * 2, "y": (p["shift"][1],) * 2},
                scale={"x": (p["zoom"][0],) * 2, "y": (p["zoom"][1],) * 2},
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=1.0,
            ),
            A.HorizontalFlip(p=float(p["hflip"])),
            A.VerticalFlip(p=float(p["vflip"])),
            CentralCrop(crop_fraction),
            A.MultiplicativeNoise(multiplier=(p["brightness"],) * 2, per_channel=False, elementwise=False, p=1.0),
            A.Resize(size, size, interpolation=cv2.INTER_AREA),
            A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def chw(img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def warp_normalised(size: int, img: np.ndarray, p: dict, crop_fraction: float = 0.5) -> torch.Tensor:
    """GalaxyWarp with the draws pinned to ``p``, normalised as the device does it (with p's brightness)."""
    out = GalaxyWarp(size, crop_fraction).apply(img, **p)
    assert out.dtype == np.uint8 and out.shape == (size, size, 3)
    return normalise_batch(chw(out)[None], MEAN, STD, torch.tensor([p["brightness"]]))[0]


def pipeline_normalised(tf: A.Compose, img: np.ndarray, n: int = 1) -> torch.Tensor:
    """n calls of a pipeline, each uint8 image normalised on the "device" with its own brightness."""
    outs = [tf(image=img) for _ in range(n)]
    images = torch.stack([o["image"] for o in outs])
    brightness = torch.tensor([o["brightness"] for o in outs]) if "brightness" in outs[0] else None
    return normalise_batch(images, MEAN, STD, brightness)


def grey_levels(x: torch.Tensor) -> torch.Tensor:
    """Normalised tensor back to 0..255 units."""
    return x * STD_PX + torch.tensor(MEAN).view(3, 1, 1) * 255


def centroids(x: torch.Tensor) -> np.ndarray:
    """(3, 2) brightness-weighted (x, y) centre of each channel, background removed."""
    g = grey_levels(x).clamp_min(0).numpy()
    g = np.where(g > 0.3 * g.max(axis=(1, 2), keepdims=True), g, 0)
    yy, xx = np.mgrid[: g.shape[1], : g.shape[2]]
    return np.array([[(xx * c).sum() / c.sum(), (yy * c).sum() / c.sum()] for c in g])


def the_warp(tf: A.Compose) -> GalaxyWarp:
    (warp,) = [t for t in tf.transforms if isinstance(t, GalaxyWarp)]
    return warp


def test_central_crop_keeps_the_central_2x2_of_a_4x4_grid():
    img = np.arange(424 * 424).reshape(424, 424)
    crop = central_crop(img, 0.5)
    assert crop.shape == (212, 212)
    assert crop[0, 0] == img[106, 106] and crop[-1, -1] == img[317, 317]
    assert central_crop(np.zeros((10, 7)), 0.5).shape == (5, 4)


@pytest.mark.parametrize("size", [224, 300])
@pytest.mark.parametrize("p", PARAMS, ids=["identity", "rot37-hflip", "rot-150-both", "rot95-vflip"])
def test_train_transform_matches_the_reference_image(size, p):
    img = galaxy()
    fast = warp_normalised(size, img, p)
    ref = fixed_reference(size, p)(image=img)["image"]
    assert fast.shape == ref.shape == (3, size, size) and fast.dtype == ref.dtype == torch.float32
    # One bilinear warp against warp + area resize: interpolation differs a little, geometry not at all.
    assert (grey_levels(fast) - grey_levels(ref)).abs().mean() < 1.5


@pytest.mark.parametrize("p", PARAMS[1:], ids=["rot37-hflip", "rot-150-both", "rot95-vflip"])
def test_marked_spots_land_where_the_reference_puts_them(p):
    img = spots()
    fast = warp_normalised(224, img, p)
    ref = fixed_reference(224, p)(image=img)["image"]
    np.testing.assert_allclose(centroids(fast), centroids(ref), atol=0.5)
    # ... and the test would notice a mistake: without the flips the spots land elsewhere.
    wrong = warp_normalised(224, img, {**p, "hflip": not p["hflip"]})
    assert np.abs(centroids(wrong) - centroids(ref)).max() > 5


def test_small_outputs_shrink_by_area_like_the_reference():
    img = galaxy(1)
    for size in (32, 96):
        fast = warp_normalised(size, img, PARAMS[2])
        ref = fixed_reference(size, PARAMS[2])(image=img)["image"]
        assert fast.shape == (3, size, size)
        assert (grey_levels(fast) - grey_levels(ref)).abs().mean() < 1.5


def test_other_crop_fractions_match_the_reference():
    img = galaxy(2)
    fast = warp_normalised(224, img, PARAMS[1], crop_fraction=0.75)
    ref = fixed_reference(224, PARAMS[1], crop_fraction=0.75)(image=img)["image"]
    assert (grey_levels(fast) - grey_levels(ref)).abs().mean() < 1.5


def test_random_train_transform_has_the_reference_value_range_and_statistics():
    # Both pipelines seeded, so the test gives the same answer every run. 200 draws each: one image's mean
    # varies by ~6.5 grey levels (brightness and where the blob lands), so the two averages agree within
    # ~0.65 (one standard error); the tolerance is about 4 of those.
    img, n = galaxy(3), 200
    pipeline = train_transform(224)
    reseed(pipeline, 0)
    fast = pipeline_normalised(pipeline, img, n)
    reference = reference_train_transform(224, MEAN, STD)
    reference.set_random_seed(0)
    ref = torch.stack([reference(image=img)["image"] for _ in range(n)])
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    for x in (fast, ref):
        assert x.dtype == torch.float32 and x.shape == (n, 3, 224, 224)
        assert (x.amin(dim=(0, 2, 3)) >= lo - 1e-5).all() and (x.amax(dim=(0, 2, 3)) <= hi + 1e-5).all()

    def grey_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.mean(dim=(0, 2, 3)) - b.mean(dim=(0, 2, 3))) * STD_PX.view(3)).abs().max().item()

    # Same augmentation distribution: per-channel means agree to 2.5 grey levels ...
    assert grey_diff(fast, ref) < 2.5
    # ... and a real change to the distribution (brightness drawn from 1.0-1.3, not 0.9-1.2) is caught.
    brighter = train_transform(224, brightness=(1.0, 1.3))
    reseed(brighter, 0)
    assert grey_diff(pipeline_normalised(brighter, img, n), ref) > 2.5


def test_brightness_clips_at_white_like_the_reference():
    img = np.full((424, 424, 3), 240, np.uint8)
    p = {**PARAMS[0], "brightness": 1.2}
    fast = warp_normalised(64, img, p)  # 240 * 1.2 = 288: clipped at 255 by normalise_batch
    ref = fixed_reference(64, p)(image=img)["image"]
    assert torch.allclose(grey_levels(fast), torch.full_like(fast, 255.0), atol=1e-3)
    assert torch.allclose(fast, ref, atol=1e-5)


def test_draws_cover_the_configured_ranges_and_follow_the_pipelines_seed():
    tf = train_transform(224, rotate=90, shift=0.05, zoom=(0.9, 1.1), hflip=0.5, vflip=0.0, brightness=(0.95, 1.05))
    warp = the_warp(tf)
    reseed(tf, 1)
    draws = [warp.get_params() for _ in range(400)]
    angles = np.array([d["angle"] for d in draws])
    assert -90 <= angles.min() < -80 and 80 < angles.max() <= 90
    assert all(abs(s) <= 0.05 for d in draws for s in d["shift"])
    assert all(0.9 <= z <= 1.1 for d in draws for z in d["zoom"])
    assert any(d["zoom"][0] != d["zoom"][1] for d in draws)  # x and y zoom drawn independently, as the reference
    assert all(0.95 <= d["brightness"] <= 1.05 for d in draws)
    assert 0.4 < np.mean([d["hflip"] for d in draws]) < 0.6 and not any(d["vflip"] for d in draws)
    # The draws are the warp's own generator's: seeding the warp alone gives the same sequence.
    warp.set_random_seed(1)
    assert [warp.get_params() for _ in range(400)] == draws
    # Same seed -> same image and brightness, whatever Python's global generator does; the next call differs.
    img = galaxy(4)
    reseed(tf, 7)
    a = tf(image=img)
    reseed(tf, 7)
    random.seed(123)
    b = tf(image=img)
    assert torch.equal(a["image"], b["image"]) and a["brightness"] == b["brightness"]
    c = tf(image=img)
    assert not torch.equal(a["image"], c["image"]) and a["brightness"] != c["brightness"]


def test_the_pipeline_normalised_on_the_device_equals_the_reference_with_the_same_draws():
    # The float output the CPU pipeline used to make, now made by normalise_batch from its uint8 image
    # and brightness: the whole pipeline (draws, warp, hand-over of brightness) against the reference
    # chain pinned to the draws the pipeline made.
    img = galaxy(6)
    tf = train_transform(224)
    for seed in (3, 4, 5):
        reseed(tf, seed)
        out = tf(image=img)
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 224, 224) and out["image"].is_contiguous()
        on_device = normalise_batch(out["image"][None], MEAN, STD, torch.tensor([out["brightness"]]))[0]
        p = the_warp(tf).params  # the draws of this call, as albumentations records them
        assert p["brightness"] == out["brightness"]
        ref = fixed_reference(224, p)(image=img)["image"]
        assert (grey_levels(on_device) - grey_levels(ref)).abs().mean() < 1.5
        # normalise_batch is (min(x * b, 255) / 255 - mean) / std, to float32 rounding.
        x = out["image"].double()
        by_hand = ((x * out["brightness"]).clamp(max=255) / 255 - torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
            STD, dtype=torch.float64
        ).view(3, 1, 1)
        assert ((on_device.double() - by_hand) * STD_PX).abs().max() < 1e-3


def test_eval_transform_is_the_reference_crop_resize_normalise_and_deterministic():
    img = galaxy(5)
    ref = A.Compose([CentralCrop(0.5), A.Resize(224, 224, interpolation=cv2.INTER_AREA), A.Normalize(mean=MEAN, std=STD), ToTensorV2()])(image=img)["image"]
    tf = eval_transform(224)
    out = tf(image=img)["image"]
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    on_device = normalise_batch(out[None], MEAN, STD)[0]
    assert on_device.dtype == torch.float32
    assert torch.allclose(on_device, ref, atol=1e-5)
    assert torch.equal(out, tf(image=img)["image"])


def test_the_training_pipeline_hands_brightness_to_the_device_and_the_device_clips_at_white():
    img = np.full((424, 424, 3), 240, np.uint8)
    tf = train_transform(64, brightness=(1.2, 1.2))
    reseed(tf, 0)
    out = tf(image=img)
    assert torch.equal(out["image"], torch.full((3, 64, 64), 240, dtype=torch.uint8))  # geometry only on the CPU
    assert out["brightness"] == pytest.approx(1.2)
    batch = torch.stack([out["image"], out["image"]])
    x = normalise_batch(batch, MEAN, STD, torch.tensor([1.2, 1.0]))  # per image: 240 * 1.2 clips at 255
    ref = fixed_reference(64, {**PARAMS[0], "brightness": 1.2})(image=img)["image"]
    assert torch.allclose(x[0], ref, atol=1e-5)
    assert torch.allclose(grey_levels(x[1]), torch.full((3, 64, 64), 240.0), atol=1e-3)
    # The eval pipeline has no brightness to hand on.
    assert set(eval_transform(64)(image=img)) == {"image"}


def test_a_crop_fraction_out_of_range_is_a_clear_error():
    with pytest.raises(GzooError, match="crop_fraction"):
        train_transform(224, crop_fraction=0.0)
    with pytest.raises(GzooError, match="crop_fraction"):
        eval_transform(224, crop_fraction=1.5)


def test_extra_transforms_are_applied_after_the_warp_and_a_wrong_one_is_a_clear_error():
    img = galaxy(8)
    plain, noisy = train_transform(64), train_transform(64, extra=[{"_target_": "albumentations.GaussNoise", "std_range": (0.2, 0.3), "p": 1.0}])
    assert [type(t).__name__ for t in noisy.transforms] == ["GalaxyWarp", "GaussNoise", "ToTensorCHW"]
    reseed(plain, 5), reseed(noisy, 5)
    a, b = plain(image=img), noisy(image=img)
    assert a["brightness"] == b["brightness"]  # the extra draws after the warp: same geometry and brightness
    assert (b["image"].float() - a["image"].float()).std() > 20
    with pytest.raises(GzooError, match="data.augment.extra"):
        train_transform(64, extra=[{"_target_": "albumentations.NoSuchTransform"}])
    with pytest.raises(GzooError, match="data.augment.extra: .* is not an albumentations transform"):
        train_transform(64, extra=[{"_target_": "builtins.dict"}])


def test_load_image_gives_pils_pixels_for_jpeg_and_reads_other_formats(tmp_path):
    img = galaxy(7)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(img[..., 0]).save(tmp_path / "grey.jpg")
    Image.fromarray(img).save(tmp_path / "b.png")
    Image.fromarray(img).save(tmp_path / "png-in-disguise.jpg", format="PNG")
    for name in ("a.jpg", "grey.jpg", "b.png", "png-in-disguise.jpg"):
        with Image.open(tmp_path / name) as im:
            want = np.asarray(im.convert("RGB"))
        got = load_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (424, 424, 3)
        np.testing.assert_array_equal(got, want)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises((OSError, ValueError)):  # PIL: UnidentifiedImageError, an OSError
        load_image(tmp_path / "bad.jpg")
    # Read through the dataset, a bad file is a one-sentence error naming it.
    dataset = GalaxyZooDataset([tmp_path / "bad.jpg"], None, [1], eval_transform(32))
    with pytest.raises(GzooError, match=r"image .*bad\.jpg cannot be read \(.+\)\.$"):
        dataset[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_normalise_batch_on_the_gpu_equals_the_cpu():
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b = torch.linspace(0.9, 1.2, 8)
    cpu = normalise_batch(x, MEAN, STD, b)
    gpu = normalise_batch(x.cuda(), MEAN, STD, b.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    # brightness may stay on the CPU (as collate leaves it before the batch moves): it follows the images.
    torch.testing.assert_close(normalise_batch(x.cuda(), MEAN, STD, b).cpu(), cpu, atol=1e-5, rtol=0)
