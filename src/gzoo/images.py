"""Decoding image files: the one place gzoo turns a file into pixels, and a file name into a galaxy id.

gzoo reads ``.jpg .jpeg .png .tif .tiff .fits .fits.gz`` in any letter case (:data:`IMAGE_SUFFIXES`).
:func:`load_image` gives an RGB uint8 array (H, W, 3) for any of them: JPEGs through simplejpeg,
PNG and TIFF through PIL (greyscale becomes three equal channels, RGBA loses its alpha, 16-bit
images are scaled to 8 bit by the range of their type, never clipped; one using only its lowest
12 bits is said, as it comes out nearly black), FITS cutouts (a file, or a :class:`gzoo.fits.FitsCutout`
of one file per band) through gzoo.fits, as GZ2-like colour composites (:class:`gzoo.fits.FitsOptions`;
the earlier per-band :class:`FitsStretch` is one of its methods). :func:`image_id` is the galaxy id a file name
gives; :func:`index_images` lists a folder's images by id (two files of one galaxy are an error
naming both); :func:`check_image` is the quick scan the data module runs before training.
Both refuse an image with a side under :data:`MIN_SIDE` pixels (:func:`size_problem`).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import simplejpeg
from PIL import Image

from gzoo.errors import GzooError
from gzoo.fits import FITS_SUFFIXES, FitsCutout, FitsOptions, FitsStretch, load_fits, need_fits_reader, read_fits  # noqa: F401  (FITS_SUFFIXES, FitsStretch, need_fits_reader, read_fits: imported from here too)
from gzoo.log import warn

#: The file names gzoo reads as images (compared in lower case: ``.JPG`` and ``.Fits.GZ`` count).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".fits", ".fits.gz")
#: An image item: a file, or one galaxy's FITS files (gzoo.fits.FitsCutout).
ImageItem = str | Path | FitsCutout
_LONGEST_FIRST = sorted(IMAGE_SUFFIXES, key=len, reverse=True)  # .fits.gz before any shorter ending

GalaxyId = int | str

#: The fewest pixels an image may have on each side. The transforms keep the central ``data.crop_fraction``
#: of each side (0.5 by default, so an 8 px side leaves 4 px: the crop of any fraction from 1/16 up is at
#: least one pixel) and the training warp reflects at the frame's edges, which needs two pixels; a side
#: of 0 or 1 px ends in an OpenCV or division error deep in a loader worker. One rule, in one place:
#: the scan (:func:`check_image`) and the decoder (:func:`load_image`) both apply :func:`size_problem`.
MIN_SIDE = 8


# ----------------------------------------------------------------------------- names


def image_suffix(path: str | Path | FitsCutout) -> str | None:
    """The file's image suffix in lower case (``.fits.gz`` counts as one), or None if gzoo does not read it
    (a FitsCutout: its first file's)."""
    name = (path.files[0] if isinstance(path, FitsCutout) else Path(path)).name.lower()
    return next((s for s in _LONGEST_FIRST if name.endswith(s) and len(name) > len(s)), None)


def image_id(path: str | Path | FitsCutout) -> GalaxyId:
    """The galaxy id a file name gives: the name without its image suffix, an int when it is all digits.

    ``100150.jpg`` -> 100150 (so Kaggle submissions keep integer GalaxyIDs; ``0100150.jpg`` is the same
    galaxy), ``J123456.78+012345.6.png`` -> ``"J123456.78+012345.6"``, ``NGC1300.fits.gz`` -> ``"NGC1300"``.
    """
    name = path.files[0].name if isinstance(path, FitsCutout) else Path(path).name  # a FitsCutout: its first file's
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


# ----------------------------------------------------------------------------- decoding


#: A 16-bit image whose brightest pixel is below this uses only its lowest 12 bits (a 12-bit camera's data).
TWELVE_BITS = 4096
_few_bits = 0  # such images decoded in this process


def note_few_bits(name: str, top: int) -> None:
    """Say (the 1st to 3rd time, then the 10th, 100th ...) that a 16-bit image holds 12-bit data and comes out nearly black."""
    global _few_bits
    _few_bits += 1
    n = _few_bits
    if n <= 3 or math.log10(n).is_integer():
        warn(
            f"{name} is a 16-bit image whose brightest pixel is {top} of 65535 (12-bit data?): scaled by the 16-bit range it is nearly black "
            f"(at most {top >> 8} of 255); rescale it to the full 16 bits or save it as FITS ({n} such image{'s' if n > 1 else ''} so far in this process)"
        )


def _pil_to_rgb(im: Image.Image, name: str = "an image") -> np.ndarray:
    """A PIL image -> RGB uint8 (H, W, 3); 16-bit greyscale is scaled by its range (v >> 8, as PIL does for 16-bit colour).
    One whose values stay below 4096 (12-bit data) is said (:func:`note_few_bits`): it comes out nearly black."""
    if im.mode.startswith("I;16"):
        a16 = np.asarray(im).astype(np.uint16)
        if a16.size and int(a16.max()) < TWELVE_BITS:
            note_few_bits(name, int(a16.max()))
        grey = (a16 >> 8).astype(np.uint8)
    elif im.mode == "I":  # 32-bit integers: what PIL gives for some 16-bit files
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer pixels up to {a.max()} (gzoo reads 8- and 16-bit images; save it as 16-bit or FITS)")
        if a.size and int(a.max()) < TWELVE_BITS:
            note_few_bits(name, int(a.max()))
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


def load_image(path: ImageItem, fits: FitsOptions | FitsStretch | None = None) -> np.ndarray:
    """Decode an image file (or a :class:`gzoo.fits.FitsCutout`) to an RGB uint8 array (H, W, 3).

    JPEGs (by content, whatever the name) go through simplejpeg (libjpeg-turbo, the same pixels as
    PIL, about 3x faster); anything it cannot read (PNG, TIFF, CMYK JPEG) through PIL; ``.fits`` and
    ``.fits.gz`` files and FitsCutouts through gzoo.fits.load_fits, made by ``fits`` (a FitsOptions, default the
    GZ2 preset; a :class:`FitsStretch` asks for the earlier per-band stretch). An image with a side under
    :data:`MIN_SIDE` px is a ValueError saying so, as an undecodable file is.
    """
    image = _decode(path, fits)
    problem = size_problem(image.shape[1], image.shape[0])
    if problem:
        raise ValueError(problem)
    return image


def _decode(path: ImageItem, fits: FitsOptions | FitsStretch | None) -> np.ndarray:
    if isinstance(path, FitsCutout) or image_suffix(path) in FITS_SUFFIXES:
        return load_fits(path, fits)
    data = Path(path).read_bytes()
    if data[:2] == b"\xff\xd8":
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError:
            pass  # CMYK or another kind libjpeg-turbo declines: PIL reads it
    with Image.open(io.BytesIO(data)) as im:
        return _pil_to_rgb(im, str(path))


def check_image(path: ImageItem, fits: FitsOptions | FitsStretch | None = None) -> str | None:
    """None if the image decodes and is large enough (:func:`size_problem`); otherwise the reason it is not
    (a quick scan: 1/8 scale for JPEGs; a FITS cutout is made with ``fits``, as training will make it).

    A FITS file needs astropy: without it this is a GzooError saying how to install it, not a bad image.
    """
    try:
        if isinstance(path, FitsCutout) or image_suffix(path) in FITS_SUFFIXES:
            load_image(path, fits)
        else:
            with Image.open(path) as im:
                problem = size_problem(im.width, im.height)  # from the header, before any decode
                if problem:
                    return problem
                im.draft("RGB", (im.width // 8, im.height // 8))  # decode at 1/8 scale: fast, still reads every byte
                im.load()
                _pil_to_rgb(im, str(path))
        return None
    except GzooError:
        raise
    except Exception as e:  # PIL and astropy raise many kinds for bad files
        return str(e) or type(e).__name__
