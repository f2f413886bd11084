"""The fast transforms against the albumentations reference: same geometry, crop, values."""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from gzoo.data import load_rgb
from gzoo.errors import GzooError
from gzoo.transforms import (
    CentralCrop,
    central_crop,
    eval_transform,
    normalise_batch,
    reference_train_transform,
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


def grey_levels(x: torch.Tensor) -> torch.Tensor:
    """Normalised tensor back to 0..255 units."""
    return x * STD_PX + torch.tensor(MEAN).view(3, 1, 1) * 255


def centroids(x: torch.Tensor) -> np.ndarray:
    """(3, 2) brightness-weighted (x, y) centre of each channel, background removed."""
    g = grey_levels(x).clamp_min(0).numpy()
    g = np.where(g > 0.3 * g.max(axis=(1, 2), keepdims=True), g, 0)
    yy, xx = np.mgrid[: g.shape[1], : g.shape[2]]
    return np.array([[(xx * c).sum() / c.sum(), (yy * c).sum() / c.sum()] for c in g])


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
    fast = train_transform(size, MEAN, STD).apply(img, **p)["image"]
    ref = fixed_reference(size, p)(image=img)["image"]
    assert fast.shape == ref.shape == (3, size, size) and fast.dtype == ref.dtype == torch.float32
    # One bilinear warp against warp + area resize: interpolation differs a little, geometry not at all.
    assert (grey_levels(fast) - grey_levels(ref)).abs().mean() < 1.5


@pytest.mark.parametrize("p", PARAMS[1:], ids=["rot37-hflip", "rot-150-both", "rot95-vflip"])
def test_marked_spots_land_where_the_reference_puts_them(p):
    img = spots()
    fast = train_transform(224, MEAN, STD).apply(img, **p)["image"]
    ref = fixed_reference(224, p)(image=img)["image"]
    np.testing.assert_allclose(centroids(fast), centroids(ref), atol=0.5)
    # ... and the test would notice a mistake: without the flips the spots land elsewhere.
    wrong = train_transform(224, MEAN, STD).apply(img, **{**p, "hflip": not p["hflip"]})["image"]
    assert np.abs(centroids(wrong) - centroids(ref)).max() > 5


def test_small_outputs_shrink_by_area_like_the_reference():
    img = galaxy(1)
    for size in (32, 96):
        fast = train_transform(size, MEAN, STD).apply(img, **PARAMS[2])["image"]
        ref = fixed_reference(size, PARAMS[2])(image=img)["image"]
        assert fast.shape == (3, size, size)
        assert (grey_levels(fast) - grey_levels(ref)).abs().mean() < 1.5


def test_other_crop_fractions_match_the_reference():
    img = galaxy(2)
    fast = train_transform(224, MEAN, STD, crop_fraction=0.75).apply(img, **PARAMS[1])["image"]
    ref = fixed_reference(224, PARAMS[1], crop_fraction=0.75)(image=img)["image"]
    assert (grey_levels(fast) - grey_levels(ref)).abs().mean() < 1.5


def test_random_train_transform_has_the_reference_value_range_and_statistics():
    # Both generators seeded, so the test gives the same answer every run. 200 draws each: one image's mean
    # varies by ~6.5 grey levels (brightness and where the blob lands), so the two averages agree within
    # ~0.65 (one standard error); the tolerance is about 4 of those.
    img, n = galaxy(3), 200
    random.seed(0)
    fast = torch.stack([train_transform(224, MEAN, STD)(image=img)["image"] for _ in range(n)])
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
    brighter = train_transform(224, MEAN, STD, brightness=(1.0, 1.3))
    assert grey_diff(torch.stack([brighter(image=img)["image"] for _ in range(n)]), ref) > 2.5


def test_brightness_clips_at_white_like_the_reference():
    img = np.full((424, 424, 3), 240, np.uint8)
    p = {**PARAMS[0], "brightness": 1.2}
    fast = train_transform(64, MEAN, STD).apply(img, **p)["image"]
    ref = fixed_reference(64, p)(image=img)["image"]
    assert torch.allclose(grey_levels(fast), torch.full_like(fast, 255.0), atol=1e-3)
    assert torch.allclose(fast, ref, atol=1e-5)


def test_draws_cover_the_configured_ranges_and_follow_pythons_seed():
    tf = train_transform(224, MEAN, STD, rotate=90, shift=0.05, zoom=(0.9, 1.1), hflip=0.5, vflip=0.0, brightness=(0.95, 1.05))
    random.seed(1)
    draws = [tf.draw() for _ in range(400)]
    angles = np.array([d["angle"] for d in draws])
    assert -90 <= angles.min() < -80 and 80 < angles.max() <= 90
    assert all(abs(s) <= 0.05 for d in draws for s in d["shift"])
    assert all(0.9 <= z <= 1.1 for d in draws for z in d["zoom"])
    assert any(d["zoom"][0] != d["zoom"][1] for d in draws)  # x and y zoom drawn independently, as the reference
    assert all(0.95 <= d["brightness"] <= 1.05 for d in draws)
    assert 0.4 < np.mean([d["hflip"] for d in draws]) < 0.6 and not any(d["vflip"] for d in draws)
    img = galaxy(4)
    random.seed(7)
    a = tf(image=img)["image"]
    random.seed(7)
    assert torch.equal(a, tf(image=img)["image"])
    assert not torch.equal(a, tf(image=img)["image"])


def test_eval_transform_is_the_reference_crop_resize_normalise_and_deterministic():
    img = galaxy(5)
    ref = A.Compose(
        [CentralCrop(0.5), A.Resize(224, 224, interpolation=cv2.INTER_AREA), A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    )(image=img)["image"]
    tf = eval_transform(224, MEAN, STD)
    out = tf(image=img)["image"]
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(out, tf(image=img)["image"])


def test_uint8_output_normalised_on_the_device_equals_the_float_output():
    img = galaxy(6)
    for make in (lambda n: eval_transform(224, MEAN, STD, normalise=n), lambda n: train_transform(224, MEAN, STD, normalise=n)):
        random.seed(3)
        as_float = make(True)(image=img)["image"]
        random.seed(3)
        out = make(False)(image=img)
        as_uint8, brightness = out["image"], out.get("brightness")
        assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape
        # The same arithmetic, on the CPU in one table or on the device: equal to float32 rounding.
        on_device = normalise_batch(as_uint8[None], MEAN, STD, None if brightness is None else torch.tensor([brightness]))[0]
        assert ((on_device - as_float) * STD_PX).abs().max() < 1e-3


def test_the_training_pipeline_hands_brightness_to_the_device_and_the_device_clips_at_white():
    img = np.full((424, 424, 3), 240, np.uint8)
    out = train_transform(64, MEAN, STD, normalise=False).apply(img, **{**PARAMS[0], "brightness": 1.2})
    assert torch.equal(out["image"], torch.full((3, 64, 64), 240, dtype=torch.uint8))  # geometry only on the CPU
    assert out["brightness"] == pytest.approx(1.2)
    batch = torch.stack([out["image"], out["image"]])
    x = normalise_batch(batch, MEAN, STD, torch.tensor([1.2, 1.0]))  # per image: 240 * 1.2 clips at 255
    ref = fixed_reference(64, {**PARAMS[0], "brightness": 1.2})(image=img)["image"]
    assert torch.allclose(x[0], ref, atol=1e-5)
    assert torch.allclose(grey_levels(x[1]), torch.full((3, 64, 64), 240.0), atol=1e-3)
    # The eval pipeline has no brightness to hand on.
    assert set(eval_transform(64, MEAN, STD, normalise=False)(image=img)) == {"image"}


def test_a_crop_fraction_out_of_range_is_a_clear_error():
    with pytest.raises(GzooError, match="crop_fraction"):
        train_transform(224, MEAN, STD, crop_fraction=0.0)
    with pytest.raises(GzooError, match="crop_fraction"):
        eval_transform(224, MEAN, STD, crop_fraction=1.5)


def test_load_rgb_gives_pils_pixels_for_jpeg_and_reads_other_formats(tmp_path):
    img = galaxy(7)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(img[..., 0]).save(tmp_path / "grey.jpg")
    Image.fromarray(img).save(tmp_path / "b.png")
    for name in ("a.jpg", "grey.jpg", "b.png"):
        with Image.open(tmp_path / name) as im:
            want = np.asarray(im.convert("RGB"))
        got = load_rgb(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (424, 424, 3)
        np.testing.assert_array_equal(got, want)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(Exception):
        load_rgb(tmp_path / "bad.jpg")
