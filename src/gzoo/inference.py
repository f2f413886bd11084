"""Running a network over many images: the views, test-time augmentation, batching, and tables of ids.

Training (its TTA-8 test score), predict, evaluate, embed, the Python API, the feature cache and the GPU check
all run their networks here, so an image is seen the same way everywhere:

    views      tta_angles (whole-image rotations before the crop), dihedral_views (the 8 right-angle views,
               made on the device from the cropped uint8 batch; the feature cache takes them too)
    batches    image_dataset (unlabelled images as the network sees them), predict_loader (predictions or
               pooled features, averaged over the views, and the answers' spreads: gzoo.uncertainty),
               predict_images (an (N, 37) array)
    arrays     predict_arrays (answers and/or pooled features of many images, the unreadable ones listed), id_column_name
    sources    list_images (a folder), image_files (given files), image_source (whatever the Python API is given)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gzoo import schema
from gzoo.data import BAD_IMAGE_MODES, GalaxyZooDataset, make_loader
from gzoo.device import autocast
from gzoo.errors import GzooError
from gzoo.fits import FitsOptions
from gzoo.images import FITS_SUFFIXES, IMAGE_SUFFIXES, FitsStretch, GalaxyId, ImageItem, id_sort_key, ids_by_file, image_suffix, index_images, need_fits_reader
from gzoo.log import say
from gzoo.net import GalaxyNet
from gzoo.transforms import eval_transform
from gzoo.uncertainty import SAMPLES, spread
from gzoo.uncertainty import check as check_uncertainty

# ----------------------------------------------------------------------------- views


def tta_angles(tta: int) -> list[float]:
    """Angles (degrees) by which the whole image is rotated before the crop; tta=8 uses dihedral_views instead."""
    return [0.0] if tta in (1, 8) else [360.0 * i / tta for i in range(tta)]


def dihedral_views(x: torch.Tensor, order: Sequence[int] = range(8)) -> torch.Tensor:
    """(B, C, H, W) -> (B, len(order), C, H, W): the right-angle views of x numbered in ``order``. View v is
    v % 4 quarter turns of x (v < 4) or of its mirror image x.flip(-1) (v >= 4); no interpolation, so they are
    exact. By default all 8 in that numbering (tta=8); the feature cache takes them in its own order."""
    mirror = x.flip(-1) if any(v >= 4 for v in order) else x  # x: not used when no view is mirrored
    return torch.stack([torch.rot90(mirror if v >= 4 else x, v % 4, dims=(-2, -1)) for v in order], dim=1)


def image_dataset(
    net: GalaxyNet,
    images: Sequence[ImageItem | np.ndarray],
    ids: Sequence,
    tta: int = 1,
    on_bad_image: str = "skip",
    fits: FitsOptions | FitsStretch | None = None,
) -> GalaxyZooDataset:
    """Unlabelled images as the network sees them (its evaluation view), with the views of ``tta``."""
    if any(not isinstance(p, np.ndarray) and image_suffix(p) in FITS_SUFFIXES for p in images):
        need_fits_reader(next(p for p in images if not isinstance(p, np.ndarray) and image_suffix(p) in FITS_SUFFIXES))  # here, not in a worker
    tf = eval_transform(net.image_size, net.crop_fraction)
    return GalaxyZooDataset(images, None, ids, tf, views=tta_angles(tta), on_bad_image=on_bad_image, fits=fits)


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_loader(
    net: GalaxyNet,
    loader: DataLoader,
    tta: int = 1,
    precision: str = "auto",
    progress: bool = False,
    outputs: str = "predictions",
    uncertainty: Sequence[str] = (),
    samples: int = SAMPLES,
) -> Iterator[dict]:
    """Predictions batch by batch, in the loader's order: each batch's dict with "pred" (B, 37) float64
    averaged over the views (NaN rows for unreadable images, whose reason is under "error").

    The loader's items carry views (B, V, 3, S, S) (see GalaxyZooDataset); tta=8 adds the
    8 right-angle views on the device. ``outputs``: "predictions" ("pred"), "embeddings" ("features":
    the pooled body features (B, F), GalaxyNet.features) or "both", from one pass of the body; each
    averaged over the views the same way. ``uncertainty``: spreads of gzoo.uncertainty.METHODS, under "std" as
    {method: (B, 37) standard deviations} from the same pass ("dropout" and "both" run the tail ``samples`` times
    more on its features); the answers "pred" are the same with or without them.
    """
    if outputs not in OUTPUTS:
        raise GzooError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}.")
    if tta < 1:
        raise GzooError(f"tta must be a number of views >= 1, got {tta}.")
    check_uncertainty(uncertainty, tta, outputs, net.dropout_p)
    device = next(net.parameters()).device
    net.eval()
    masks = net.dropout_masks(samples).to(device) if set(uncertainty) - {"views"} else None
    desc = f"{'embedding' if outputs == 'embeddings' else 'predicting'} (tta={tta})"
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", disable=not progress) as bar:  # type: ignore[arg-type]  # torch types Dataset without __len__; gzoo's have one
        for batch in loader:
            views = batch["image"]
            x = views.to(device, non_blocking=True).flatten(0, 1)  # (B*V, 3, S, S), image-major
            if tta == 8:
                x = dihedral_views(x).flatten(0, 1)
            with autocast(device, precision):
                features = net.features(x)
                pred = net.from_features(features) if outputs != "embeddings" else None
                draws = net.sample_from_features(features, masks) if masks is not None else None
            errors = list(batch.get("error", [""] * len(views)))
            bad = [bool(e) for e in errors]
            out = {**batch, "error": errors}
            for key, value in (("pred", pred), ("features", features if outputs != "predictions" else None)):
                if value is not None:
                    out[key] = value.double().view(len(views), -1, value.shape[-1]).mean(dim=1).cpu().numpy()
                    out[key][bad] = np.nan
            if uncertainty:
                assert pred is not None  # check_uncertainty: answers are predicted
                per_view = pred.double().view(len(views), -1, pred.shape[-1])  # (B, V, L)
                drawn = draws.double().view(len(draws), *per_view.shape) if draws is not None else None  # (K, B, V, L)
                out["std"] = {m: spread(per_view, drawn, m).cpu().numpy() for m in uncertainty}
                for std in out["std"].values():
                    std[bad] = np.nan
            bar.update(len(views))
            yield out


#: What a pass over images gives: the answers, the pooled body features, or both from one pass.
OUTPUTS = ("predictions", "embeddings", "both")


def _check_readable(batch: dict, on_bad_image: str) -> None:
    if on_bad_image == "error":
        for item, error in zip(batch["id"], batch["error"]):
            if error:
                raise GzooError(f"image {item} cannot be read ({error}); replace or remove it, or pass on_bad_image=skip to leave it out.")


def predict_images(
    net: GalaxyNet,
    images: Sequence[Path | np.ndarray],
    tta: int = 1,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_image: str = "error",
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """(N, 37) predictions for image paths or decoded RGB uint8 arrays (H, W, 3).

    An unreadable image is a GzooError naming it, or with ``on_bad_image="skip"`` a row of NaN.
    """
    names = [str(p) if not isinstance(p, np.ndarray) else f"array {i}" for i, p in enumerate(images)]
    loader = make_loader(image_dataset(net, images, names, tta), batch_size, num_workers)
    rows = []
    for batch in predict_loader(net, loader, tta, precision, progress):
        _check_readable(batch, on_bad_image)
        rows.append(batch["pred"])
    return np.concatenate(rows) if rows else np.empty((0, len(net.labels)))


# ----------------------------------------------------------------------------- tables


def id_column_name(ids: Sequence[GalaxyId]) -> str:
    """The id column's name: Kaggle's GalaxyID when every id is an integer, else id_str (as galaxy-datasets names it)."""
    return schema.ID_COLUMN if all(isinstance(i, int) for i in ids) else "id_str"


def predict_arrays(
    net: GalaxyNet,
    images: Sequence[ImageItem | np.ndarray],
    tta: int = 1,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_image: str = "error",
    precision: str = "auto",
    outputs: str = "predictions",
    fits: FitsOptions | FitsStretch | None = None,
    bar: tqdm | None = None,
    uncertainty: str = "none",
    samples: int = SAMPLES,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[tuple[Path | str, str]]]:
    """The network's outputs for image files (or decoded RGB uint8 arrays), in the order given: {"pred": (N, labels)
    and/or "features": (N, F)} (see :func:`predict_loader`'s ``outputs``; rows of unreadable images left out), which
    of the N were readable, and the unreadable ones (path, or "array <position>", and the reason). An image the
    dataset cannot decode or transform (a broken file, one too small to crop) is an error naming it, or with
    ``on_bad_image="skip"`` left out and listed. ``bar``: a progress bar to advance by each batch's images.
    ``uncertainty`` (one of gzoo.uncertainty.METHODS, or "none"): also "std", (N, labels), that spread of each answer.

    Survey-scale prediction (gzoo.survey: the prediction and embedding tools, the Python API) runs each part here.
    """
    if on_bad_image not in BAD_IMAGE_MODES:
        raise GzooError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_MODES)}, got {on_bad_image!r}.")
    images = list(images)
    names = [f"array {j}" if isinstance(p, np.ndarray) else p for j, p in enumerate(images)]  # what the messages call them
    # Every failure of one image (its decoding, its transform) comes back from the dataset as that image's "error".
    loader = make_loader(image_dataset(net, images, range(len(images)), tta, fits=fits), batch_size, num_workers, persistent_workers=False)
    values: dict[str, list[np.ndarray]] = {}
    good: list[bool] = []
    skipped: list[tuple[Path | str, str]] = []
    spreads = [uncertainty] if uncertainty != "none" else []
    for batch in predict_loader(net, loader, tta, precision, outputs=outputs, uncertainty=spreads, samples=samples):
        for j, error in zip(batch["id"].tolist(), batch["error"]):
            if error and on_bad_image == "error":
                raise GzooError(f"image {names[j]} cannot be read ({error}); replace or remove it, or pass on_bad_image=skip to leave it out.")
            skipped += [(names[j], error)] if error else []
            good.append(not error)
        for key in ("pred", "features"):
            if key in batch:
                values.setdefault(key, []).append(batch[key])
        if spreads:
            values.setdefault("std", []).append(batch["std"][uncertainty])
        if bar is not None:
            bar.update(len(batch["error"]))
    kept = np.asarray(good, dtype=bool)
    widths = {"pred": len(net.labels), "features": net.body.num_features, "std": len(net.labels)}
    keys = [k for k, o in (("pred", "embeddings"), ("features", "predictions")) if outputs != o] + (["std"] if spreads else [])
    return {k: (np.concatenate(values[k]) if values.get(k) else np.empty((0, widths[k])))[kept] for k in keys}, kept, skipped


# ----------------------------------------------------------------------------- files


def broken_link(path: Path) -> GzooError:
    return GzooError(f"{path} is a broken symbolic link (its target {os.readlink(path)} does not exist); fix the link or remove it.")


def list_images(folder: Path) -> tuple[list[Path], list[GalaxyId]]:
    """The image files (gzoo.images.IMAGE_SUFFIXES, any letter case) in ``folder`` and its subfolders, and their ids, sorted by id.

    An id is the file name without its extension (see gzoo.images.image_id); when they are not all
    integers every id is the name as text. Two files of one id (in one folder or in two) and broken
    symbolic links are errors naming them; other files are left out, and said.
    """
    if not folder.is_dir():
        raise GzooError(f"image folder {folder} not found; images= must be a folder of image files named <id>.<ext> ({' '.join(IMAGE_SUFFIXES)}).")
    by_id: dict[GalaxyId, Path] = {}
    others: list[Path] = []
    for here, subfolders, _ in os.walk(folder, followlinks=True):
        subfolders.sort()
        found = index_images(here)
        if found.broken:
            raise broken_link(found.broken[0])
        for gid, path in found.by_id.items():
            if gid in by_id:
                raise GzooError(
                    f"{by_id[gid]} and {path} are both galaxy {gid!r} (an id is the file name without its extension); rename or remove one of them."
                )
            by_id[gid] = path
        others += [p for p in found.others if not p.is_dir()]
    if not by_id:
        raise GzooError(
            f"{folder} holds no image files; images= must be a folder of image files named <id>.<ext> ({' '.join(IMAGE_SUFFIXES)}, any letter case), "
            "or a catalogue (.csv, .parquet)."
        )
    if others:
        shown = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        say(f"left out what is not an image file ({' '.join(IMAGE_SUFFIXES)}) in {folder}: {shown} ({len(others)} in all)")
    ids = sorted(by_id, key=id_sort_key)
    paths = [by_id[i] for i in ids]
    return paths, ids if all(isinstance(i, int) for i in ids) else [str(i) for i in ids]


def image_files(
    files: Sequence[str | Path],
    ids: Sequence[GalaxyId] | None = None,
    where: str = "",
    id_from: str = "its file name without the extension",
    base: Path | None = None,
) -> tuple[list[Path], list[GalaxyId]]:
    """Given image files, checked (each there, an image gzoo reads, one file per id) and their ids (from their names unless
    given; ``id_from`` says where they come from, ``where`` where the files were named and ``base`` the folder relative
    names were read from, for the error messages)."""
    paths = [Path(f) for f in files]
    for path in paths:
        if path.is_symlink() and not path.exists():
            raise broken_link(path)
        if not path.is_file():
            raise GzooError(f"image file {path}{where} not found; give existing files (relative paths are read from {base or Path.cwd()}).")
        if image_suffix(path) is None:
            raise GzooError(f"{path}{where} is not an image file gzoo reads ({' '.join(IMAGE_SUFFIXES)}, any letter case).")
    if ids is not None:
        ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
        if any(pd.isna(i) for i in ids):
            raise GzooError(f"image file {paths[[pd.isna(i) for i in ids].index(True)]} has no id ({id_from} is empty); fill it in or drop the row.")
    ids = list(ids_by_file(paths, ids, id_from))
    return paths, ids if all(isinstance(i, int) for i in ids) else [str(i) for i in ids]


def _blank(value) -> bool:
    return value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value)) or not str(value).strip()


def _rows_source(
    files: list, ids: list | None, labels: list, where: str, file_column: str, id_column: str, base: Path | None
) -> tuple[list[Path], list[GalaxyId] | None]:
    """The image files and ids of a table's rows (a DataFrame or a catalogue file; ``labels`` name its rows in
    ``where``): every row with a file and, when the table has the id column, an id; relative paths read from
    ``base`` (None: the working folder); one row per image file, compared as resolved paths."""
    for label, file in zip(labels, files):
        if _blank(file):
            raise GzooError(f"{where}, row {label}: the file column {file_column!r} is empty; fill it in or drop the row.")
    if ids is not None:
        for label, i in zip(labels, ids):
            if _blank(i):
                raise GzooError(f"{where}, row {label}: the id column {id_column!r} is empty; fill it in or drop the row.")
    paths = [Path(str(f)).expanduser() for f in files]
    paths = [p if base is None or p.is_absolute() else base / p for p in paths]
    _one_row_per_file(paths, labels, where, ids)
    return paths, ids


def _one_row_per_file(paths: list[Path], labels: list, where: str, ids: list | None = None, rows: str = "rows") -> None:
    """Two rows naming one image file (the same name twice, an absolute and a relative name, a link) are an
    error naming both: one image under two ids would be two galaxies in the table."""
    seen: dict[Path, int] = {}
    for k, path in enumerate(paths):
        first = seen.setdefault(path.resolve(), k)
        if first != k:
            both = f" ({ids[first]!r} and {ids[k]!r})" if ids is not None else ""
            raise GzooError(
                f"{where}, {rows} {labels[first]} and {labels[k]}{both} are both the image {path.resolve()}; each image must appear once, so drop one of them."
            )


def _arrays_source(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[int], str]:
    """Decoded images: each an RGB uint8 array (H, W, 3); their ids are their positions 0..N-1, in the column "index"."""
    for k, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise GzooError(f"item {k} of the list is a {type(a).__name__}, not an array; give a list of image files or a list of arrays, not both.")
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise GzooError(
                f"array {k} of the list has shape {a.shape} and dtype {a.dtype}; give RGB images as uint8 arrays of shape (H, W, 3), "
                "e.g. np.asarray(PIL.Image.open(file).convert('RGB'))."
            )
    return list(arrays), list(range(len(arrays))), ARRAY_ID_COLUMN


#: The id column of a table of decoded arrays: each array's position in the list given.
ARRAY_ID_COLUMN = "index"
#: The catalogue files the Python API reads as a table of images (a file column, and optionally an id column).
CATALOG_SUFFIXES = (".csv", ".parquet")


def image_source(
    source, file_column: str = "file_loc", id_column: str = "id_str", root: str | Path | None = None
) -> tuple[Sequence[Path | np.ndarray], Sequence[GalaxyId], str]:
    """The images, ids and id column name of what the Python API is given: a folder (as the tool reads it), one
    image file, a list of image files, a catalogue file (.csv or .parquet) or a DataFrame with a ``file_column``
    (ids from ``id_column`` when it has one, else from the file names), or decoded RGB uint8 arrays (H, W, 3):
    a list of them, or one, with ids 0..N-1 in the column "index".

    Relative paths of a list or a DataFrame are read from ``root`` (default: the working folder); those of a
    catalogue file from ``root`` or else the catalogue's folder, as training reads a catalogue (data.catalog).
    A row without a file or id, and two rows naming one image file, are errors naming the rows.
    """
    base = Path(root).expanduser() if root is not None else None
    if base is not None and not base.is_dir():
        raise GzooError(f"root={root} is not a folder; give the folder relative paths are read from.")
    if isinstance(source, np.ndarray):
        if source.ndim not in (3, 4):
            raise GzooError(f"an array source must be one RGB uint8 image (H, W, 3) or a stack of them (N, H, W, 3), got shape {source.shape}.")
        return _arrays_source([source] if source.ndim == 3 else list(source))
    if isinstance(source, pd.DataFrame):
        if file_column not in source.columns:
            raise GzooError(
                f"the DataFrame has no column {file_column!r} (its columns: {', '.join(map(str, source.columns))}); pass file_column= to name the one holding the image files."
            )
        has_ids = id_column in source.columns
        files, ids = _rows_source(
            source[file_column].tolist(),
            source[id_column].tolist() if has_ids else None,
            list(source.index),
            "the DataFrame",
            file_column,
            id_column,
            base,
        )
        return _checked_files(files, ids, f" (column {file_column!r})", id_column if has_ids else None, base)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            paths, ids = list_images(path)
            return paths, ids, id_column_name(ids)
        if path.suffix.lower() in CATALOG_SUFFIXES:
            return _catalog_source(path, file_column, id_column, base)
        source = [source]
    if not isinstance(source, Sequence) or isinstance(source, str) or not source:
        raise GzooError(
            f"predict/embed take a folder, an image file, a list of image files, a catalogue file (.csv, .parquet), a DataFrame with a "
            f"{file_column!r} column or RGB uint8 arrays, got {type(source).__name__} {source!r:.60}."
        )
    if isinstance(source[0], np.ndarray):
        return _arrays_source(source)
    if any(isinstance(s, np.ndarray) for s in source):
        k = next(k for k, s in enumerate(source) if isinstance(s, np.ndarray))
        raise GzooError(f"item {k} of the list is an array and item 0 a {type(source[0]).__name__}; give a list of image files or a list of arrays, not both.")
    paths = [Path(s).expanduser() for s in source]
    paths = [p if base is None or p.is_absolute() else base / p for p in paths]
    _one_row_per_file(paths, list(range(len(paths))), "the list", rows="items")
    return _checked_files(paths, None, "", None, base)


def _checked_files(files: list[Path], ids: list | None, where: str, id_column: str | None, base: Path | None) -> tuple[list[Path], list[GalaxyId], str]:
    if ids is None:
        paths, ids = image_files(files, where=where, base=base)
        return paths, ids, id_column_name(ids)
    paths, ids = image_files(files, ids, where, f"its {id_column!r} value", base)
    assert id_column is not None  # ids come with the name of their column
    return paths, ids, id_column


def _catalog_source(path: Path, file_column: str, id_column: str, root: Path | None) -> tuple[list[Path], list[GalaxyId], str]:
    """A catalogue file's images, read as training reads data.catalog (gzoo.data.catalog.read_table and galaxy_id):
    relative paths from the catalogue's folder (or ``root``), ids that are all digits as integers, rows counted from 2."""
    from gzoo.data.catalog import galaxy_id, read_table

    if not path.is_file():
        raise GzooError(f"catalogue {path} not found; give an existing .csv or .parquet file (relative paths are read from {Path.cwd()}).")
    table = read_table(path)
    where = f"catalogue {path}"
    if file_column not in table.columns:
        raise GzooError(
            f"{where} has no column {file_column!r} (its columns: {', '.join(map(str, table.columns[:12]))}{' ...' if len(table.columns) > 12 else ''}); "
            "pass file_column= to name the one holding the image files."
        )
    if len(table) == 0:
        raise GzooError(f"{where} has no rows.")
    has_ids = id_column in table.columns
    ids = [galaxy_id(v) if str(v).strip() else "" for v in table[id_column]] if has_ids else None
    base = root or path.parent
    files, ids = _rows_source(table[file_column].tolist(), ids, list(range(2, len(table) + 2)), where, file_column, id_column, base)
    return _checked_files(files, ids, f" ({where})", id_column if has_ids else None, base)
