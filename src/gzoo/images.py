"""Decoding image files: the one place gzoo turns a file into pixels, and a file name into a galaxy id.

gzoo reads ``.jpg .jpeg .png .tif .tiff .fits .fits.gz`` in any letter case (:data:`IMAGE_SUFFIXES`).
:func:`load_image` gives an RGB uint8 array (H, W, 3) for any of them: JPEGs through simplejpeg,
PNG and TIFF through PIL (greyscale becomes three equal channels, RGBA loses its alpha, 16-bit
images are scaled to 8 bit by the range of their type, never clipped), FITS cutouts through
astropy with the stretch of :class:`FitsStretch`. :func:`image_id` is the galaxy id a file name
gives; :func:`index_images` lists a folder's images by id (two files of one galaxy are an error
naming both); :func:`check_image` is the quick scan the data module runs before training.
Both refuse an image with a side under :data:`MIN_SIDE` pixels (:func:`size_problem`).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import simplejpeg
from PIL import Image

from gzoo.config import option
from gzoo.errors import GzooError

#: The file names gzoo reads as images (compared in lower case: ``.JPG`` and ``.Fits.GZ`` count).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".fits", ".fits.gz")
FITS_SUFFIXES = (".fits", ".fits.gz")
_LONGEST_FIRST = sorted(IMAGE_SUFFIXES, key=len, reverse=True)  # .fits.gz before any shorter ending

GalaxyId = int | str

#: The fewest pixels an image may have on each side. The transforms keep the central ``data.crop_fraction``
#: of each side (0.5 by default, so an 8 px side leaves 4 px: the crop of any fraction from 1/16 up is at
#: least one pixel) and the training warp reflects at the frame's edges, which needs two pixels; a side
#: of 0 or 1 px ends in an OpenCV or division error deep in a loader worker. One rule, in one place:
#: the scan (:func:`check_image`) and the decoder (:func:`load_image`) both apply :func:`size_problem`.
MIN_SIDE = 8


# ----------------------------------------------------------------------------- names


def image_suffix(path: str | Path) -> str | None:
    """The file's image suffix in lower case (``.fits.gz`` counts as one), or None if gzoo does not read it."""
    name = Path(path).name.lower()
    return next((s for s in _LONGEST_FIRST if name.endswith(s) and len(name) > len(s)), None)


def image_id(path: str | Path) -> GalaxyId:
    """The galaxy id a file name gives: the name without its image suffix, an int when it is all digits.

    ``100150.jpg`` -> 100150 (so Kaggle submissions keep integer GalaxyIDs; ``0100150.jpg`` is the same
    galaxy), ``J123456.78+012345.6.png`` -> ``"J123456.78+012345.6"``, ``NGC1300.fits.gz`` -> ``"NGC1300"``.
    """
    name = Path(path).name
    suffix = image_suffix(name)
    stem = name[: len(name) - len(suffix)] if suffix else Path(name).stem
    return int(stem) if stem.isascii() and stem.isdigit() else stem


def id_sort_key(gid: GalaxyId) -> tuple[int, int | str]:
    """Integers in numeric order, then names in text order."""
    return (0, gid) if isinstance(gid, int) else (1, gid)


def ids_by_file(paths: list[Path], ids: list[GalaxyId] | None = None, source: str = "its file name without the extension") -> dict[GalaxyId, Path]:
    """{id: path} for image files (ids from their names unless given); two files of one id are an error naming both."""
    by_id: dict[GalaxyId, Path] = {}
    for path, gid in zip(paths, ids if ids is not None else map(image_id, paths)):
        if gid in by_id:
            raise GzooError(f"{by_id[gid]} and {path} are both galaxy {gid!r}; remove or rename one of them (a galaxy's id is {source}).")
        by_id[gid] = path
    return by_id


class ImageFolder(NamedTuple):
    """A folder's image files by galaxy id, and what it holds besides."""

    by_id: dict[GalaxyId, Path]  # every image file, in the folder's listing order
    broken: list[Path]  # symbolic links whose target does not exist
    others: list[Path]  # files and folders that are not images (another suffix)


def index_images(folder: str | Path) -> ImageFolder:
    """Every image file in ``folder`` (not its subfolders) by galaxy id; see :func:`image_id` and :func:`ids_by_file`."""
    images, broken, others = [], [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_symlink() and not path.exists():
            broken.append(path)
        elif image_suffix(path) is not None and entry.is_file():
            images.append(path)
        else:
            others.append(path)
    return ImageFolder(ids_by_file(images), broken, others)


# ----------------------------------------------------------------------------- FITS


@dataclass
class FitsStretch:
    """How a FITS cutout becomes an 8-bit image, as survey cutout services and Galaxy Zoo's own images do it.

    Each band is clipped to its own [low_percentile, high_percentile] (over the finite pixels), scaled
    to x in [0, 1], then stretched by y = arcsinh(x / softening) / arcsinh(1 / softening) (an arcsinh
    stretch, Lupton et al. 1999: linear for faint light, logarithmic for bright cores) and rounded to
    0..255; blank (NaN) pixels become 0. The same as astropy.visualization's
    ``AsymmetricPercentileInterval(low, high)`` followed by ``AsinhStretch(softening)``.
    """

    low_percentile: float = option(0.5, "FITS: each band's percentile that becomes black", low=0)
    high_percentile: float = option(99.5, "FITS: each band's percentile that becomes white (brighter pixels saturate)", low=0)
    softening: float = option(0.1, "FITS: arcsinh softening a, y = asinh(x/a)/asinh(1/a); smaller shows fainter light", low=1e-6)

    def __post_init__(self) -> None:
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise GzooError(f"fits.low_percentile={self.low_percentile} and fits.high_percentile={self.high_percentile} must satisfy 0 <= low < high <= 100.")
        if self.softening <= 0:
            raise GzooError(f"fits.softening={self.softening} must be > 0.")

    def __call__(self, band: np.ndarray) -> np.ndarray:
        """One band (H, W) of any number type -> uint8 (H, W)."""
        band = band.astype(np.float64)
        finite = np.isfinite(band)
        if not finite.any():
            return np.zeros(band.shape, np.uint8)
        lo, hi = np.percentile(band[finite], [self.low_percentile, self.high_percentile])
        x = np.clip((np.where(finite, band, lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        y = np.arcsinh(x / self.softening) / np.arcsinh(1.0 / self.softening)
        return np.round(y * 255).astype(np.uint8)


def need_fits_reader(path: str | Path):
    """astropy.io.fits, or a GzooError naming the FITS file ``path`` and saying how to install astropy."""
    try:
        from astropy.io import fits
    except ImportError:
        raise GzooError(f"{path} is a FITS file and reading FITS needs astropy; install it with pip install 'gzoo[fits]' (or pip install astropy).") from None
    return fits


def read_fits(path: str | Path) -> np.ndarray:
    """The first image in a FITS file (``.fits`` or ``.fits.gz``) as float32 bands (B, H, W), B = 1 or 3."""
    fits = need_fits_reader(path)
    with fits.open(path, memmap=False) as hdus:
        data = next((hdu.data for hdu in hdus if hdu.is_image and hdu.data is not None and hdu.data.size), None)
        if data is None:
            raise ValueError("the FITS file holds no image")
        data = np.asarray(data, dtype=np.float32)
    data = data.reshape([n for n in data.shape if n != 1] or [1, 1]) if data.ndim > 2 else data
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 3 and data.shape[0] not in (1, 3) and data.shape[-1] == 3:
        data = np.moveaxis(data, -1, 0)  # written from an (H, W, 3) array
    if data.ndim != 3 or data.shape[0] not in (1, 3):
        raise ValueError(f"its image has shape {data.shape}; gzoo reads one band (H, W) or three (3, H, W)")
    return data


def fits_to_rgb(bands: np.ndarray, stretch: FitsStretch) -> np.ndarray:
    """(B, H, W) bands -> RGB uint8 (H, W, 3): each band stretched, one band as grey, three in file order as R, G, B.

    Rows are flipped so that the first row of the FITS array (its bottom, as FITS displays it) is the
    last row of the image: north up for a cutout with the usual orientation, as the survey's JPEGs show it.
    """
    planes = [stretch(b)[::-1] for b in bands]
    return np.ascontiguousarray(np.stack(planes * 3 if len(planes) == 1 else planes, axis=-1))


# ----------------------------------------------------------------------------- decoding


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image -> RGB uint8 (H, W, 3); 16-bit greyscale is scaled by its range (v >> 8, as PIL does for 16-bit colour)."""
    if im.mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
    elif im.mode == "I":  # 32-bit integers: what PIL gives for some 16-bit files
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer pixels up to {a.max()} (gzoo reads 8- and 16-bit images; save it as 16-bit or FITS)")
        grey = (a >> 8).astype(np.uint8)
    elif im.mode == "F":  # 32-bit float: read when it holds fractions in [0, 1]
        a = np.asarray(im)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError("floating-point pixels outside [0, 1] (save it as 8- or 16-bit, or as FITS to have it stretched)")
        grey = np.round(a * 255).astype(np.uint8)
    else:
        return np.asarray(im.convert("RGB"))
    return np.repeat(grey[..., None], 3, axis=-1)


def size_problem(width: int, height: int) -> str | None:
    """None if an image of ``width`` x ``height`` px is large enough for gzoo (:data:`MIN_SIDE`), else the reason."""
    if min(width, height) < MIN_SIDE:
        return f"is {width}x{height} px, smaller than the {MIN_SIDE} px a side gzoo needs"
    return None


def load_image(path: str | Path, fits: FitsStretch | None = None) -> np.ndarray:
    """Decode an image file to an RGB uint8 array (H, W, 3).

    JPEGs (by content, whatever the name) go through simplejpeg (libjpeg-turbo, the same pixels as
    PIL, about 3x faster); anything it cannot read (PNG, TIFF, CMYK JPEG) through PIL; ``.fits`` and
    ``.fits.gz`` through astropy, stretched by ``fits`` (default :class:`FitsStretch`). An image with a
    side under :data:`MIN_SIDE` px is a ValueError saying so, as an undecodable file is.
    """
    image = _decode(path, fits)
    problem = size_problem(image.shape[1], image.shape[0])
    if problem:
        raise ValueError(problem)
    return image


def _decode(path: str | Path, fits: FitsStretch | None) -> np.ndarray:
    if image_suffix(path) in FITS_SUFFIXES:
        return fits_to_rgb(read_fits(path), fits or FitsStretch())
    data = Path(path).read_bytes()
    if data[:2] == b"\xff\xd8":
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # CMYK or another kind libjpeg-turbo declines: PIL reads it
    with Image.open(io.BytesIO(data)) as im:
        return _pil_to_rgb(im)


def check_image(path: str | Path) -> str | None:
    """None if the image decodes and is large enough (:func:`size_problem`); otherwise the reason it is not
    (a quick scan: 1/8 scale for JPEGs).

    A FITS file needs astropy: without it this is a GzooError saying how to install it, not a bad image.
    """
    try:
        if image_suffix(path) in FITS_SUFFIXES:
            load_image(path)
        else:
            with Image.open(path) as im:
                problem = size_problem(im.width, im.height)  # from the header, before any decode
                if problem:
                    return problem
                im.draft("RGB", (im.width // 8, im.height // 8))  # decode at 1/8 scale: fast, still reads every byte
                im.load()
                _pil_to_rgb(im)
        return None
    except GzooError:
        raise
    except Exception as e:  # PIL and astropy raise many kinds for bad files
        return str(e) or type(e).__name__
