"""Reading a labelled catalogue (the Kaggle labels CSV, or your own CSV/Parquet catalogue) and checking its images.

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
from gzoo.fits import FitsCutout, FitsOptions, cutout_of_row, has_band_columns
from gzoo.images import IMAGE_SUFFIXES, ImageItem, check_image, image_id, image_suffix, index_images

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

    values = label_values(df, schema.COLUMNS, f"labels file {csv_path}", missing_labels)
    out = pd.DataFrame(values, columns=schema.COLUMNS)
    out.insert(0, schema.ID_COLUMN, ids.to_numpy())
    return out


def label_values(df: pd.DataFrame, columns: list[str], where: str, missing_labels: str, first_row: int = 2) -> np.ndarray:
    """The label columns of a table of strings as floats, NaN for unknown (empty) cells; every other value
    must be a finite number in [0, 1]. ``where`` names the file in the messages; rows count from ``first_row``."""
    raw = df[columns].astype(str)
    empty = raw.apply(lambda c: c.str.strip().isin(["", "nan", "None", "<NA>"])).to_numpy()
    values = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    not_number = np.isnan(values) & ~empty
    if not_number.any():
        r, c = np.argwhere(not_number)[0]
        raise GzooError(f"{where}, row {r + first_row}, column {columns[c]}: {raw.iat[r, c]!r} is not a number.")
    bad_value = ~empty & (~np.isfinite(values) | (values < 0) | (values > 1))
    if bad_value.any():
        r, c = np.argwhere(bad_value)[0]
        raise GzooError(f"{where}, row {r + first_row}, column {columns[c]}: value {raw.iat[r, c]} is outside [0, 1].")
    if empty.any() and missing_labels == "error":
        r, c = np.argwhere(empty)[0]
        raise GzooError(
            f"{where}, row {r + first_row}, column {columns[c]} is empty ({int(empty.sum())} empty cells in all); "
            "pass data.missing_labels=mask to leave unknown cells out of the loss and metrics."
        )
    values[empty] = np.nan
    return values


def galaxy_id(value) -> int | str:
    """A catalogue's id as gzoo uses it: an integer when it is all digits (as for file names, gzoo.images.image_id), else its text."""
    text = str(value).strip()
    if text.endswith(".0") and text[:-2].isdigit():  # an integer column read as floats
        text = text[:-2]
    return int(text) if text.isascii() and text.isdigit() else text


def read_table(path: Path, what: str = "catalogue") -> pd.DataFrame:
    """A CSV or Parquet file (by its extension) as a table of strings, with one-sentence errors."""
    if not path.is_file():
        raise GzooError(f"{what} {path} not found; point data.catalog at a .csv or .parquet file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path).astype(object).where(lambda d: d.notna(), "").astype(str)
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise GzooError(f"{what} {path} is empty ({path.stat().st_size} bytes, no header).") from None
    except Exception as e:
        raise GzooError(f"{what} {path} is not a readable {suffix[1:]} file ({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from None
    raise GzooError(f"{what} {path} must be a .csv or .parquet file, got {suffix or 'no extension'}.")


def read_own_catalog(
    path: str | Path,
    labels: list[str],
    id_column: str = "id_str",
    file_column: str = "file_loc",
    missing_labels: str = "error",
    fits: FitsOptions | None = None,
) -> tuple[pd.DataFrame, dict[int | str, ImageItem]]:
    """Your own galaxies: a CSV or Parquet catalogue with an id column, an image column and label columns.

    A row's image is its ``file_column`` file, or one FITS file per band in the columns ``fits.band_column``
    names (file_g, file_r, file_i by default; see gzoo.fits.cutout_of_row): such a row, and a row whose file is
    FITS, becomes one :class:`gzoo.fits.FitsCutout` item, with the galaxy's size from ``fits.size_column`` when
    the catalogue has it (so the cutout is shown at GZ2's scale).

    Returns the labels (the ``id`` column, then ``labels``, NaN for unknown) and {id: image item}; a
    relative file path is read from the catalogue's folder, and every path is resolved (``Path.resolve``:
    symbolic links followed, ``..`` removed), so the paths returned are the files themselves. Two rows
    naming one file (twice the same name, an absolute and a relative name, a link, a hard link) are an
    error naming both rows and the file: one image under two ids could sit in training and validation. Ids that are all digits become integers, so a
    catalogue of Kaggle files splits exactly as the Kaggle layout does.
    """
    path = Path(path)
    fits = fits or FitsOptions()
    if missing_labels not in MISSING_LABEL_MODES:
        raise GzooError(f"data.missing_labels must be one of {MISSING_LABEL_MODES}, got {missing_labels!r}.")
    df = read_table(path)
    where = f"catalogue {path}"
    per_band = has_band_columns(list(df.columns), fits)
    absent = [c for c in (id_column, *([] if per_band else [file_column]), *labels) if c not in df.columns]
    if absent:
        raise GzooError(
            f"{where} has no column {absent[0]!r} (its columns: {', '.join(map(str, df.columns[:12]))}{' ...' if len(df.columns) > 12 else ''}); "
            f"set data.id_column, data.file_column or data.labels to its names"
            + (f" (or give per-band FITS files: {', '.join(fits.band_columns())}, named by data.fits.band_column)." if absent[0] == file_column else ".")
        )
    if len(df) == 0:
        raise GzooError(f"{where} has no rows.")
    ids = [galaxy_id(v) for v in df[id_column]]
    if any(i == "" for i in ids):
        row = next(r for r, i in enumerate(ids) if i == "")
        raise GzooError(f"{where}, row {row + 2}: the id column {id_column} is empty.")
    seen: dict[int | str, int] = {}
    for row, i in enumerate(ids):
        if i in seen:
            raise GzooError(f"{where}, rows {seen[i] + 2} and {row + 2} are both galaxy {i!r}; each galaxy must appear once.")
        seen[i] = row
    values = label_values(df, labels, where, missing_labels)
    files: dict[int | str, ImageItem] = {}
    rows: dict[Path | tuple[int, int], int] = {}  # the row of each file, by the file it is on disk
    image_columns = [c for c in (file_column, *fits.band_columns(), fits.size_column) if c and c in df.columns]
    for row, (i, record) in enumerate(zip(ids, df[image_columns].to_dict("records"))):
        if not per_band and not str(record[file_column]).strip():
            raise GzooError(f"{where}, row {row + 2}: the file column {file_column} is empty.")
        item = cutout_of_row(record, fits, path.parent, file_column, f"{where}, row {row + 2}")
        item = item.resolve()  # one name per file: symbolic links, "..", relative
        files[i] = item
        for file in item.files if isinstance(item, FitsCutout) else (item,):
            first = rows.setdefault(_file_key(file), row)
            if first != row:
                same = next(f for f in _files_of(files[ids[first]]) if _file_key(f) == _file_key(file))
                also = "" if same == file else f" (as {file}, a hard link)"
                raise GzooError(
                    f"{where}, rows {first + 2} and {row + 2} ({ids[first]!r} and {i!r}) are both the image {same}{also}; "
                    "each galaxy needs its own file (one image under two ids could sit in training and in validation)."
                )
    out = pd.DataFrame(values, columns=labels)
    out.insert(0, "id", pd.Series(ids, dtype=object))
    return out, files


def _files_of(item: ImageItem) -> tuple[Path, ...]:
    return item.files if isinstance(item, FitsCutout) else (Path(item),)


def _file_key(path: Path) -> Path | tuple[int, int]:
    """What makes two names one file: its device and inode when it exists (hard links too), else its resolved path."""
    try:
        st = path.stat()
    except OSError:
        return path
    return (st.st_dev, st.st_ino)


def check_files(files: dict, progress: bool = True, on_bad_image: str = "error", fits: FitsOptions | None = None) -> tuple[dict, list[tuple[ImageItem, str]]]:
    """Check a catalogue's image files: each must exist and decode (see :func:`check_images` for the rules); a FITS
    cutout is made as training will make it (``fits``)."""
    if on_bad_image not in BAD_IMAGE_MODES:
        raise GzooError(f"data.on_bad_image must be one of {BAD_IMAGE_MODES}, got {on_bad_image!r}.")
    missing = [(i, f) for i, p in files.items() for f in _files_of(p) if not f.is_file()]
    if missing:
        i, p = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GzooError(f"galaxy {i!r}: its image {p} does not exist{more}; fix data.file_column's paths (relative ones are read from the catalogue's folder).")
    check = (lambda p: check_image(p, fits)) if fits is not None else check_image
    with ThreadPoolExecutor(max_workers=4) as pool:
        reasons = list(tqdm(pool.map(check, files.values()), total=len(files), desc="checking images", disable=not progress, leave=False))
    bad = [(p, r) for p, r in zip(files.values(), reasons) if r is not None]
    if bad and on_bad_image == "error":
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise GzooError(f"image {bad[0][0]} cannot be read ({bad[0][1]}){more}; replace or remove it, or pass data.on_bad_image=skip to leave such files out.")
    return {i: p for (i, p), r in zip(files.items(), reasons) if r is None}, bad


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


def check_images(
    ids: np.ndarray, images_dir: Path, progress: bool = True, on_bad_image: str = "error", fits: FitsOptions | None = None
) -> tuple[dict[int, Path], list[tuple[Path, str]]]:
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
    check = (lambda p: check_image(p, fits)) if fits is not None else check_image
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL releases the GIL while decoding
        reasons = list(tqdm(pool.map(check, paths.values()), total=len(paths), desc="checking images", disable=not progress, leave=False))
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
