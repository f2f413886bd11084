"""Survey FITS cutouts made into what the model was trained to see: GZ2-like colour composites.

A galaxy's cutout is one FITS file (a cube of bands, one extension per band, or one band) or one file per
band (:class:`FitsCutout`); :func:`load_fits` makes it an RGB uint8 image (fits.size x fits.size, 424 as in
GZ2) by these steps, each a stated rule, with the options of :class:`FitsOptions`:

1. bands: a cube's planes, a file's extensions or the per-band files are the bands ``fits.bands`` in order
   (a cube's ``BAND0``, ``BAND1``... keywords and an extension's ``EXTNAME``/``FILTER`` name them when
   present); ``fits.rgb`` picks the red, green and blue bands (SDSS: i, r, g). One band gives a grey image.
2. blank pixels: NaN and inf take their band's sky level, its sigma-clipped median
   (``astropy.stats.sigma_clipped_stats``, ``fits.clip_sigma``), so they show as empty sky; how many there
   were is said. A band without one finite pixel cannot be shown: a ValueError naming it.
3. background: by default (``fits.background=none``) the frames are taken as sky-subtracted, as SDSS's, the
   Legacy Surveys' and HSC's are; ``fits.background=median`` subtracts that sky level from each band (frames
   whose sky is still in them). The default keeps each galaxy's own sky, as GZ2's JPEGs did (2 to 7 grey
   levels): with median, predictions on the 200 sample galaxies moved by 0.0088 RMSE, with none by 0.
4. flux units: values times 10^(-0.4 (fits.zeropoint - 22.5)) are nanomaggies; with ``fits.per_sdss_pixel``
   and a WCS pixel scale they are then scaled to flux per SDSS pixel (0.396 arcsec)^2, the pixels GZ2's
   colour images were made from, so one preset looks the same on any survey's pixels.
5. GZ2 scale: GZ2 showed each galaxy at 0.02 x petroR90_r arcsec per pixel in 424 px (Willett et al. 2013:
   "scaled to (0.02 x petroR90_r) arcsec per pixel"), so petroR90_r spans 50 px. Given the galaxy's size (arcsec, ``FitsCutout.galaxy_size``, from the
   catalogue's ``fits.size_column``) and the header's WCS pixel scale, the frame is resampled to
   ``fits.gz2_scale`` x size arcsec per pixel about its centre (OpenCV: area averaging to shrink,
   Lanczos to enlarge; outside the frame is sky, 0). Without them the frame's field is resized to fits.size px and a
   line says the scale is the user's.
6. composite: ``fits.method=lupton`` (default) is the colour-preserving arcsinh composite of Lupton et al.
   (2004) that SDSS made its colour images with, written with numpy as astropy's ``make_lupton_rgb``
   computes it (the same pixels, tested): x_c = scale_c * band_c - minimum_c, I = mean of x over R, G, B,
   X_c = x_c * asinh(Q I / stretch) / asinh(0.1 Q) * 0.1 / I (0 where I <= 0, negative X_c clipped to 0),
   a pixel whose largest X_c exceeds 1 divided by it (its colour kept), then floor(255 X_c).
   ``fits.method=percentile`` is gzoo's earlier per-band stretch (:class:`FitsStretch`: each band clipped to
   its own percentiles and arcsinh-stretched alone; it loses the galaxies' colours).
7. orientation: the first FITS row is the bottom of the picture, so rows are flipped (north up).

The preset (the defaults) reproduces what can be measured of GZ2's JPEGs; see :class:`FitsOptions`.
:func:`frames_from_rgb` inverts the composite (tests, gzoo.tools.fits_check). astropy is imported only when
a FITS file is read (:func:`need_fits_reader`): gzoo without the ``fits`` extra reads every other image.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

from gzoo.config import option
from gzoo.errors import GzooError
from gzoo.log import say, warn

#: The file names read as FITS (compared in lower case).
FITS_SUFFIXES = (".fits", ".fits.gz")
#: SDSS's pixel, arcsec: GZ2's colour images were made from frames of these pixels.
SDSS_PIXEL = 0.396
#: GZ2's image side (px) and scale: 0.02 x petroR90_r arcsec per pixel (Willett et al. 2013).
GZ2_SIZE = 424
GZ2_SCALE = 0.02
#: AB magnitude of 1 nanomaggy: SDSS frames and the Legacy Surveys' cutouts are in nanomaggies.
NANOMAGGY_ZEROPOINT = 22.5


# ----------------------------------------------------------------------------- options


def _names(v: Any) -> bool:
    return len(v) >= 1 and all(isinstance(b, str) and b.strip() for b in v) and len(set(v)) == len(v)


def _three(v: Any) -> bool:
    return len(v) == 3


@dataclass
class FitsStretch:
    """gzoo's earlier per-band stretch (``fits.method=percentile``), kept as an option.

    Each band is clipped to its own [low_percentile, high_percentile] (over the finite pixels), scaled
    to x in [0, 1], then stretched by y = arcsinh(x / softening) / arcsinh(1 / softening) and rounded to
    0..255. The same as astropy.visualization's ``AsymmetricPercentileInterval(low, high)`` followed by
    ``AsinhStretch(softening)``. Each band alone: a red and a blue galaxy come out alike.
    """

    low_percentile: float = option(0.5, "FITS, method=percentile: each band's percentile that becomes black", low=0)
    high_percentile: float = option(99.5, "FITS, method=percentile: each band's percentile that becomes white (brighter pixels saturate)", low=0)
    softening: float = option(0.1, "FITS, method=percentile: arcsinh softening a, y = asinh(x/a)/asinh(1/a); smaller shows fainter light", low=1e-6)

    def __post_init__(self) -> None:
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise GzooError(f"fits.low_percentile={self.low_percentile} and fits.high_percentile={self.high_percentile} must satisfy 0 <= low < high <= 100.")
        if self.softening <= 0:
            raise GzooError(f"fits.softening={self.softening} must be > 0.")

    def __call__(self, band: np.ndarray) -> np.ndarray:
        """One band (H, W) of any number type -> uint8 (H, W); blank (NaN) pixels become 0."""
        band = band.astype(np.float64)
        finite = np.isfinite(band)
        if not finite.any():
            return np.zeros(band.shape, np.uint8)
        lo, hi = np.percentile(band[finite], [self.low_percentile, self.high_percentile])
        x = np.clip((np.where(finite, band, lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        y = np.arcsinh(x / self.softening) / np.arcsinh(1.0 / self.softening)
        return np.round(y * 255).astype(np.uint8)


# The preset, measured on the 200 real test JPEGs of ../shared/data/gz2-sample (python -m gzoo.tools.fits_check
# task=calibrate: each JPEG inverted through the composite, then measured as SDSS measures galaxies):
#   q:        GZ2 drew petroR90_r as 50 px. The inverted r-band frames' median Petrosian R90 is 52 px at Q = 8
#             (48 at 8.5, 41 at 10, 63 at 6): Q = 8, astropy's and Lupton et al.'s default, fits.
#   minimum:  a sky-subtracted frame's sky (0) comes out at the JPEGs' median sky, (R, G, B) = (4, 4, 2) grey
#             levels: black lies below the sky, so its noise shows, as in GZ2.
#   scales, stretch: a colour balance and a flux scale, which the JPEGs alone cannot give (at scales 1 the inverted
#             galaxies' median colours are g-r 0.30, r-i 0.19); set so that they are g-r 0.75 and r-i 0.38 and the
#             median mean surface brightness within R50 is 20.8 r mag/arcsec^2, values typical of the SDSS main galaxy
#             sample GZ2 was drawn from (assumed, not measured: there are no SDSS frames offline to check them).
PRESET_Q = 8.0
PRESET_STRETCH = 0.254
PRESET_SCALES = (0.84, 1.0, 1.52)
PRESET_MINIMUM = (-0.0041, -0.0041, -0.0023)


@dataclass
class FitsOptions:
    """How a FITS cutout becomes the model's 8-bit RGB image (see the module's steps); the defaults are the GZ2 preset.

    Training records these in the checkpoint (``data.fits.*``) and prediction uses the checkpoint's unless
    told otherwise (:func:`options_of_checkpoint`, :func:`resolve_options`).
    """

    method: str = option(
        "lupton",
        "lupton: the colour-preserving arcsinh composite SDSS made GZ2's images with; percentile: each band stretched alone",
        choices=("lupton", "percentile"),
    )
    bands: list[str] = option(
        ["g", "r", "i"],
        "the bands in the order of a cube's planes (or extensions), and of the per-band file columns",
        valid=_names,
        must="a list of distinct band names, e.g. [g,r,i]",
    )
    rgb: list[str] = option(
        ["i", "r", "g"],
        "the bands shown as red, green, blue (SDSS showed i, r, g; grz data: [z,r,g])",
        valid=_three,
        must="three band names of fits.bands, e.g. [i,r,g]",
    )
    zeropoint: float = option(NANOMAGGY_ZEROPOINT, "AB magnitude of a pixel value of 1: 22.5 = nanomaggies (SDSS, Legacy Surveys); 27 for HSC coadds")
    per_sdss_pixel: bool = option(
        True, "scale values to flux per SDSS pixel (0.396 arcsec)^2 by the WCS pixel scale, so the preset looks alike on any survey's pixels"
    )
    background: str = option(
        "none",
        "none: the frames are sky-subtracted already (SDSS, Legacy Surveys, HSC); median: subtract each band's sigma-clipped median (the sky)",
        choices=("none", "median"),
    )
    clip_sigma: float = option(3.0, "the sigma clipping of the sky level (background, and the value blank pixels take)", above=0)
    scales: list[float] = option(
        list(PRESET_SCALES), "lupton: multipliers of the red, green, blue band (the colour balance)", valid=_three, above=0, must="three numbers > 0"
    )
    q: float = option(PRESET_Q, "lupton: the asinh softening Q (Lupton et al. 2004); larger compresses bright cores more", above=0)
    stretch: float = option(PRESET_STRETCH, "lupton: the linear stretch, in nanomaggies per SDSS pixel after scales; smaller shows fainter light", above=0)
    minimum: list[float] = option(
        list(PRESET_MINIMUM),
        "lupton: the black level of red, green, blue (after scales); below 0 the sky's noise shows, as in GZ2",
        valid=_three,
        must="three numbers",
    )
    low_percentile: float = option(0.5, "percentile: each band's percentile that becomes black", low=0, high=100)
    high_percentile: float = option(99.5, "percentile: each band's percentile that becomes white", low=0, high=100)
    softening: float = option(0.1, "percentile: arcsinh softening a, y = asinh(x/a)/asinh(1/a)", above=0)
    size: int = option(GZ2_SIZE, "the composite's side in pixels (GZ2's 424)", low=8)
    gz2_scale: float = option(GZ2_SCALE, "arcsec per pixel per arcsec of the galaxy's size (GZ2: 0.02 x petroR90_r, Willett et al. 2013)", above=0)
    size_column: str | None = option("petroR90_r", "the catalogue's column of each galaxy's size in arcsec (Petrosian R90 in r, as GZ2); null: none")
    band_column: str = option("file_{band}", "the catalogue's columns of per-band files: {band} becomes each of fits.bands (file_g, file_r, file_i)")

    def __post_init__(self) -> None:
        self.bands, self.rgb = [str(b) for b in self.bands], [str(b) for b in self.rgb]
        self.scales, self.minimum = [float(v) for v in self.scales], [float(v) for v in self.minimum]
        if not _names(self.bands):
            raise GzooError(f"fits.bands={self.bands} must be a list of distinct band names, e.g. [g,r,i].")
        if len(self.rgb) != 3 or any(b not in self.bands for b in self.rgb):
            raise GzooError(f"fits.rgb={self.rgb} must name three of fits.bands ({','.join(self.bands)}) as red, green, blue, e.g. [i,r,g].")
        if len(self.scales) != 3 or len(self.minimum) != 3 or min(self.scales) <= 0:
            raise GzooError(f"fits.scales={self.scales} and fits.minimum={self.minimum} must be three numbers each (red, green, blue), the scales > 0.")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise GzooError(f"fits.low_percentile={self.low_percentile} and fits.high_percentile={self.high_percentile} must satisfy 0 <= low < high <= 100.")
        if "{band}" not in self.band_column:
            raise GzooError(f"fits.band_column={self.band_column!r} must contain {{band}}, e.g. file_{{band}}.")

    @property
    def percentile(self) -> FitsStretch:
        return FitsStretch(self.low_percentile, self.high_percentile, self.softening)

    def band_columns(self) -> list[str]:
        """The catalogue's per-band file columns, in the order of ``bands`` (file_g, file_r, file_i)."""
        return [self.band_column.replace("{band}", b) for b in self.bands]


def as_options(fits: FitsOptions | FitsStretch | Mapping | None) -> FitsOptions:
    """FitsOptions from what callers give: None (the preset), a FitsOptions, its fields as a dict, or a
    :class:`FitsStretch` (gzoo's earlier stretch: ``method=percentile`` with its values)."""
    if fits is None:
        return FitsOptions()
    if isinstance(fits, FitsOptions):
        return fits
    if isinstance(fits, FitsStretch):
        return FitsOptions(method="percentile", low_percentile=fits.low_percentile, high_percentile=fits.high_percentile, softening=fits.softening)
    known = {f.name for f in fields(FitsOptions)}
    unknown = sorted(set(fits) - known)
    if unknown:
        raise GzooError(f"unknown FITS option {unknown[0]!r}; the options are {', '.join(sorted(known))}.")
    values: dict[str, Any] = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in fits.items()}
    return FitsOptions(**values)


def options_record(fits: FitsOptions | FitsStretch | Mapping | None) -> dict:
    """The options as plain values (what a checkpoint records under hyper_parameters["fits"])."""
    return asdict(as_options(fits))


def options_of_checkpoint(ckpt: Mapping | str | Path) -> FitsOptions:
    """The FITS options a checkpoint was trained with (a checkpoint dict, or its file): its record, or for a
    checkpoint without one (trained before gzoo recorded them, on JPEGs) the GZ2 preset."""
    if not isinstance(ckpt, Mapping):
        from gzoo.module import read_checkpoint

        ckpt = read_checkpoint(ckpt)
    record = (ckpt.get("hyper_parameters") or {}).get("fits")
    if not record:
        return FitsOptions()
    known = {f.name for f in fields(FitsOptions)}
    return as_options({k: v for k, v in dict(record).items() if k in known})  # a later gzoo's extra keys are not this one's


def resolve_options(recorded: FitsOptions, given: FitsOptions | FitsStretch | Mapping | None) -> FitsOptions:
    """The options prediction uses: the checkpoint's (``recorded``), with what the user told: every field of
    ``given`` that differs from the default (a dict: every key it holds; a FitsStretch: the percentile method)."""
    if given is None:
        return recorded
    if isinstance(given, Mapping):
        return as_options({**asdict(recorded), **given})
    told, default = asdict(as_options(given)), asdict(FitsOptions())
    if isinstance(given, FitsStretch):
        default.pop("method")  # a FitsStretch asks for its own method
    return as_options({**asdict(recorded), **{k: v for k, v in told.items() if v != default.get(k, object())}})


# ----------------------------------------------------------------------------- one galaxy's files


@dataclass(frozen=True)
class FitsCutout:
    """One galaxy's FITS cutout, as one image item (a dataset decodes it with gzoo.images.load_image).

    ``files``: one file (a cube, one extension per band, or one band) or one file per band in the order of
    fits.bands; ``galaxy_size``: the galaxy's size in arcsec (fits.size_column; None: not known). Picklable, so
    DataLoader workers take it; ``is_file`` and ``stat`` answer for all its files.
    """

    files: tuple[Path, ...]
    galaxy_size: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        if self.galaxy_size is not None and not (math.isfinite(self.galaxy_size) and self.galaxy_size > 0):
            object.__setattr__(self, "galaxy_size", None)

    def __str__(self) -> str:
        return " + ".join(map(str, self.files))

    @property
    def name(self) -> str:
        return self.files[0].name

    def is_file(self) -> bool:
        return all(f.is_file() for f in self.files)

    def stat(self) -> os.stat_result:
        """The files' total size and latest modification (what caches key on)."""
        stats = [f.stat() for f in self.files]
        latest = max(stats, key=lambda s: s.st_mtime_ns)
        return os.stat_result((latest.st_mode, 0, 0, 0, 0, 0, sum(s.st_size for s in stats), latest.st_atime, latest.st_mtime, latest.st_ctime))

    def resolve(self) -> FitsCutout:
        return FitsCutout(tuple(f.resolve() for f in self.files), self.galaxy_size)


def is_fits(path: str | Path) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return not str(value).strip() or str(value).strip().lower() in ("nan", "none", "<na>")


def galaxy_size(value: Any) -> float | None:
    """A size cell as arcsec: a positive finite number, else None (blank, 0, negative or not a number)."""
    if _blank(value):
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    return size if math.isfinite(size) and size > 0 else None


def cutout_of_row(row: Mapping, options: FitsOptions, base: Path, file_column: str = "file_loc", where: str = "") -> FitsCutout | Path:
    """A catalogue row's image item: a :class:`FitsCutout` of its per-band files (the columns
    ``options.band_columns()``, all filled in) or of its one FITS file (``file_column``), with the galaxy's size
    from ``options.size_column`` when the row has one; otherwise its ``file_column`` file as a Path. Relative paths
    are read from ``base``. A row with some band files and not others is a GzooError naming it (``where``)."""
    columns = options.band_columns()
    given = [c for c in columns if c in row and not _blank(row[c])]
    size = galaxy_size(row.get(options.size_column)) if options.size_column else None

    def path(value: Any) -> Path:
        p = Path(str(value).strip()).expanduser()
        return p if p.is_absolute() else base / p

    if given:
        if len(given) != len(columns):
            missing = [c for c in columns if c not in given]
            raise GzooError(
                f"{where or 'a row'} gives {', '.join(given)} but not {', '.join(missing)}; give every band's file (fits.bands={','.join(options.bands)}) or none."
            )
        return FitsCutout(tuple(path(row[c]) for c in columns), size)
    if file_column not in row or _blank(row[file_column]):
        raise GzooError(
            f"{where or 'a row'} has no image: its {file_column!r} and its per-band columns ({', '.join(columns)}) are empty; fill them in or drop the row."
        )
    file = path(row[file_column])
    return FitsCutout((file,), size) if is_fits(file) else file


def has_band_columns(columns: Sequence[str], options: FitsOptions) -> bool:
    """Whether a catalogue's columns include every per-band file column."""
    return all(c in columns for c in options.band_columns())


# ----------------------------------------------------------------------------- reading


def need_fits_reader(path: str | Path | FitsCutout):
    """astropy.io.fits, or a GzooError naming the FITS file ``path`` and saying how to install astropy."""
    try:
        from astropy.io import fits
    except ImportError:
        raise GzooError(f"{path} is a FITS file and reading FITS needs astropy; install it with pip install 'gzoo[fits]' (or pip install astropy).") from None
    return fits


class Frames(NamedTuple):
    """The bands of one cutout, as read: float32 (B, H, W), their names (None: not named), the pixel scale (arcsec),
    and whether they were a cube's planes (else one image per extension)."""

    data: np.ndarray
    names: tuple[str, ...] | None
    pixel_scale: float | None
    cube: bool = True


def pixel_scale_of(header) -> float | None:
    """The WCS pixel scale of a FITS header in arcsec (the geometric mean of its two sky axes), or None."""
    from astropy.utils.exceptions import AstropyWarning
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        try:
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            scales = proj_plane_pixel_scales(wcs.celestial) * 3600.0  # the celestial axes are in degrees
        except Exception:  # a header astropy cannot read as a WCS: the scale is not known
            return None
    scale = float(np.sqrt(abs(scales[0] * scales[1])))
    return scale if math.isfinite(scale) and scale > 0 else None


def _band_names(header, planes: int) -> tuple[str, ...] | None:
    """A cube's band names from BAND0, BAND1, ... (the Legacy Surveys' cutouts) or FILTER0, ..., if every plane has one."""
    for key in ("BAND", "FILTER"):
        names = [header.get(f"{key}{k}") for k in range(planes)]
        if all(isinstance(n, str) and n.strip() for n in names):
            return tuple(str(n).strip() for n in names)
    return None


def _read_file(path: Path) -> Frames:
    """The image data of one FITS file: its first cube (planes, H, W), or its 2-D images (one per extension)."""
    fits = need_fits_reader(path)
    with fits.open(path, memmap=False) as hdus:
        images = [hdu for hdu in hdus if hdu.is_image and hdu.data is not None and hdu.data.size]
        if not images:
            raise ValueError("the FITS file holds no image")
        first = images[0]
        data = np.asarray(first.data, dtype=np.float32)
        scale = pixel_scale_of(first.header)
        if data.ndim > 2:
            data = data.reshape([n for n in data.shape if n != 1] or [1, 1])
        if data.ndim == 3:
            if data.shape[0] > 8 and data.shape[-1] <= 8:
                data = np.moveaxis(data, -1, 0)  # written from an (H, W, bands) array
            return Frames(data, _band_names(first.header, data.shape[0]), scale)
        if data.ndim != 2:
            raise ValueError(f"its image has shape {data.shape}; gzoo reads bands of shape (H, W)")
        planes, names = [data], [str(first.header.get("EXTNAME") or first.header.get("FILTER") or "").strip()]
        for hdu in images[1:]:
            more = np.asarray(hdu.data, dtype=np.float32)
            if more.ndim == 2 and more.shape == data.shape:
                planes.append(more)
                names.append(str(hdu.header.get("EXTNAME") or hdu.header.get("FILTER") or "").strip())
        named = tuple(names) if len(planes) > 1 and all(names) and len(set(names)) == len(names) else None
        return Frames(np.stack(planes), named, scale, cube=False)


def _matches(frames: Frames, bands: Sequence[str]) -> list[int] | None:
    """The planes of ``bands`` by the file's own band names, or None when it does not name them all."""
    if frames.names is None:
        return None
    lower = [b.lower() for b in frames.names]
    return [lower.index(b.lower()) for b in bands] if all(b.lower() in lower for b in bands) else None


def read_frames(item: str | Path | FitsCutout, options: FitsOptions) -> Frames:
    """The bands of a cutout, in the order of ``options.bands`` (or one band), with its pixel scale.

    Extensions named other than the bands (an image with its MASK and VARIANCE, as HSC's cutouts come) are one
    band: the first. A cube whose BAND0, BAND1 ... keywords name other bands than fits.bands is refused."""
    cutout = item if isinstance(item, FitsCutout) else FitsCutout((Path(item),))
    if len(cutout.files) > 1:
        if len(cutout.files) != len(options.bands):
            raise ValueError(f"{len(cutout.files)} band files for fits.bands={','.join(options.bands)}")
        planes: list[np.ndarray] = []
        scale: float | None = None
        for band, path in zip(options.bands, cutout.files):
            frames = _read_file(path)
            if frames.data.shape[0] != 1 and frames.cube:
                raise ValueError(f"its {band} file {path.name} holds {frames.data.shape[0]} bands, not one")
            if planes and frames.data.shape[1:] != planes[0].shape:
                raise ValueError(
                    f"its band files differ in shape ({path.name} is {frames.data.shape[2]}x{frames.data.shape[1]} px); gzoo needs them on one pixel grid"
                )
            planes.append(frames.data[0])  # a file's first image; its other extensions (mask, variance) are not light
            scale = scale or frames.pixel_scale
        return Frames(np.stack(planes), tuple(options.bands), scale)
    frames = _read_file(cutout.files[0])
    n = frames.data.shape[0]
    order = _matches(frames, options.bands)
    if order is not None:
        return Frames(frames.data[order], tuple(options.bands), frames.pixel_scale)
    if n == 1 or (not frames.cube and frames.names is not None):  # one band (with a mask, a variance...)
        return Frames(frames.data[:1], None, frames.pixel_scale)
    if frames.names is not None:
        raise ValueError(f"its bands are {','.join(frames.names)} but fits.bands names {','.join(options.bands)}; set fits.bands (and fits.rgb) to its bands")
    if n != len(options.bands):
        raise ValueError(f"it holds {n} bands but fits.bands names {len(options.bands)} ({','.join(options.bands)}); set fits.bands to its bands in order")
    return Frames(frames.data, tuple(options.bands), frames.pixel_scale)


def read_fits(path: str | Path) -> np.ndarray:
    """The bands of a FITS file as float32 (B, H, W), in the file's order (B = 1, or its planes or extensions)."""
    return _read_file(Path(path)).data


# ----------------------------------------------------------------------------- messages said once (per process)

_said: dict[str, int] = {}
_lock = threading.Lock()


def _count(key: str) -> int:
    with _lock:
        _said[key] = _said.get(key, 0) + 1
        return _said[key]


def _often(n: int) -> bool:
    """Say the 1st to 3rd, then the 10th, 100th, 1000th ... time: a count without a flood."""
    return n <= 3 or math.log10(n).is_integer()


def note_blank_pixels(name: str, blank: dict[str, int], total: int) -> None:
    """Say how many pixels of each band of a cutout were NaN or inf (the 1st to 3rd cutout, then the 10th, 100th ...)."""
    n = _count("blank")
    if _often(n):
        counts = " and ".join(f"{k} ({100 * k / total:.1f} %) of its {band} band" for band, k in blank.items())
        warn(
            f"{name}: {counts} of {total} pixels are NaN or inf; they take the band's sky level (its sigma-clipped median), "
            f"so they show as empty sky ({n} cutout{'s' if n > 1 else ''} with blank pixels so far in this process)"
        )


def note_scale_unknown(why: str) -> None:
    if _count("scale") == 1:
        say(
            f"FITS cutouts without {why} are shown at their own scale (their field resized to the composite): the galaxy's size in the "
            f"frame is yours to match to GZ2's {GZ2_SCALE} x petroR90_r arcsec per pixel (give fits.size_column and a WCS header to have gzoo do it)"
        )


# ----------------------------------------------------------------------------- the steps


def sky_level(band: np.ndarray, clip_sigma: float) -> float:
    """A band's sky: the sigma-clipped median of its finite pixels (astropy.stats.sigma_clipped_stats, 5 iterations)."""
    from astropy.stats import sigma_clipped_stats

    finite = band[np.isfinite(band)]
    if finite.size > 60_000:  # a large frame: a regular sample gives the same median to within 1 % of the noise
        finite = finite[:: finite.size // 60_000 + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, median, _ = sigma_clipped_stats(finite, sigma=clip_sigma, maxiters=5)
    return float(median)


def flux_factor(options: FitsOptions, pixel_scale: float | None) -> float:
    """What turns a file's pixel value into nanomaggies per SDSS pixel (zero point, and the pixel area when known)."""
    factor = 10.0 ** (-0.4 * (options.zeropoint - NANOMAGGY_ZEROPOINT))
    if options.per_sdss_pixel and pixel_scale:
        factor *= (SDSS_PIXEL / pixel_scale) ** 2
    return factor


def zoom_of(shape: tuple[int, int], options: FitsOptions, pixel_scale: float | None, size: float | None) -> tuple[float, str | None]:
    """Output pixels per input pixel: to the GZ2 scale when the galaxy's size and the pixel scale are known (reason
    None), else the frame's shorter side to ``options.size`` (with the reason the scale is the user's)."""
    if size and pixel_scale:
        return pixel_scale / (options.gz2_scale * size), None
    why = "a WCS pixel scale in their header" if size else f"a size ({options.size_column or 'fits.size_column'})"
    return options.size / min(shape), why


def resample(bands: np.ndarray, zoom: float, side: int) -> np.ndarray:
    """(B, H, W) -> (B, side, side): scaled by ``zoom`` about the frame's centre (to shrink, areas averaged first,
    OpenCV's INTER_AREA, then the residual scale; to enlarge, Lanczos interpolation, the sharpest OpenCV has: the
    check on 200 GZ2 galaxies lost 0.0089 RMSE with it and 0.0139 with bilinear); outside the frame is 0 (the sky,
    after the background step)."""
    _, h, w = bands.shape
    out = np.empty((bands.shape[0], side, side), np.float32)
    if zoom < 1:  # shrink by averaging areas (no aliasing), then place the centre
        nw, nh = max(round(w * zoom), 1), max(round(h * zoom), 1)
        bands = np.stack([cv2.resize(b, (nw, nh), interpolation=cv2.INTER_AREA) for b in bands])
        zx, zy = zoom * w / nw, zoom * h / nh  # the residual scale, so the centres meet exactly
    else:
        nw, nh, zx, zy = w, h, zoom, zoom
    m = np.array([[zx, 0, (side - 1) / 2 - zx * (nw - 1) / 2], [0, zy, (side - 1) / 2 - zy * (nh - 1) / 2]])
    for k, b in enumerate(bands):
        out[k] = cv2.warpAffine(np.ascontiguousarray(b), m, (side, side), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def lupton_slope(q: float) -> float:
    return 0.1 / math.asinh(0.1 * q)


def lupton_composite(rgb: np.ndarray, options: FitsOptions) -> np.ndarray:
    """(3, H, W) red, green, blue bands in nanomaggies per SDSS pixel -> RGB uint8 (H, W, 3): astropy's
    make_lupton_rgb(scale_R R, scale_G G, scale_B B, minimum=fits.minimum, stretch=fits.stretch, Q=fits.q), in numpy."""
    x = rgb.astype(np.float64) * np.asarray(options.scales)[:, None, None] - np.asarray(options.minimum)[:, None, None]
    intensity = x.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(intensity <= 0, 0.0, np.arcsinh(intensity * options.q / options.stretch) * lupton_slope(options.q) / intensity)
    x *= gain
    np.clip(x, 0.0, None, out=x)
    top = x.max(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(top > 1.0, x / np.where(top > 1.0, top, 1.0), x)
    return (x * 255.0).astype(np.uint8).transpose(1, 2, 0)


def composite(frames: Frames, options: FitsOptions, size: float | None = None, name: str = "the cutout") -> np.ndarray:
    """A cutout's bands (as :func:`read_frames` gives them) -> RGB uint8 (options.size, options.size, 3), north up."""
    from gzoo.images import size_problem  # one rule for every decoder (gzoo.images imports this module)

    data, names = frames.data, frames.names
    problem = size_problem(data.shape[2], data.shape[1])
    if problem:
        raise ValueError(problem)
    if data.shape[0] == 1 or names is None:  # one band: grey
        chosen, labels = [0, 0, 0], ["one"] * 3
    else:
        chosen, labels = [names.index(b) for b in options.rgb], list(options.rgb)
    planes: dict[int, np.ndarray] = {}
    blank: dict[str, int] = {}
    for k in dict.fromkeys(chosen):  # each band once: blank pixels, then the background
        band = data[k].astype(np.float32, copy=True)
        finite = np.isfinite(band)
        if not finite.any():
            raise ValueError(f"every pixel of its {labels[chosen.index(k)]} band is NaN or inf, so there is nothing to show; check the file or leave it out")
        sky = sky_level(band, options.clip_sigma)
        if not finite.all():
            blank[labels[chosen.index(k)]] = int((~finite).sum())
            band[~finite] = sky
        if options.background == "median":
            band -= sky
        planes[k] = band
    if blank:
        note_blank_pixels(name, blank, data.shape[1] * data.shape[2])
    bands = np.stack([planes[k] for k in chosen]) * np.float32(flux_factor(options, frames.pixel_scale))
    zoom, why = zoom_of(data.shape[1:], options, frames.pixel_scale, size)
    if why:
        note_scale_unknown(why)
    bands = resample(bands, zoom, options.size)
    if options.method == "percentile":
        stretch = options.percentile
        image = np.stack([stretch(b) for b in bands], axis=-1)
    else:
        if data.shape[0] == 1:  # one band: grey, with the three channels' mean scale and black level
            grey = FitsOptions(**{**asdict(options), "scales": [float(np.mean(options.scales))] * 3, "minimum": [float(np.mean(options.minimum))] * 3})
            image = lupton_composite(bands, grey)
        else:
            image = lupton_composite(bands, options)
    return np.ascontiguousarray(image[::-1])


def load_fits(item: str | Path | FitsCutout, options: FitsOptions | FitsStretch | Mapping | None = None) -> np.ndarray:
    """A FITS cutout (a file, or a :class:`FitsCutout`) -> RGB uint8 (size, size, 3), by the module's steps.
    A file gzoo cannot show (no image, all NaN, bands that do not fit fits.bands) is a ValueError saying why."""
    options = as_options(options)
    frames = read_frames(item, options)
    return composite(frames, options, item.galaxy_size if isinstance(item, FitsCutout) else None, str(item))


# ----------------------------------------------------------------------------- the inverse (tests, checks)


def invert_lupton(rgb: np.ndarray, options: FitsOptions) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (3, H, W) red, green, blue bands in nanomaggies per SDSS pixel whose
    :func:`lupton_composite` is ``rgb`` exactly: each value is aimed at the middle of its grey level (255 at 1)."""
    target = (rgb.astype(np.float64) + 0.5) / 255.0
    target = np.where(rgb == 255, 1.0 + 1e-6, target).transpose(2, 0, 1)
    mean = target.mean(axis=0)
    intensity = np.sinh(mean / lupton_slope(options.q)) * options.stretch / options.q
    x = target * (intensity / mean)
    return (x + np.asarray(options.minimum)[:, None, None]) / np.asarray(options.scales)[:, None, None]


def frames_from_rgb(rgb: np.ndarray, options: FitsOptions | None = None, pixel_scale: float | None = None) -> np.ndarray:
    """The frames (len(options.bands), H, W) float32, in a file's units and row order, whose composite
    (``fits.background=none``, no resampling: the frame already at the GZ2 scale) is ``rgb``: the inverse of the
    lupton composite. Bands not shown (not in options.rgb) are 0. For tests and gzoo.tools.fits_check."""
    options = options or FitsOptions()
    shown = invert_lupton(rgb, options) / flux_factor(options, pixel_scale)
    frames = np.zeros((len(options.bands), *rgb.shape[:2]), np.float32)
    for channel, band in enumerate(options.rgb):
        frames[options.bands.index(band)] = shown[channel][::-1]  # FITS rows from the bottom
    return frames


def wcs_header(pixel_scale: float, shape: tuple[int, int], ra: float = 180.0, dec: float = 0.0):
    """A celestial TAN WCS header (astropy.io.fits.Header) of ``pixel_scale`` arcsec, centred on (ra, dec) degrees."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    wcs.wcs.cdelt = [-pixel_scale / 3600.0, pixel_scale / 3600.0]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs.to_header()


def write_band_files(
    folder: str | Path, name: str, frames: np.ndarray, bands: Sequence[str], pixel_scale: float | None = None, ra: float = 180.0, dec: float = 0.0
) -> list[Path]:
    """Write each band of ``frames`` (B, H, W) to ``folder/<name>_<band>.fits`` (with a WCS header when the pixel
    scale is given); returns the paths in band order."""
    fits = need_fits_reader(folder)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for band, data in zip(bands, frames):
        header = wcs_header(pixel_scale, data.shape, ra, dec) if pixel_scale else fits.Header()
        header["FILTER"] = band
        header["BUNIT"] = "nanomaggy"
        path = folder / f"{name}_{band}.fits"
        fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path, overwrite=True)
        paths.append(path)
    return paths


__all__ = [
    "FITS_SUFFIXES",
    "GZ2_SCALE",
    "GZ2_SIZE",
    "SDSS_PIXEL",
    "FitsCutout",
    "FitsOptions",
    "FitsStretch",
    "Frames",
    "as_options",
    "composite",
    "cutout_of_row",
    "frames_from_rgb",
    "invert_lupton",
    "load_fits",
    "lupton_composite",
    "need_fits_reader",
    "options_of_checkpoint",
    "options_record",
    "read_fits",
    "read_frames",
    "resolve_options",
    "write_band_files",
]
