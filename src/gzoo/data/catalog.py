"""Reading a labelled catalogue (the Kaggle labels CSV) and checking that its images are there and readable.

Everything a user can get wrong ends in a :class:`GzooError` with one sentence that names the
file, row, column or option.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from gzoo import schema
from gzoo.errors import GzooError
from gzoo.images import IMAGE_SUFFIXES, check_image, image_id, image_suffix, index_images

MISSING_LABEL_MODES = ("error", "mask")
BAD_IMAGE_MODES = ("error", "skip")


def read_catalog(csv_path: str | Path, missing_labels: str = "error") -> pd.DataFrame:
    """Read and validate a Kaggle labels CSV; returns it indexed 0..N-1 with NaN for unknown cells."""
    csv_path = Path(csv_path)
    if missing_labels not in MISSING_LABEL_MODES:
        raise GzooError(f"data.missing_labels must be one of {MISSING_LABEL_MODES}, got {missing_labels!r}.")
    if not csv_path.is_file():
        raise GzooError(
            f"labels file {csv_path} not found; set data.labels_csv to the labels file's name in {csv_path.parent}, "
            "or data.root (or $GZOO_DATA) to the folder holding it."
        )
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise GzooError(
            f"labels file {csv_path} is empty ({csv_path.stat().st_size} bytes, no header); point data.labels_csv at the labels file, or restore this one."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise GzooError(f"labels file {csv_path} is not a readable CSV ({e}).") from None

    header = list(df.columns)
    if header != schema.HEADER:
        wrong = next(
            (f"column {i + 1} is {got!r}, expected {want!r}" for i, (got, want) in enumerate(zip(header, schema.HEADER)) if got != want),
            f"it has {len(header)} columns, expected {len(schema.HEADER)}",
        )
        raise GzooError(f"labels file {csv_path} has the wrong header: {wrong} (expected GalaxyID then Class1.1 ... Class11.6 in Kaggle order).")
    if len(df) == 0:
        raise GzooError(f"labels file {csv_path} has no rows.")
    short = _short_row(csv_path, len(header))
    if short is not None:
        row, fields = short
        raise GzooError(
            f"labels file {csv_path}, row {row} has {fields} fields, expected {len(header)} (the row is cut short); "
            "complete it or remove it (an unknown value is an empty field between commas)."
        )

    # GalaxyID: unique integers.
    ids = pd.to_numeric(df[schema.ID_COLUMN], errors="coerce")
    bad = ids.isna() | (ids != ids.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise GzooError(f"labels file {csv_path}, row {row + 2}: GalaxyID {df[schema.ID_COLUMN].iloc[row]!r} is not an integer.")
    ids = ids.astype(np.int64)
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise GzooError(f"labels file {csv_path}, row {row + 2}: GalaxyID {ids.iloc[row]} appears more than once.")

    # Values: empty = unknown; otherwise finite numbers in [0, 1].
    raw = df[schema.COLUMNS]
    empty = raw.apply(lambda c: c.str.strip() == "").to_numpy()
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    not_number = np.isnan(values) & ~empty
    if not_number.any():
        r, c = np.argwhere(not_number)[0]
        raise GzooError(f"labels file {csv_path}, row {r + 2}, column {schema.COLUMNS[c]}: {raw.iat[r, c]!r} is not a number.")
    bad_value = ~empty & (~np.isfinite(values) | (values < 0) | (values > 1))
    if bad_value.any():
        r, c = np.argwhere(bad_value)[0]
        raise GzooError(f"labels file {csv_path}, row {r + 2}, column {schema.COLUMNS[c]}: value {raw.iat[r, c]} is outside [0, 1].")
    if empty.any() and missing_labels == "error":
        r, c = np.argwhere(empty)[0]
        raise GzooError(
            f"labels file {csv_path}, row {r + 2}, column {schema.COLUMNS[c]} is empty ({int(empty.sum())} empty cells in all); "
            "pass data.missing_labels=mask to leave unknown cells out of the loss and metrics."
        )
    values[empty] = np.nan
    out = pd.DataFrame(values, columns=schema.COLUMNS)
    out.insert(0, schema.ID_COLUMN, ids.to_numpy())
    return out


def _short_row(csv_path: Path, n_fields: int) -> tuple[int, int] | None:
    """(row number, its field count) of the first row with fewer fields than the header, or None.

    pandas fills a short row's missing fields as empty cells, which data.missing_labels=mask would then
    read as unknown labels; a cut-short row is a damaged file, not unknown votes. Rows are counted as in
    the other messages: the header is row 1 (blank lines, which pandas skips, are not counted).
    """
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = (r for r in csv.reader(f) if r)
        next(rows, None)
        for row, fields in enumerate(rows, start=2):
            if len(fields) < n_fields:
                return row, len(fields)
    return None


def check_images(ids: np.ndarray, images_dir: Path, progress: bool = True, on_bad_image: str = "error") -> tuple[dict[int, Path], list[tuple[Path, str]]]:
    """Check that every GalaxyID has an image that decodes; returns {id: path} and the unreadable files.

    A galaxy's image is the file of ``images_dir`` whose name without its extension is the GalaxyID
    (``100150.jpg``, ``100150.JPG``, ``100150.png``, ... any of gzoo.images.IMAGE_SUFFIXES in any letter
    case); two files of one galaxy (``0100150.jpg`` beside ``100150.jpg``) are an error naming both,
    and so is a broken symbolic link standing for a galaxy's image.
    A missing image is always an error (a wrong folder should not silently skip everything).
    An unreadable one (truncated, corrupt, empty, not an image) is an error naming it, or,
    with ``on_bad_image="skip"``, left out and returned with its reason.
    """
    if on_bad_image not in BAD_IMAGE_MODES:
        raise GzooError(f"data.on_bad_image must be one of {BAD_IMAGE_MODES}, got {on_bad_image!r}.")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise GzooError(f"image folder {images_dir} not found; set data.root and data.images_dir to the folder of <GalaxyID>.jpg files.")
    found = index_images(images_dir)
    broken = {gid: link for link in found.broken if (gid := _link_id(link)) is not None}
    if any(int(i) in broken for i in ids):
        link = broken[next(int(i) for i in ids if int(i) in broken)]
        raise GzooError(f"image {link} is a broken symbolic link (its target {os.readlink(link)} does not exist); fix the link or remove it.")
    missing = [int(i) for i in ids if int(i) not in found.by_id]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise GzooError(
            f"{len(missing)} galaxies have no image in {images_dir}: GalaxyID {shown} (an image is <GalaxyID>{'|'.join(IMAGE_SUFFIXES)}, any letter case)."
        )
    paths = {int(i): found.by_id[int(i)] for i in ids}
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
        reasons = list(tqdm(pool.map(check_image, paths.values()), total=len(paths), desc="checking images", disable=not progress, leave=False))
    bad = [(p, r) for p, r in zip(paths.values(), reasons) if r is not None]
    if bad and on_bad_image == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise GzooError(f"image {bad[0][0]} cannot be read ({bad[0][1]}){more}; replace or remove it, or pass data.on_bad_image=skip to leave such files out.")
    good = {i: p for (i, p), r in zip(paths.items(), reasons) if r is None}
    return good, bad


def _link_id(link: Path) -> int | None:
    """The GalaxyID a (broken) link's name gives, if it is an image name."""
    gid = image_id(link) if image_suffix(link) else None
    return gid if isinstance(gid, int) else None
