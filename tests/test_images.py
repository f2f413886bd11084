"""gzoo.images: every image file gzoo reads (JPEG, PNG, TIFF, FITS; any letter case), 16-bit scaled,
greyscale to three channels, the FITS stretch; ids from file names; the training folder's images found
whatever the extension's case, two files of one galaxy refused naming both."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from gzoo.data import check_images, read_catalog
from gzoo.errors import GzooError
from gzoo.images import FitsStretch, check_image, image_id, image_suffix, index_images, load_image
from tests.conftest import write_kaggle

fits = pytest.importorskip("astropy.io.fits", reason="astropy (the fits extra, installed by make install) reads FITS")


def gradient16(h: int = 48, w: int = 64) -> np.ndarray:
    """A uint16 ramp over the whole 16-bit range (most of it above 255, where clipping would saturate)."""
    return np.linspace(0, 65535, h * w).reshape(h, w).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_greyscale_is_scaled_not_saturated(tmp_path, suffix):
    g = gradient16()
    path = tmp_path / f"1{suffix}"
    Image.fromarray(g).save(path)
    assert Image.open(path).mode == "I;16"
    # The negative control: what PIL's own conversion (the old load_image) makes of it.
    assert (np.asarray(Image.open(path).convert("RGB")) == 255).mean() > 0.9
    image = load_image(path)
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image, np.repeat((g >> 8).astype(np.uint8)[..., None], 3, axis=-1))
    assert (image == 255).mean() < 0.01 and check_image(path) is None


def test_16_bit_colour_is_scaled_the_same_way(tmp_path):
    rgb = np.stack([gradient16(), gradient16()[::-1], np.full((48, 64), 40000, np.uint16)], axis=-1)
    cv2.imwrite(str(tmp_path / "2.png"), rgb[..., ::-1])  # OpenCV writes BGR
    cv2.imwrite(str(tmp_path / "2.tif"), rgb[..., ::-1])
    for name in ("2.png", "2.tif"):
        np.testing.assert_array_equal(load_image(tmp_path / name), (rgb >> 8).astype(np.uint8))


def test_greyscale_and_rgba_become_three_channels(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 7)])).save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        np.testing.assert_array_equal(load_image(tmp_path / name), np.repeat(grey[..., None], 3, axis=-1))


def test_a_jpeg_decodes_the_same_under_any_name(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=90)
    for name in ("b.JPG", "c.jpeg", "d.png"):  # the last one a JPEG in disguise
        shutil.copy(tmp_path / "a.jpg", tmp_path / name)
        np.testing.assert_array_equal(load_image(tmp_path / name), load_image(tmp_path / "a.jpg"))


def galaxy_band(n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n] - n / 2
    return (1000 * np.exp(-(xx**2 + yy**2) / 60) + rng.normal(0, 2, (n, n))).astype(np.float32)


def test_fits_one_band_is_stretched_as_astropy_visualization_does_and_shown_north_up(tmp_path):
    """fits.method=percentile (gzoo's earlier stretch, kept): astropy's percentile interval and asinh stretch, one
    band as grey, north up; a blank pixel takes the band's sky level (gzoo.fits' rule)."""
    from astropy.visualization import AsinhStretch, AsymmetricPercentileInterval

    from gzoo.fits import FitsOptions, sky_level

    band = galaxy_band()
    band[0, 5] = 1e6  # the first FITS row is the bottom of the picture
    band[10, 10] = np.nan  # a blank pixel
    fits.PrimaryHDU(band).writeto(tmp_path / "NGC1300.fits")
    options = FitsOptions(method="percentile", background="none", size=64)  # 64 px: the frame's own pixels, unresampled
    image = load_image(tmp_path / "NGC1300.fits", options)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert image[-1, 5, 0] == 255
    filled = band.copy()
    filled[10, 10] = sky_level(band, options.clip_sigma)
    s = FitsStretch()
    lo, hi = AsymmetricPercentileInterval(s.low_percentile, s.high_percentile).get_limits(filled)
    expected = np.round(AsinhStretch(s.softening)(np.clip((filled - lo) / (hi - lo), 0, 1)) * 255)
    np.testing.assert_array_equal(image[::-1, :, 0], expected.astype(np.uint8))
    # A gentler softening shows less of the faint light: the stretch's parameter reaches the pixels.
    assert load_image(tmp_path / "NGC1300.fits", FitsStretch(softening=1.0)).mean() < load_image(tmp_path / "NGC1300.fits", FitsStretch()).mean() - 5


def test_fits_three_bands_compressed_and_uncompressed(tmp_path):
    """A g, r, i cube: i, r, g become red, green, blue (as SDSS mapped them); .fits and .fits.gz read alike."""
    from gzoo.fits import FitsOptions

    cube = np.stack([galaxy_band(seed=0), 2 * galaxy_band(seed=1), 0.5 * galaxy_band(seed=2)])
    fits.PrimaryHDU(cube).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(cube).writeto(tmp_path / "b.FITS.GZ")
    options = FitsOptions(method="percentile", background="none", size=64)
    a, b = load_image(tmp_path / "a.fits", options), load_image(tmp_path / "b.FITS.GZ", options)
    assert a.shape == (64, 64, 3) and (a[..., 0] != a[..., 1]).any()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[..., 0], load_image_of_band(tmp_path, cube[2], options))  # i is red: each band stretched on its own
    np.testing.assert_array_equal(a[..., 2], load_image_of_band(tmp_path, cube[0], options))  # g is blue
    fits.PrimaryHDU(np.zeros((4, 8, 8), np.float32)).writeto(tmp_path / "c.fits")
    assert "holds 4 bands but fits.bands names 3" in check_image(tmp_path / "c.fits")


def load_image_of_band(folder: Path, band: np.ndarray, options) -> np.ndarray:
    fits.PrimaryHDU(band).writeto(folder / "band.fits", overwrite=True)
    return load_image(folder / "band.fits", options)[..., 0]


def test_fits_without_astropy_is_one_sentence_saying_how_to_install(tmp_path, monkeypatch):
    fits.PrimaryHDU(galaxy_band()).writeto(tmp_path / "x.fits")
    monkeypatch.setitem(sys.modules, "astropy.io", None)  # as if astropy were not installed
    with pytest.raises(GzooError, match=r"x\.fits is a FITS file and reading FITS needs astropy; install it with pip install 'gzoo\[fits\]'"):
        load_image(tmp_path / "x.fits")
    with pytest.raises(GzooError, match="needs astropy"):  # not "a bad image" that on_bad_image=skip would leave out
        check_image(tmp_path / "x.fits")


def test_fits_stretch_values_are_checked():
    with pytest.raises(GzooError, match="must satisfy 0 <= low < high <= 100"):
        FitsStretch(low_percentile=99, high_percentile=1)


def test_ids_from_file_names():
    assert image_id("100150.jpg") == 100150 and image_id("0100150.JPG") == 100150
    assert image_id("J123456.78+012345.6.png") == "J123456.78+012345.6"
    assert image_id("NGC1300.fits.gz") == "NGC1300" and image_suffix("NGC1300.Fits.GZ") == ".fits.gz"
    assert image_suffix("notes.txt") is None and image_suffix(".jpg") is None


def test_a_folder_index_refuses_two_files_of_one_galaxy_naming_both(tmp_path):
    for name in ("100150.jpg", "0100150.jpg", "7.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(GzooError, match=r"0100150\.jpg and .*/100150\.jpg are both galaxy 100150; remove or rename one"):
        index_images(tmp_path)
    (tmp_path / "0100150.jpg").unlink()
    (tmp_path / "8.jpg").symlink_to(tmp_path / "gone.jpg")
    found = index_images(tmp_path)
    assert list(found.by_id) == [100150, 7] and [p.name for p in found.broken] == ["8.jpg"] and [p.name for p in found.others] == ["notes.txt"]


# ----------------------------------------------------------------------------- the training folder


@pytest.fixture
def kaggle(tmp_path) -> Path:
    return write_kaggle(tmp_path / "gz2", n=6)


def test_training_finds_images_whatever_the_extension_and_its_case(kaggle):
    images = kaggle / "images_training_rev1"
    ids = read_catalog(kaggle / "training_solutions_rev1.csv")["GalaxyID"].to_numpy()
    (images / f"{ids[0]}.jpg").rename(images / f"{ids[0]}.JPG")  # the case that was "no image"
    Image.open(images / f"{ids[1]}.jpg").save(images / f"{ids[1]}.png")
    (images / f"{ids[1]}.jpg").unlink()
    paths, bad = check_images(ids, images, progress=False)
    assert bad == [] and paths[ids[0]].name == f"{ids[0]}.JPG" and paths[ids[1]].name == f"{ids[1]}.png"
    assert load_image(paths[ids[0]]).shape == (424, 424, 3)


def test_training_refuses_two_images_of_one_galaxy_and_names_a_broken_link(kaggle):
    images = kaggle / "images_training_rev1"
    ids = read_catalog(kaggle / "training_solutions_rev1.csv")["GalaxyID"].to_numpy()
    shutil.copy(images / f"{ids[2]}.jpg", images / f"0{ids[2]}.jpg")
    with pytest.raises(GzooError, match=rf"0{ids[2]}\.jpg and .*/{ids[2]}\.jpg are both galaxy {ids[2]}"):
        check_images(ids, images, progress=False)
    (images / f"0{ids[2]}.jpg").unlink()
    (images / f"{ids[3]}.jpg").unlink()
    (images / f"{ids[3]}.jpg").symlink_to(kaggle / "elsewhere" / "x.jpg")
    with pytest.raises(
        GzooError, match=rf"image .*{ids[3]}\.jpg is a broken symbolic link \(its target .*elsewhere/x\.jpg does not exist\); fix the link or remove it\."
    ):
        check_images(ids, images, progress=False)
    (images / f"{ids[3]}.jpg").unlink()
    with pytest.raises(GzooError, match=rf"1 galaxies have no image in .*: GalaxyID {ids[3]} \(an image is <GalaxyID>\.jpg\|\.jpeg"):
        check_images(ids, images, progress=False)
