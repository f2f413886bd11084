"""gzoo.fits: survey FITS cutouts made into what the model was trained to see.

The lupton composite is astropy's; inverting it gives frames that come back as the same RGB image; a red and
a blue galaxy keep their colours (the earlier per-band stretch swaps them); per-band files, cubes and band
order; blank pixels by a stated rule; resampling to GZ2's scale; options recorded in a checkpoint; the catalogue
reader and the data set take per-band files; gzoo.prepare writes PNGs and a catalogue, resumably.
All on frames the tests make (gzoo.synth.survey), without the network."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gzoo.errors import GzooError
from gzoo.fits import (
    FitsCutout,
    FitsOptions,
    FitsStretch,
    Frames,
    composite,
    frames_from_rgb,
    load_fits,
    lupton_composite,
    options_of_checkpoint,
    resolve_options,
    write_band_files,
)
from gzoo.images import check_image, load_image
from gzoo.synth.survey import BLUE, RED, galaxy_frames, write_cutout

fits = pytest.importorskip("astropy.io.fits", reason="astropy (the fits extra, installed by make install) reads FITS")

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gz2-sample" / "images_test_rev1"


@pytest.fixture(autouse=True)
def messages_start_afresh(monkeypatch):
    """gzoo.fits says some things once per process (the scale, blank pixels 1st-3rd, 10th ...): each test starts a count of its own."""
    import gzoo.fits

    monkeypatch.setattr(gzoo.fits, "_said", {})


def a_galaxy_image() -> np.ndarray:
    """An RGB image to invert: a real GZ2 JPEG when the sample is here, else a synthetic one (gzoo.synth)."""
    jpegs = sorted(SAMPLE.glob("*.jpg"))
    if jpegs:
        return load_image(jpegs[3])
    from gzoo import synth

    return np.asarray(synth.render(synth.sample_galaxy(0, 5), 0, 5))


def colour_ratio(image: np.ndarray) -> float:
    """Red over blue in the galaxy's middle (the central 64 x 64 px of the 424 px composite)."""
    middle = image[180:244, 180:244].reshape(-1, 3).astype(float).mean(axis=0)
    return middle[0] / middle[2]


def test_the_lupton_composite_is_astropys_make_lupton_rgb():
    from astropy.visualization import make_lupton_rgb

    rng = np.random.default_rng(0)
    bands = rng.lognormal(-2, 2, (3, 40, 40)) * rng.choice([-1, 1], (3, 40, 40), p=[0.2, 0.8])  # faint, bright, negative
    o = FitsOptions()
    ours = lupton_composite(bands, o)
    scaled = [bands[c] * o.scales[c] for c in range(3)]
    theirs = make_lupton_rgb(*scaled, minimum=o.minimum, stretch=o.stretch, Q=o.q)
    assert (ours == 255).any() and (ours == 0).any()  # saturated and black pixels are both compared
    assert (ours.astype(int) - theirs).__abs__().max() <= 1 and (ours == theirs).mean() > 0.999
    # The negative control: another Q gives other pixels.
    assert (lupton_composite(bands, FitsOptions(q=2.0)) != theirs).mean() > 0.3


def test_frames_inverted_from_an_rgb_image_come_back_as_that_image(tmp_path):
    """Done when: g, r, i FITS frames made from an RGB image by inverting the composite (the preset's parameters)
    come back through gzoo as the image, within 2 grey levels on 99 % of pixels (here: all of them, exactly)."""
    rgb = a_galaxy_image()
    o = FitsOptions(background="none")  # the frames are sky-subtracted, as SDSS's are
    r90, gz2_scale = 10.0, 0.02 * 10.0
    paths = write_band_files(tmp_path, "gal", frames_from_rgb(rgb, o, gz2_scale), o.bands, gz2_scale)
    back = load_image(FitsCutout(tuple(paths), r90), o)
    close = np.abs(back.astype(int) - rgb.astype(int)) <= 2
    assert close.mean() >= 0.99 and (back == rgb).mean() > 0.999
    # Negative controls: the frames' bands in the wrong order, and the earlier per-band stretch, do not give it back.
    swapped = load_image(FitsCutout(tuple(paths[::-1]), r90), o)
    assert (np.abs(swapped.astype(int) - rgb) <= 2).mean() < 0.9
    assert (np.abs(load_image(FitsCutout(tuple(paths), r90), FitsStretch()).astype(int) - rgb) <= 2).mean() < 0.5


def test_a_red_and_a_blue_galaxy_keep_their_colours_where_the_per_band_stretch_swaps_them(tmp_path):
    red = write_cutout(tmp_path, "red", galaxy_frames(RED, pixel_scale=0.262, side=96, seed=1), pixel_scale=0.262)
    blue = write_cutout(tmp_path, "blue", galaxy_frames(BLUE, pixel_scale=0.262, side=96, seed=2), pixel_scale=0.262)
    lupton = [colour_ratio(load_image(FitsCutout(tuple(p), g.r90))) for p, g in ((red, RED), (blue, BLUE))]
    assert lupton[0] > 1.5 > 1.0 > lupton[1] * 0.95 and lupton[0] > 1.5 * lupton[1]  # red is red, blue is not
    # The negative control: each band stretched alone makes them alike, here even the red one the bluer.
    percentile = [colour_ratio(load_image(FitsCutout(tuple(p), g.r90), FitsOptions(method="percentile"))) for p, g in ((red, RED), (blue, BLUE))]
    assert not percentile[0] > 1.2 * percentile[1]


def test_band_order_per_band_files_cubes_and_their_band_keywords(tmp_path):
    frames = galaxy_frames(RED, pixel_scale=0.396, side=64, seed=3)  # g, r, i
    files = write_cutout(tmp_path, "gal", frames, pixel_scale=0.396)
    per_band = load_image(FitsCutout(tuple(files), RED.r90))
    header = fits.Header()
    for k, b in enumerate("gri"):
        header[f"BAND{k}"] = b
    header.update(fits.getheader(files[0]))
    fits.PrimaryHDU(frames, header=header).writeto(tmp_path / "cube.fits")
    fits.PrimaryHDU(frames[::-1].copy(), header=fits.Header([(f"BAND{k}", b) for k, b in enumerate("irg")]) + fits.getheader(files[0])).writeto(
        tmp_path / "irg.fits"
    )
    assert np.array_equal(load_image(FitsCutout((tmp_path / "cube.fits",), RED.r90)), per_band)
    assert np.array_equal(load_image(FitsCutout((tmp_path / "irg.fits",), RED.r90)), per_band)  # BAND0.. name the planes
    # grz data: fits.bands and fits.rgb map z, r, g to red, green, blue.
    grz = FitsOptions(bands=["g", "r", "z"], rgb=["z", "r", "g"])
    assert np.array_equal(load_image(FitsCutout(tuple(files), RED.r90), grz), per_band)
    # The negative control: shown as r, g, i the galaxy's colours change.
    assert not np.array_equal(load_image(FitsCutout(tuple(files), RED.r90), FitsOptions(rgb=["r", "g", "i"])), per_band)
    with pytest.raises(GzooError, match=r"fits.rgb=\['x', 'r', 'g'\] must name three of fits.bands"):
        FitsOptions(rgb=["x", "r", "g"])
    # A cube of other bands than fits.bands is refused, naming both; an image with its mask and variance is one band.
    assert "its bands are g,r,i but fits.bands names g,r,z" in check_image(tmp_path / "cube.fits", FitsOptions(bands=["g", "r", "z"], rgb=["z", "r", "g"]))
    hsc = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frames[1], name="IMAGE"), fits.ImageHDU(np.zeros((64, 64), np.int32), name="MASK")])
    hsc.writeto(tmp_path / "hsc.fits")
    grey = load_image(tmp_path / "hsc.fits")
    assert (grey[..., 0] == grey[..., 2]).all() and grey.max() > 50


def test_blank_pixels_take_the_sky_and_are_counted_and_an_all_nan_band_is_one_sentence(tmp_path, caplog):
    from gzoo.data import GalaxyZooDataset
    from gzoo.transforms import eval_transform

    frames = galaxy_frames(BLUE, pixel_scale=0.396, side=80, seed=4)
    rng = np.random.default_rng(0)
    blank = rng.random(frames.shape[1:]) < 0.05
    frames[1][blank] = np.nan
    frames[2][blank & (rng.random(blank.shape) < 0.5)] = np.inf
    files = write_cutout(tmp_path, "holes", frames, pixel_scale=0.396)
    with caplog.at_level(logging.WARNING, logger="gzoo"):
        image = load_image(FitsCutout(tuple(files), BLUE.r90))
    said = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    nan, inf = int(blank.sum()), int(np.isinf(frames[2]).sum())
    (line,) = said
    assert (
        f"holes_i.fits: {inf} ({100 * inf / blank.size:.1f} %) of its i band and {nan} ({100 * nan / blank.size:.1f} %) of its r band of {blank.size} pixels"
        in line
    )
    assert np.isfinite(image).all() and image.max() > 100  # the galaxy is there
    # ... and a network predicts it, through the prediction path's data set (gzoo.inference).
    from gzoo.data import make_loader
    from gzoo.inference import image_dataset, predict_loader
    from gzoo.module import GalaxyZooModule

    net = GalaxyZooModule(timm_name="test_efficientnet", image_size=32, pretrained=False).net.eval()
    loader = make_loader(image_dataset(net, [FitsCutout(tuple(files), BLUE.r90)], ["holes"], on_bad_image="error"), 1)
    (batch,) = list(predict_loader(net, loader))
    assert batch["error"] == [""] and np.isfinite(batch["pred"]).all() and batch["pred"].shape == (1, 37)
    # A band of NaN only: one sentence naming the file, through the data set as training and prediction read it.
    frames[0][:] = np.nan
    files = write_cutout(tmp_path, "empty", frames, pixel_scale=0.396)
    dataset = GalaxyZooDataset([FitsCutout(tuple(files))], None, ["empty"], eval_transform(32))
    with pytest.raises(GzooError) as e:
        dataset[0]
    assert str(e.value) == (
        f"image {files[0]} + {files[1]} + {files[2]} cannot be read (every pixel of its g band is NaN or inf, so there is nothing to show; "
        "check the file or leave it out)."
    )
    skip = GalaxyZooDataset([FitsCutout(tuple(files))], None, ["empty"], eval_transform(32), on_bad_image="skip")
    assert "every pixel of its g band is NaN" in skip[0]["error"]


def petrosian_r90(image: np.ndarray) -> float:
    from gzoo.tools.fits_check import _radii, petrosian

    grey = image.astype(float).mean(axis=-1)
    return petrosian(grey - np.median(grey[:40, :40]), _radii())[1]


def test_a_cutout_at_another_pixel_scale_is_resampled_to_gz2s_scale(tmp_path, capsys):
    """GZ2: 0.02 x petroR90_r arcsec per pixel, so the galaxy's R90 spans 50 px, whatever the survey's pixels."""
    sizes = {}
    for scale, side in ((0.262, 160), (0.6, 240)):
        files = write_cutout(tmp_path, f"gal{scale}", galaxy_frames(BLUE, pixel_scale=scale, side=side, noise=0.0), pixel_scale=scale)
        sizes[scale] = petrosian_r90(load_image(FitsCutout(tuple(files), BLUE.r90)))
        unscaled = load_image(FitsCutout(tuple(files)))  # no size: the frame's field shown as it is
    assert abs(sizes[0.262] - sizes[0.6]) <= 3 and 40 <= sizes[0.262] <= 60
    assert petrosian_r90(unscaled) < 0.7 * sizes[0.6]  # the negative control: 240 px of 0.6 arcsec show the galaxy smaller
    assert "shown at their own scale" in capsys.readouterr().out


def test_the_checkpoints_options_are_predictions_unless_told_otherwise():
    from gzoo.module import GalaxyZooModule

    module = GalaxyZooModule(timm_name="test_efficientnet", image_size=32, pretrained=False, fits={"q": 10.0, "bands": ["g", "r", "z"], "rgb": ["z", "r", "g"]})
    ckpt = {"hyper_parameters": dict(module.hparams)}
    recorded = options_of_checkpoint(ckpt)
    assert recorded.q == 10.0 and recorded.rgb == ["z", "r", "g"] and recorded.stretch == FitsOptions().stretch
    assert options_of_checkpoint({"hyper_parameters": {}}) == FitsOptions()  # trained before gzoo recorded them: the preset
    assert resolve_options(recorded, None) == recorded
    told = resolve_options(recorded, FitsOptions(stretch=0.5))  # what the user changed from the defaults wins, the rest is the checkpoint's
    assert told.stretch == 0.5 and told.q == 10.0 and told.rgb == ["z", "r", "g"]
    assert resolve_options(recorded, {"q": 8.0}).q == 8.0
    assert resolve_options(recorded, FitsStretch()).method == "percentile"


def test_a_catalogue_of_per_band_files_trains_through_the_data_module(tmp_path):
    from gzoo.data import GalaxyZooDataModule
    from gzoo.data.catalog import read_own_catalog

    rows = []
    for k in range(8):
        g = RED if k % 2 else BLUE
        files = write_cutout(tmp_path / "fits", f"gal{k}", galaxy_frames(g, pixel_scale=0.262, side=48, seed=k), pixel_scale=0.262)
        rows.append({"id_str": f"gal{k}", **{f"file_{b}": f"fits/{p.name}" for b, p in zip("gri", files)}, "petroR90_r": g.r90, "is_red": float(k % 2)})
    pd.DataFrame(rows).to_csv(tmp_path / "cat.csv", index=False)
    _, items = read_own_catalog(tmp_path / "cat.csv", ["is_red"])
    assert isinstance(items["gal1"], FitsCutout) and items["gal1"].galaxy_size == RED.r90 and items["gal1"].files[2].name == "gal1_i.fits"
    dm = GalaxyZooDataModule(
        root=tmp_path, catalog=tmp_path / "cat.csv", labels=["is_red"], layout="catalog", image_size=32, val_fraction=0.25, progress=False, num_workers=0
    )
    item = dm.dataset("val")[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].float().mean() > 2
    # Half the bands given is one sentence naming the row.
    pd.DataFrame([{**rows[0], "file_i": ""}]).to_csv(tmp_path / "half.csv", index=False)
    with pytest.raises(GzooError, match=r"half.csv, row 2 gives file_g, file_r but not file_i"):
        read_own_catalog(tmp_path / "half.csv", ["is_red"])


def test_prepare_writes_pngs_and_a_catalogue_and_finishes_a_stopped_run(tmp_path, monkeypatch):
    from gzoo import prepare

    rows = []
    for k in range(3):
        files = write_cutout(tmp_path / "fits", f"gal{k}", galaxy_frames(BLUE, pixel_scale=0.262, side=48, seed=k), pixel_scale=0.262)
        rows.append({"id_str": f"gal{k}", **{f"file_{b}": str(p) for b, p in zip("gri", files)}, "petroR90_r": BLUE.r90, "is_bar": 0.5})
    pd.DataFrame(rows).to_parquet(tmp_path / "cat.parquet")
    out = tmp_path / "out"
    args = [f"catalog={tmp_path / 'cat.parquet'}", f"out={out}", "num_workers=0", "progress=false"]
    (out).mkdir()
    made = out / "gal1.png"
    assert prepare.main([*args, "preview=3"]) == 0
    table = pd.read_parquet(out / "catalog.parquet")
    assert table.columns.tolist() == ["id_str", "file_loc", "petroR90_r", "is_bar"] and table.file_loc.tolist() == ["gal0.png", "gal1.png", "gal2.png"]
    # The loader's path and the PNG are the same pixels.
    assert np.array_equal(load_image(made), load_fits(FitsCutout(tuple(Path(rows[1][f"file_{b}"]) for b in "gri"), BLUE.r90)))
    assert (out / "preview.png").is_file() and not list(out.glob(".*tmp"))
    # Resumable: an existing PNG is kept (a stopped run's PNGs are whole), a missing one is made.
    before = made.stat().st_mtime_ns
    (out / "gal2.png").unlink()
    assert prepare.main(args) == 0 and made.stat().st_mtime_ns == before and (out / "gal2.png").is_file()
    # Other options than the PNGs were made with: refused, nothing changed.
    assert prepare.main([*args, "fits.q=12"]) == 2 and made.stat().st_mtime_ns == before


def test_a_16_bit_image_of_12_bit_data_is_said_once_with_a_count(tmp_path, caplog):
    from PIL import Image

    from gzoo import images

    monkey_count = images._few_bits
    data = np.linspace(0, 4000, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "twelve.png")
    with caplog.at_level(logging.WARNING, logger="gzoo"):
        image = load_image(tmp_path / "twelve.png")
    assert image.max() <= 15  # nearly black, as the 16-bit range scales it ...
    (said,) = [r.getMessage() for r in caplog.records if "12-bit data" in r.getMessage()]  # ... and said
    assert "twelve.png is a 16-bit image whose brightest pixel is 4000 of 65535" in said and f"({monkey_count + 1} such image" in said
    caplog.clear()
    Image.fromarray((data * 16).astype(np.uint16)).save(tmp_path / "full.png")  # the negative control: the full range is not said
    with caplog.at_level(logging.WARNING, logger="gzoo"):
        load_image(tmp_path / "full.png")
    assert not [r for r in caplog.records if "12-bit" in r.getMessage()]


def test_one_band_is_grey_and_composite_takes_frames_as_read(tmp_path):
    frames = galaxy_frames(BLUE, pixel_scale=0.396, side=64, seed=5)
    fits.PrimaryHDU(frames[1]).writeto(tmp_path / "r.fits")
    grey = load_image(tmp_path / "r.fits")
    assert grey.shape == (424, 424, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all() and grey.max() > 50
    o = FitsOptions()
    assert np.array_equal(composite(Frames(frames, tuple(o.bands), None), o), load_fits(FitsCutout(tuple(write_cutout(tmp_path, "g", frames, None))), o))


@pytest.mark.slow
def test_training_on_per_band_fits_records_its_options_for_prediction(tmp_path):
    """data=catalog with file_g/file_r/file_i columns trains through the loader's composites, and the checkpoint
    records data.fits, which gzoo.fits.options_of_checkpoint gives prediction."""
    from gzoo.train import train
    from tests.conftest import make_cfg

    rows = []
    for k in range(24):
        g = RED if k % 2 else BLUE
        files = write_cutout(tmp_path / "fits", f"gal{k}", galaxy_frames(g, pixel_scale=0.262, side=64, seed=k), pixel_scale=0.262)
        rows.append({"id_str": f"gal{k}", **{f"file_{b}": f"fits/{p.name}" for b, p in zip("gri", files)}, "petroR90_r": g.r90, "is_red": float(k % 2)})
    pd.DataFrame(rows).to_csv(tmp_path / "cat.csv", index=False)
    metrics = train(make_cfg(tmp_path, tmp_path, "data=catalog", f"data.catalog={tmp_path / 'cat.csv'}", "data.labels=[is_red]", "data.fits.q=9"))
    recorded = options_of_checkpoint(metrics["best_checkpoint"])
    assert recorded.q == 9.0 and recorded.stretch == FitsOptions().stretch
    assert resolve_options(recorded, {"stretch": 0.5}) == FitsOptions(q=9.0, stretch=0.5)
