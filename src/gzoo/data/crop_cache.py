"""The decoded-crop cache (``data.crop_cache``): every image decoded once, then read with no JPEG decode.

The cache holds what the transforms read of each image, as uint8 in one ``.npy`` file that the
loaders memory-map. That is the whole frame, not only the central crop: GalaxyWarp's recipe
augmentation (zoom down to 0.8, shift of 10 %, any rotation) samples from -45 to 463 px of a
424 px frame, reflected at its edges, so anything less than the frame would change the training
pixels. For the Kaggle set that is 61,578 x 424 x 424 x 3 bytes = 33.2 GB (30.9 GiB); after the first
epoch it is served from the page cache.

    <folder>/crop-cache-<key>.npy    uint8 (N, H, W, 3), rows in the order of the image list
    <folder>/crop-cache-<key>.json   what it holds (for people; the key is in the name), written after the .npy

``data.crop_cache=auto`` puts the folder in the user's cache, not beside the data (which may be
read-only or shared): ``$GZOO_CACHE/crops``, else ``$XDG_CACHE_HOME/gzoo/crops``, else
``~/.cache/gzoo/crops`` (gzoo.weights.cache_dir, where the converted weights go too).

``<key>`` is a hash of the format, the stored region and the image list (each file's name, size
and modification time), so a changed list or a changed file gives another key and the cache is
built again. The build decodes with gzoo.images.load_image in the loader's worker processes
(with a progress bar), removes the temporary file a killed build left, checks the disk's room
(refusing with one sentence), and writes through gzoo.io.atomic_open, so the file appears under
its name only when complete. A cache file that is cut short or damaged is said so in one line
and built again. The build draws nothing from the run's random generators (torch's, numpy's,
Python's): a run that builds the cache starts from the same weights as one that reads it. An older
cache of the same folder is left in place (delete it by hand to reclaim the room).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from gzoo.data.loader import make_loader
from gzoo.errors import GzooError
from gzoo.images import load_image
from gzoo.io import atomic_open, atomic_write_text, remove_stale_temporaries
from gzoo.log import say
from gzoo.weights import cache_dir

#: Bump when what a row holds changes, so an older file no longer matches.
FORMAT = "gzoo-crop-cache-1: whole RGB frames, uint8"
AUTO_FOLDER = "crops"  # data.crop_cache=auto: this folder of gzoo's cache (gzoo.weights.cache_dir)


class CachedImages(Sequence):
    """Rows of a cache file as a sequence of uint8 (H, W, 3) arrays, memory-mapped on first use.

    Picklable (a worker process opens the file itself); ``subset`` gives the rows of a part.
    """

    def __init__(self, path: str | Path, rows: Sequence[int] | np.ndarray | None = None):
        self.path = Path(path)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="c")  # copy-on-write: writable views (no copy for torch), the file never changes
        return self._array

    def __len__(self) -> int:
        return len(self.array) if self.rows is None else len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]  # rows by integer index only, no slices
        return np.asarray(self.array[i if self.rows is None else self.rows[i]])

    def subset(self, rows: Sequence[int] | np.ndarray) -> CachedImages:
        base = np.arange(len(self)) if self.rows is None else self.rows
        return CachedImages(self.path, base[np.asarray(rows, dtype=np.int64)])

    def __getstate__(self) -> dict:
        return {"path": self.path, "rows": self.rows, "_array": None}


def cache_folder(setting: str | Path) -> Path:
    """Where the cache goes: ``auto`` = gzoo's cache folder (``$GZOO_CACHE``, else ``$XDG_CACHE_HOME/gzoo``,
    else ``~/.cache/gzoo``) / crops, never the data folder; else the folder given."""
    if setting is True or str(setting).strip() == "":
        raise GzooError(f"data.crop_cache must be null, auto or a folder, got {setting!r}.")
    return cache_dir() / AUTO_FOLDER if str(setting) == "auto" else Path(setting).expanduser()


def damage(path: Path, n: int) -> str | None:
    """None if ``path`` is a whole cache file of ``n`` uint8 frames; else what is wrong with it, in a few words.

    The header's shape says how long the file must be; a file cut short (a full disk, a copy stopped
    halfway) would otherwise fail inside a loader worker on every later run.
    """
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version != (1, 0):  # what open_cache writes
                return f".npy format version {version[0]}.{version[1]}, not 1.0"
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:  # not a .npy file: garbage, or a header cut short
        return f"not a readable .npy file: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if dtype != np.uint8 or fortran or len(shape) != 4 or shape[-1] != 3:
        return f"it holds {dtype} {shape}, not uint8 frames (N, H, W, 3)"
    if shape[0] != n:
        return f"it holds {shape[0]} frames, not {n}"
    size, want = path.stat().st_size, offset + int(np.prod(shape))
    if size != want:
        return f"it is {size} bytes, and its header's {shape} frames need {want}"
    return None


@contextlib.contextmanager
def keep_random_state() -> Iterator[None]:
    """Restore torch's (CPU), numpy's and Python's global random generators after the block, whatever it drew:
    a DataLoader draws its workers' base seed from torch's, even with no workers."""
    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def cache_key(paths: Sequence[Path]) -> str:
    """A hash of the format and the image list: each file's name, size and modification time, in order."""
    h = hashlib.sha256(FORMAT.encode())
    for p in paths:
        try:
            st = Path(p).stat()
        except OSError as e:
            raise GzooError(f"image {p} cannot be read for the crop cache ({e.strerror}).") from None
        h.update(f"\n{Path(p).name}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class _Decode(Dataset):
    """(index, frame or None, reason) per image: a worker reports a bad image, the main process says so."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, load_image(self.paths[i]), ""
        except Exception as e:  # decoders raise many kinds for bad files
            return i, None, str(e) or type(e).__name__


def open_cache(paths: Sequence[Path], folder: str | Path, workers: int = 0, progress: bool = True) -> CachedImages:
    """The cache of ``paths`` in ``folder``: the existing file for this image list, or a new one built now.

    Nothing here draws from the global random generators (see :func:`keep_random_state`).
    """
    with keep_random_state():
        return _open_cache([Path(p) for p in paths], Path(folder), workers, progress)


def _open_cache(paths: list[Path], folder: Path, workers: int, progress: bool) -> CachedImages:
    if not paths:
        raise GzooError("data.crop_cache: there are no images to cache.")
    key = cache_key(paths)
    path = folder / f"crop-cache-{key}.npy"
    if path.is_file():
        problem = damage(path, len(paths))
        if problem is None:
            if progress:
                say(f"crop cache: {len(paths)} decoded images from {path}")
            return CachedImages(path)
        say(f"crop cache: {path} is damaged ({problem}); building it again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GzooError(f"data.crop_cache: cannot create {folder} ({e.strerror}); point data.crop_cache at a writable folder.") from None

    first = load_image(paths[0])
    shape = (len(paths), *first.shape)
    need = int(np.prod(shape)) + 4096  # the rows, and the .npy header with room to spare
    for name in (path, path.with_suffix(".json")):  # a killed build's temporary files: their room is free room
        remove_stale_temporaries(name)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise GzooError(
            f"data.crop_cache: the cache of {len(paths)} images needs {need / 1e9:.2f} GB in {folder}, which has "
            f"{free / 1e9:.2f} GB free; free some room, point data.crop_cache at another folder, or set data.crop_cache=null."
        )
    loader = make_loader(_Decode(paths), batch_size=None, num_workers=workers, persistent_workers=False, pin_memory=False)
    with atomic_open(path, "wb") as f, tqdm(total=len(paths), desc="crop cache", unit="img", disable=not progress) as bar:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for i, frame, reason in loader:
            if frame is None:
                raise GzooError(f"image {paths[i]} cannot be read ({reason}); the crop cache was not written.")
            if tuple(frame.shape) != shape[1:]:
                raise GzooError(
                    f"data.crop_cache stores frames of one size, but {paths[i]} is {frame.shape[1]}x{frame.shape[0]} px and "
                    f"{paths[0].name} {shape[2]}x{shape[1]}; resize the images or set data.crop_cache=null."
                )
            f.write(frame.numpy().tobytes())
            bar.update()
    atomic_write_text(  # after the .npy is complete: a .json always describes a cache that exists
        path.with_suffix(".json"),
        json.dumps({"format": FORMAT, "shape": list(shape), "images": str(paths[0].parent), "first": paths[0].name, "last": paths[-1].name}, indent=2) + "\n",
    )
    if progress:
        say(f"crop cache: wrote {len(paths)} decoded images ({need / 1e9:.2f} GB) to {path}")
    return CachedImages(path)
