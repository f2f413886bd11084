"""FITS composites checked against the real GZ2 JPEGs: the preset's calibration, the predictions, the picture.

    python -m gzoo.tools.fits_check task=calibrate [jpegs=DIR]
    python -m gzoo.tools.fits_check task=predict ckpt=PATH [jpegs=DIR] [work=DIR]
    python -m gzoo.tools.fits_check task=picture [jpegs=DIR] [out=docs/fits_composites.png] [overwrite=true]

calibrate: each JPEG is inverted through the lupton composite and measured as SDSS measures galaxies: the
median Petrosian R90 of the r band for several Q (GZ2 drew petroR90_r as 50 px, 424 px at 0.02 x petroR90_r
arcsec per pixel), the median sky grey level, and the colours and surface brightness the preset's scales and
stretch are set from (gzoo.fits, PRESET_*).

predict: the JPEGs become per-band g, r, i FITS frames by inverting the composite (gzoo.fits.frames_from_rgb,
with a WCS header of 0.02 x r90 arcsec per pixel), and the checkpoint predicts (1) the JPEGs, (2) the frames (the
FITS path, with the checkpoint's options; background=none, as the frames are sky-subtracted by construction, and
background=median), (3) the frames resampled to other pixel scales (0.262 arcsec, the Legacy Surveys', coarser
than GZ2's here; 0.168, HSC's, finer), the header saying so and the galaxy's size given, so gzoo resamples them
back to GZ2's scale, and (4) the same frames without the size (negative control: shown at their own scale). It
prints the RMSE of each against the JPEGs' predictions.

picture: the same galaxies as JPEG, through the earlier per-band stretch and through the new composite.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gzoo.config import option, run_tool
from gzoo.errors import GzooError
from gzoo.fits import FitsCutout, FitsOptions, Frames, composite, frames_from_rgb, invert_lupton, lupton_slope, write_band_files
from gzoo.log import say

SAMPLE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "gz2-sample" / "images_test_rev1"
R90_PX = 50  # petroR90_r in GZ2's pixels: 0.02 x petroR90_r arcsec per pixel


@dataclass
class FitsCheckOptions:
    task: str = option("calibrate", "calibrate, predict or picture", choices=("calibrate", "predict", "picture"))
    jpegs: Path = option(SAMPLE, "a folder of GZ2 JPEGs (the 200 real test images of ../shared/data/gz2-sample)")
    ckpt: Path | None = option(None, "predict: a checkpoint written by gzoo.train")
    work: Path = option(Path("outputs/fits_check"), "predict: where the FITS frames are written")
    limit: int = option(200, "at most this many JPEGs", low=1)
    r90: float = option(10.0, "predict: the petroR90_r (arcsec) given to every galaxy: the JPEG's pixel is 0.02 x r90 arcsec", above=0)
    pixel_scales: list[float] = option(
        [0.262, 0.168], "predict: other pixel scales (arcsec) the frames are resampled to: coarser and finer than GZ2's", above=0
    )
    out: Path = option(Path("docs/fits_composites.png"), "picture: the PNG to write")
    overwrite: bool = option(False, "picture: replace an existing out")


def jpegs_of(folder: Path, limit: int) -> list[Path]:
    files = sorted(folder.glob("*.jpg"))[:limit]
    if not files:
        raise GzooError(f"no JPEGs in {folder}; set jpegs= to a folder of GZ2 JPEGs.")
    return files


# ----------------------------------------------------------------------------- calibrate


def _radii() -> np.ndarray:
    yy, xx = np.mgrid[:424, :424] - 211.5
    return np.hypot(yy, xx)


def petrosian(band: np.ndarray, radii: np.ndarray) -> tuple[float, float, float]:
    """(R50, R90, the Petrosian flux) of a sky-subtracted band about the frame's centre, in pixels, as SDSS defines
    them: the Petrosian radius where the annulus [0.8 R, 1.25 R] is 0.2 of the mean within R; the flux within 2 of
    it; the radii holding 50 % and 90 % of that flux. NaN when the ratio never falls to 0.2."""
    ring = radii.astype(int).ravel()
    flux = np.cumsum(np.bincount(ring, band.ravel())[:212])
    area = np.cumsum(np.bincount(ring)[:212])
    for r in range(2, 211):
        lo, hi = int(0.8 * r), min(int(np.ceil(1.25 * r)), 211)
        if (flux[hi] - flux[lo]) / (area[hi] - area[lo]) < 0.2 * flux[r] / area[r]:
            total = flux[min(2 * r, 211)]
            return float(np.argmax(flux >= 0.5 * total)), float(np.argmax(flux >= 0.9 * total)), float(total)
    return np.nan, np.nan, np.nan


def inverted(rgb: np.ndarray, q: float) -> np.ndarray:
    """The composite's input x (3, H, W) (R, G, B after scales and minimum) of a JPEG at stretch 1, its sky subtracted."""
    x = invert_lupton(rgb, FitsOptions(q=q, stretch=1.0, scales=[1.0, 1.0, 1.0], minimum=[0.0, 0.0, 0.0]))
    sky = np.median(x[:, _radii() > 190], axis=1)
    return x - sky[:, None, None]


def calibrate(files: list[Path]) -> dict:
    """The preset's measurements on GZ2 JPEGs (see gzoo.fits, PRESET_*), said and returned."""
    from gzoo.images import load_image

    radii = _radii()
    images = [load_image(f) for f in files]
    r90 = {q: float(np.nanmedian([petrosian(inverted(a, q)[1], radii)[1] for a in images])) for q in (6.0, 8.0, 8.5, 10.0)}
    say("median Petrosian R90 of the inverted r band (GZ2: 50 px) by Q: " + ", ".join(f"Q={q:g}: {v:.0f} px" for q, v in r90.items()))
    sky = np.median([np.median(a[radii > 190], axis=0) for a in images], axis=0)
    q = 8.0
    colours, surface = [], []
    for a in images:
        x = inverted(a, q)
        r50, r90_, _ = petrosian(x[1], radii)
        if not np.isfinite(r90_):
            continue
        inside = x[:, radii <= r90_].sum(axis=1)  # R (i), G (r), B (g) at scale 1, stretch 1
        colours.append((-2.5 * np.log10(inside[2] / inside[1]), -2.5 * np.log10(inside[1] / inside[0])))
        surface.append(x[1, radii <= r50].mean())
    gr, ri = np.nanmedian(np.asarray(colours), axis=0)
    scale_b, scale_r = 10 ** (0.4 * (0.75 - gr)), 10 ** (-0.4 * (0.38 - ri))  # g-r = 0.75, r-i = 0.38 with scale_G = 1
    stretch = 0.396**2 * 10 ** (-0.4 * (20.8 - 22.5)) / float(np.median(surface))  # mu50 = 20.8 r mag/arcsec^2
    target = (sky + 0.5) / 255  # the sky (0 after the background step) at the JPEGs' median sky grey level
    mean = target.mean()
    intensity = np.sinh(mean / lupton_slope(q)) * stretch / q
    minimum = -target * intensity / mean
    result = {
        "q": q,
        "sky_grey": sky.tolist(),
        "gr_at_scale_1": float(gr),
        "ri_at_scale_1": float(ri),
        "scales": [scale_r, 1.0, scale_b],
        "stretch": stretch,
        "minimum": minimum.tolist(),
    }
    say(f"median sky of the JPEGs (R, G, B grey levels): {sky.tolist()}; colours at scales 1: g-r {gr:.3f}, r-i {ri:.3f}")
    say(f"preset: q={q:g} stretch={stretch:.4f} scales=[{scale_r:.3f},1,{scale_b:.3f}] minimum=[{','.join(f'{m:.5f}' for m in minimum)}]")
    return result


# ----------------------------------------------------------------------------- predict


def write_frames(files: list[Path], work: Path, options: FitsOptions, r90: float, scales: list[float]) -> dict[float, list[FitsCutout]]:
    """Per-band FITS of each JPEG at the GZ2 scale (0.02 x r90 arcsec per pixel), and resampled to each of ``scales``
    arcsec per pixel (a coarser survey's pixels average the light, gzoo.fits.resample), with WCS headers; the
    cutouts by pixel scale, each with the galaxy's size r90."""
    from gzoo.fits import resample
    from gzoo.images import load_image

    gz2_scale = options.gz2_scale * r90
    cutouts: dict[float, list[FitsCutout]] = {gz2_scale: [], **{s: [] for s in scales}}
    for f in files:
        frames = frames_from_rgb(load_image(f), options, gz2_scale)
        for scale in cutouts:
            # The same sky at another pixel scale: the same surface brightness, so each value scales with the pixel's area.
            zoomed = frames if scale == gz2_scale else resample(frames, gz2_scale / scale, 424) * (scale / gz2_scale) ** 2
            cutouts[scale].append(FitsCutout(tuple(write_band_files(work / f"at_{scale:g}", f.stem, zoomed, options.bands, scale)), r90))
    return cutouts


def predict_check(o: FitsCheckOptions) -> dict:
    """The RMSE of each FITS case's predictions against the JPEGs' (see the module's doc)."""
    from dataclasses import replace

    from gzoo.data import make_loader
    from gzoo.fits import options_of_checkpoint
    from gzoo.inference import image_dataset, predict_loader
    from gzoo.module import load_net

    if o.ckpt is None:
        raise GzooError("task=predict needs ckpt=PATH, a checkpoint written by gzoo.train.")
    files = jpegs_of(o.jpegs, o.limit)
    options = options_of_checkpoint(o.ckpt)
    net = load_net(o.ckpt)
    ids = list(range(len(files)))
    gz2_scale = options.gz2_scale * o.r90
    cutouts = write_frames(files, o.work, replace(options, background="none"), o.r90, o.pixel_scales)

    def predictions(items, fits=None) -> np.ndarray:
        loader = make_loader(image_dataset(net, items, ids, on_bad_image="error", fits=fits), 50, 0)
        return np.concatenate([batch["pred"] for batch in predict_loader(net, loader)])

    jpeg = predictions(files)
    rmse = lambda p: float(np.sqrt(np.mean((p - jpeg) ** 2)))  # noqa: E731
    none = replace(options, background="none")  # the frames are sky-subtracted, as SDSS's are
    result = {
        f"FITS at GZ2's scale ({gz2_scale:g} arcsec), background=none": rmse(predictions(cutouts[gz2_scale], none)),
        f"FITS at GZ2's scale ({gz2_scale:g} arcsec), background=median (each sky set to the preset's)": rmse(predictions(cutouts[gz2_scale], options)),
    }
    for scale in o.pixel_scales:
        result[f"FITS at {scale:g} arcsec, size given: resampled to GZ2's scale"] = rmse(predictions(cutouts[scale], none))
        unsized = [FitsCutout(c.files, None) for c in cutouts[scale]]
        result[f"FITS at {scale:g} arcsec, no size: not resampled (negative control)"] = rmse(predictions(unsized, none))
    for what, value in result.items():
        say(f"RMSE against the JPEGs' predictions ({len(files)} galaxies), {what}: {value:.5f}")
    return result


# ----------------------------------------------------------------------------- picture


def picture(o: FitsCheckOptions, count: int = 6, tile: int = 160) -> Path:
    """Rows: JPEG, the earlier per-band stretch of its FITS frames, the new composite; one column per galaxy."""
    from PIL import Image, ImageDraw

    from gzoo.images import load_image
    from gzoo.io import atomic_open

    if o.out.exists() and not o.overwrite:
        raise GzooError(f"{o.out} exists; pass overwrite=true to replace it.")
    files = jpegs_of(o.jpegs, 200)
    images = {f: load_image(f) for f in files}
    middle = {f: a[192:232, 192:232].reshape(-1, 3).astype(float).mean(axis=0) for f, a in images.items()}
    clean = [f for f in files if middle[f].mean() > 60 and np.median(images[f][:80, :80]) < 12]  # a bright galaxy on dark sky
    bright = sorted(clean, key=lambda f: middle[f][0] / middle[f][2])  # by colour, red over blue
    chosen = bright[-count // 2 :][::-1] + bright[: count - count // 2]  # the reddest, then the bluest
    lupton, percentile = FitsOptions(background="none"), FitsOptions(method="percentile", background="none")
    rows: dict[str, list] = {"JPEG (GZ2)": [], "FITS, per-band percentile stretch (before)": [], "FITS, lupton composite (now)": []}
    for f in chosen:
        rgb = images[f]
        frames = Frames(frames_from_rgb(rgb, lupton), tuple(lupton.bands), None)
        for name, image in zip(rows, (rgb, composite(frames, percentile), composite(frames, lupton))):
            rows[name].append(Image.fromarray(image[106:318, 106:318]).resize((tile, tile), Image.Resampling.LANCZOS))
    label = 18
    sheet = Image.new("RGB", (count * tile, len(rows) * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(rows.items()):
        y = r * (tile + label)
        draw.text((4, y + 3), name, fill="black")
        for c, t in enumerate(tiles):
            sheet.paste(t, (c * tile, y + label))
    o.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(o.out, "wb") as fh:
        sheet.save(fh, format="PNG")
    say(f"wrote {o.out}")
    return o.out


def run(o: FitsCheckOptions) -> None:
    if o.task == "calibrate":
        calibrate(jpegs_of(o.jpegs, o.limit))
    elif o.task == "predict":
        predict_check(o)
    else:
        picture(o)


def main(argv: list[str] | None = None) -> int:
    return run_tool(run, FitsCheckOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
