"""A catalogue of any size read in chunks: a CSV or Parquet file with an id column, a file column and columns to carry.

Survey-scale prediction (gzoo.survey) reads a catalogue here, never whole: pyarrow streams it in record
batches (Parquet by row groups, CSV by blocks), and :meth:`CatalogChunks.chunks` cuts the stream into
chunks of exactly ``size`` rows, so chunk k is always rows [k * size, (k + 1) * size) whatever the
file's row groups or blocks. Memory is set by the chunk size, not by the number of rows.

Before any chunk is read, one pass over the id and file columns (:meth:`CatalogChunks.scan`) checks
the whole catalogue: no empty id or file, no id twice, no file named twice (compared as absolute,
normalised paths, without touching the files: two links to one file are two names, each predicted), and it fixes
each carried column's type (the narrowest of integer, number, text that every row accepts), counts
the rows and makes a digest of the ids and files, so a rerun can tell it is given the same catalogue.
The pass keeps 16 bytes per row (two 64-bit hashes), about 16 MB per million rows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gzoo.errors import GzooError
from gzoo.fits import FitsOptions, cutout_of_row, has_band_columns
from gzoo.images import ImageItem

#: Rows per record batch read from the file (a chunk gathers as many batches as it needs).
READ_ROWS = 65536


@dataclass
class Chunk:
    """Rows [start, start + len(files)) of a catalogue: the image files (absolute), the ids, and the carried columns."""

    index: int
    start: int
    files: list[ImageItem]  # a Path, or a FitsCutout (per-band files, the galaxy's size)
    ids: list
    carry: pa.Table  # the carried columns of these rows, in catalogue order


class CatalogChunks:
    """A CSV or Parquet catalogue, read in chunks (see the module's docstring).

    ``file_column`` holds each galaxy's image (relative paths are read from ``root``, by default the
    catalogue's folder, as training reads data.catalog), or ``fits``' per-band columns (file_g, file_r,
    file_i) its FITS frames, with its size from ``fits.size_column`` when there is one (gzoo.fits.cutout_of_row,
    as training reads them); ``id_column`` its id (integers when every id is all digits); ``carry`` the
    columns copied to the output as they are.
    """

    def __init__(
        self,
        path: Path,
        file_column: str = "file_loc",
        id_column: str = "id_str",
        carry: list[str] | None = None,
        root: Path | None = None,
        fits: FitsOptions | None = None,
    ):
        self.path, self.file_column, self.id_column, self.carry = Path(path), file_column, id_column, list(carry or [])
        self.fits = fits or FitsOptions()
        self.root = Path(root) if root is not None else self.path.parent
        self.where = f"catalogue {self.path}"
        self.parquet = self.path.suffix.lower() == ".parquet"
        if not self.path.is_file():
            raise GzooError(
                f"{self.where} not found; images= takes a folder of images or a catalogue (.csv or .parquet) with {file_column!r} and {id_column!r} columns."
            )
        if self.path.suffix.lower() not in (".csv", ".parquet"):
            raise GzooError(f"{self.where} must be a .csv or .parquet file, got {self.path.suffix or 'no extension'}.")
        self.columns = self._header()
        self.per_band = has_band_columns(self.columns, self.fits)
        size = [self.fits.size_column] if self.fits.size_column and self.fits.size_column in self.columns else []
        # The columns that make each row's image item: its file, or its per-band files, and its size.
        self.image_columns = [c for c in (file_column, *(self.fits.band_columns() if self.per_band else []), *size) if c in self.columns]
        wanted = [id_column, *([] if self.per_band else [file_column]), *self.carry]
        absent = [c for c in wanted if c not in self.columns]
        if absent:
            shown = ", ".join(self.columns[:12]) + (" ..." if len(self.columns) > 12 else "")
            option = "carry" if absent[0] in self.carry else ("id_column" if absent[0] == id_column else "file_column")
            raise GzooError(f"{self.where} has no column {absent[0]!r} (its columns: {shown}); set {option}= to one of its names.")
        if len(set(wanted)) < len(wanted):
            raise GzooError(f"{self.where}: carry= names a column twice or names the id or file column ({', '.join(wanted)}); list each column once.")
        self.rows = 0
        self.digest = ""
        self.types: dict[str, pa.DataType] = {}
        self.id_type: pa.DataType = pa.string()

    # ------------------------------------------------------------------ reading

    def _header(self) -> list[str]:
        try:
            if self.parquet:
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            with pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=1 << 16)) as reader:
                return list(reader.schema.names)
        except (pa.ArrowInvalid, OSError) as e:
            raise GzooError(f"{self.where} is not a readable {self.path.suffix[1:]} file ({str(e).splitlines()[0]}).") from None

    def _batches(self, columns: list[str], types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
        """The catalogue's ``columns`` in record batches, cast to ``types``."""
        try:
            if self.parquet:
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=READ_ROWS, columns=columns):
                    yield pa.RecordBatch.from_arrays([batch.column(c).cast(types[c]) if c in types else batch.column(c) for c in columns], names=columns)
                return
            convert = pacsv.ConvertOptions(include_columns=columns, column_types=types, strings_can_be_null=False, quoted_strings_can_be_null=False)
            with pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=8 << 20), convert_options=convert) as reader:
                yield from reader
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise GzooError(f"{self.where} could not be read ({str(e).splitlines()[0]}); fix the file or the columns named.") from None

    def scan(self, progress: bool = True) -> CatalogChunks:
        """One pass over the whole catalogue before any work: its checks, row count, column types and digest.

        Ids are integers when the column is an integer one or every id is all digits (as training's
        galaxy_id reads them: 0100150 is 100150), else text."""
        from tqdm.auto import tqdm

        names = [self.id_column, *self.image_columns, *self.carry]
        text = {c: pa.string() for c in (self.id_column, *self.image_columns)} | ({c: pa.string() for c in self.carry} if not self.parquet else {})
        kinds = {c: [pa.int64(), pa.float64(), pa.string()] for c in self.carry if not self.parquet}  # still possible, narrowest first
        as_text, as_number, file_hashes = [], [], []
        digits = True
        digest = hashlib.sha256()
        total = pq.ParquetFile(self.path).metadata.num_rows if self.parquet else None
        with tqdm(total=total, desc=f"checking {self.path.name}", unit="row", disable=not progress) as bar:
            for batch in self._batches(names, text):
                start = self.rows
                ids = batch.column(self.id_column)
                self._check_blank(ids, self.id_column, start)
                if not self.per_band:
                    self._check_blank(batch.column(self.file_column), self.file_column, start)
                id_text = [v.strip() for v in ids.to_pylist()]
                digits = digits and all(v.isascii() and v.isdigit() for v in id_text)
                paths = [os.path.normpath(str(item)) for item in self._items(batch.select(self.image_columns), start)]
                as_text.append(_hashes(id_text))
                as_number.append(_hashes([v.lstrip("0") or "0" for v in id_text]) if digits else np.zeros(0, np.uint64))
                file_hashes.append(_hashes(paths))
                for i, f in zip(id_text, paths):
                    digest.update(f"{i}\t{f}\n".encode())
                for c, left in kinds.items():
                    column = batch.column(c)
                    while len(left) > 1 and not _casts(column, left[0]):
                        left.pop(0)
                self.rows += batch.num_rows
                bar.update(batch.num_rows)
        if self.rows == 0:
            raise GzooError(f"{self.where} has no rows.")
        self.id_type = pa.int64() if digits else pa.string()
        self._check_unique(np.concatenate(as_number if digits else as_text), "id")
        self._check_unique(np.concatenate(file_hashes), "file")
        self.digest = digest.hexdigest()
        self.types = {c: left[0] for c, left in kinds.items()}
        return self

    def _items(self, table: pa.Table | pa.RecordBatch, start: int) -> list[ImageItem]:
        """Each row's image item: its file (a Path), or a FitsCutout of its per-band files and size (gzoo.fits.cutout_of_row)."""
        if self.image_columns == [self.file_column]:
            return [Path(self._absolute(f)) for f in table.column(self.file_column).to_pylist()]
        rows = table.to_pylist()
        return [cutout_of_row(row, self.fits, self.root, self.file_column, f"{self.where}, {_row(start + k)}") for k, row in enumerate(rows)]

    def _absolute(self, name: str) -> str:
        path = Path(name.strip()).expanduser()
        return str(path if path.is_absolute() else self.root / path)

    def _check_blank(self, column: pa.Array, name: str, start: int) -> None:
        blank = pc.or_(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column.cast(pa.string())), ""))
        if pc.any(blank).as_py():
            row = start + int(np.flatnonzero(blank.to_numpy(zero_copy_only=False))[0])
            raise GzooError(
                f"{self.where}, {_row(row)}: the {'id' if name == self.id_column else 'file'} column {name!r} is empty; fill it in or drop the row."
            )

    def _check_unique(self, hashes: np.ndarray, what: str) -> None:
        order = np.argsort(hashes, kind="stable")
        same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
        if not len(same):
            return
        first, second = sorted((int(order[same[0]]), int(order[same[0] + 1])))
        rows = f"rows {first + 2} and {second + 2}"
        if what == "id":
            raise GzooError(
                f"{self.where}, {rows} are both galaxy {self._row_of(first, [self.id_column])[self.id_column].strip()!r}; each galaxy must appear once."
            )
        item = self._items(pa.Table.from_pylist([self._row_of(first, self.image_columns)]), first)[0]
        raise GzooError(f"{self.where}, {rows} both name the image {os.path.normpath(str(item))}; each image must appear once, so drop one of them.")

    def _row_of(self, row: int, columns: list[str]) -> dict:
        """Row ``row``'s values of ``columns``, as text (a second pass: only for an error's message)."""
        seen = 0
        for batch in self._batches(columns, {c: pa.string() for c in columns}):
            if row < seen + batch.num_rows:
                return batch.slice(row - seen, 1).to_pylist()[0]
            seen += batch.num_rows
        raise IndexError(row)

    def chunks(self, size: int) -> Iterator[Chunk]:
        """The catalogue in chunks of ``size`` rows (the last may be shorter), in order; :meth:`scan` first."""
        if not self.digest:
            self.scan(progress=False)
        names = [self.id_column, *self.image_columns, *self.carry]
        types = dict(self.types) | {c: pa.string() for c in (self.id_column, *self.image_columns)}
        pending: list[pa.RecordBatch] = []
        held, index, start = 0, 0, 0
        for batch in self._batches(names, types):
            pending.append(batch)
            held += batch.num_rows
            while held >= size:
                table = pa.Table.from_batches(pending)
                yield self._chunk(index, start, table.slice(0, size))
                rest = table.slice(size)
                pending, held = rest.to_batches(), rest.num_rows
                index, start = index + 1, start + size
        if held:
            yield self._chunk(index, start, pa.Table.from_batches(pending))

    def _chunk(self, index: int, start: int, table: pa.Table) -> Chunk:
        files = self._items(table.select(self.image_columns), start)
        ids = [v.strip() for v in table.column(self.id_column).to_pylist()]
        ids = [int(v) for v in ids] if self.id_type == pa.int64() else ids
        return Chunk(index, start, files, ids, table.select(self.carry))


def _row(k: int) -> str:
    """Row k (from 0) as training's catalogue messages count rows: from 2, the header being row 1 (a CSV's line)."""
    return f"row {k + 2}"


def _hashes(values: list[str]) -> np.ndarray:
    """A 64-bit hash of each text (the first 8 bytes of its BLAKE2b digest): equal texts, equal hashes."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(v.encode(), digest_size=8).digest(), "little") for v in values), np.uint64, len(values))


def _casts(column: pa.Array, kind: pa.DataType) -> bool:
    """Whether every value of a text column converts to ``kind`` (empty texts count as missing values)."""
    try:
        pc.cast(pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column), kind)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
