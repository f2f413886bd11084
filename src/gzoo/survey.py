"""Predictions and embeddings for catalogues of any size: parts written whole or not at all, resumed by rerunning,
shared out over SLURM array tasks and over processes (GPUs, nodes) by Lightning.

    python -m gzoo.predict ckpt=C images=SOURCE out=OUT [outputs=both] [shard=i/n] [devices=4] ...
    python -m gzoo.embed   ckpt=C images=SOURCE out=OUT ...                  (the same, outputs=embeddings)
    python -m gzoo.predict ... uncertainty=dropout [intervals=[68,90]]       (each answer's spread and intervals)

SOURCE is a folder of images (subfolders too; ids from the file names) or a catalogue, .csv or .parquet,
with an id column and a file column (``id_str`` and ``file_loc``, galaxy-datasets' names, as training's
data=catalog reads them); a catalogue is read in chunks (gzoo.data.chunks), never whole, and ``carry``
names its columns to copy into the output (ra, dec ...).

The galaxies are cut into parts of ``part_size`` rows in the source's order: part k is rows
[k * part_size, (k + 1) * part_size). Each part is predicted on its own and written as one Parquet file,
``part-00000k.parquet``, through a temporary file renamed when complete, so a part is whole or absent.
Beside the parts, ``_manifest.json`` records what made them: the checkpoint (its SHA-256), the options
that change the numbers, and the source (rows and a digest of its ids and files).

    out=FOLDER/ (a trailing slash, or an existing folder)  the parts are the output: pandas.read_parquet(FOLDER),
                                                          pyarrow and DuckDB read them as one table
    out=FILE.parquet or FILE.csv                          parts go to the hidden folder .FILE.parts/ beside FILE,
                                                          and are merged into FILE (atomically) when all are done

With ``uncertainty=`` (dropout, views or both; gzoo.uncertainty) each answer gets its spread, ``<answer>_std``, and,
when the checkpoint holds a calibration of that spread at that tta (training makes one on its validation split),
the central intervals of ``intervals`` (``<answer>_lo90``, ``<answer>_hi90``), after the answers; the answers
themselves are the same with or without it.

Answers that rest on too few labels: a checkpoint records how many known values each answer had in training
(gzoo.label_counts); those known fewer than ``min_labels`` times (100) are named before the run (``thin_labels=say``)
or written as NaN, with their spreads and intervals (``thin_labels=nan``; an empty cell in a CSV, so a Kaggle
submission, which needs every cell, is made with thin_labels=say). The output records them with their counts (the
manifest and the Parquet metadata key ``gzoo_thin_labels``, kept in a merged FILE.parquet), so gzoo.gallery marks
them. A checkpoint made before gzoo recorded the counts gives no such record, and nothing is said.

Resume: the same command after a kill (SIGKILL, SIGTERM, a lost node) skips the parts that are done and does the
rest; the output equals an uninterrupted run's (bit for bit on the CPU: a part's batches do not depend on what
was done before). A rerun with another checkpoint or other options into the same output is refused, naming the
difference, unless ``overwrite=true`` (which starts that output again). SIGTERM and Ctrl-C stop the run; the
parts written are kept, and the message says to rerun.

Shares: ``shard=i/n`` takes parts k with k % n == i (with ``shard=auto``, the default, SLURM's array task id and
count when set, else the whole), so ``sbatch --array=0-99`` over one catalogue just works; ``devices=N``
(and ``num_nodes``) run N processes through Lightning Fabric's DDP launcher, each taking its own share of the
parts (a rank of a shard: worker shard * world + rank of n * world). The process that finds every part done
writes FILE (the others say so and end); for a folder, the output is complete when every part is there.

Memory is set by part_size, batch_size and num_workers, not by the number of galaxies: one part's rows and
outputs are held at a time. The Python API (gzoo.load(...).predict / .embed) runs the same parts, in memory
when it is given no out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from gzoo.config import REQUIRED, Stopped, option
from gzoo.data import BAD_IMAGE_MODES
from gzoo.data.chunks import CatalogChunks, Chunk
from gzoo.device import PRECISIONS
from gzoo.errors import GzooError, RunInterrupted
from gzoo.fits import FitsOptions, cutout_of_row, has_band_columns, options_of_checkpoint, resolve_options
from gzoo.inference import OUTPUTS, id_column_name, image_source, list_images, predict_arrays
from gzoo.io import atomic_open, output_lock, write_failure
from gzoo.label_counts import MIN_KNOWN, OUTPUT_KEY, output_record, sentence, thin_columns
from gzoo.log import say, warn
from gzoo.net import GalaxyNet
from gzoo.uncertainty import LEVELS, METHODS, SAMPLES, bounds, stated_scales
from gzoo.uncertainty import check as check_uncertainty

#: The version of the parts' layout, in the manifest.
PARTS_FORMAT = 1
MANIFEST = "_manifest.json"
SKIPPED = "_skipped.txt"
PART = re.compile(r"part-(\d{6})\.parquet")


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def _shard_ok(text: str) -> bool:
    if text == "auto":
        return True
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    return m is not None and 0 <= int(m[1]) < int(m[2])


@dataclass
class SurveyOptions:
    """The options of gzoo.predict and gzoo.embed (the same, but for what they write by default)."""

    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train")
    images: Path = option(REQUIRED, "a folder of images <id>.<ext> (subfolders too), or a catalogue .csv/.parquet with id_column and file_column")
    out: str = option(REQUIRED, "FILE.csv or FILE.parquet: one table; FOLDER/ (trailing slash) or an existing folder: a Parquet dataset of parts")
    outputs: str = option("predictions", "what to write: the answers (Class1.1 ...), the pooled body features, or both from one pass", choices=OUTPUTS)
    tta: int = option(1, "views averaged per galaxy: 8 = right-angle rotations x mirror; N = N evenly spaced angles", low=1)
    batch_size: int = option(32, "galaxies per batch", low=1)
    num_workers: int = option(2, "DataLoader worker processes decoding images", low=0)
    part_size: int = option(
        10000,
        "galaxies per part file: the unit of resume and of shards; memory grows with it, and each part starts its loader workers afresh, so keep it in the thousands",
        low=1,
    )
    shard: str = option(
        "auto",
        "i/n: this job's share of the parts (k % n == i); auto: SLURM's array task id/count when set, else 0/1",
        valid=_shard_ok,
        must="auto or i/n with 0 <= i < n",
    )
    devices: int = option(1, "processes on this node, one per GPU (or CPU processes with device=cpu), through Lightning's DDP launcher", low=1)
    num_nodes: int = option(1, "nodes of a multi-node job (srun starts the processes; Lightning reads SLURM's ranks)", low=1)
    id_column: str = option("id_str", "a catalogue's id column")
    file_column: str = option("file_loc", "a catalogue's image column (relative paths are read from the catalogue's folder)")
    carry: list[str] = option([], "catalogue columns copied into the output, e.g. carry=[ra,dec]")
    embedding_dtype: str = option("float32", "the embeddings' number type", choices=("float32", "float16"))
    embedding_layout: str = option(
        "columns", "columns: feature_0 ... feature_{F-1}; list: one fixed-width column 'embedding' (Parquet only)", choices=("columns", "list")
    )
    overwrite: bool = option(False, "replace an existing out, or parts made with another checkpoint or other options")
    on_bad_image: str = option("error", "error: stop at an unreadable image, naming it; skip: leave it out and list it", choices=BAD_IMAGE_MODES)
    device: str = option("auto", "auto (the GPU if there is one), cpu, cuda, cuda:1 ...")
    precision: str = option("auto", "auto = bf16-mixed on a GPU that has it, else 32-true", choices=PRECISIONS)
    progress: bool = option(True, "show a progress bar")
    uncertainty: str = option(
        "none",
        "a spread for every answer, Class1.1_std ...: dropout = the tail's dropout sampled `samples` times on one pass of the body; "
        "views = the spread of the tta views (tta >= 2); both = every view with every dropout sample",
        choices=("none", *METHODS),
    )
    samples: int = option(SAMPLES, "dropout samples per galaxy for uncertainty=dropout or both (only the tail runs again: cheap)", low=2)
    intervals: list[int] = option(
        [90],
        "with uncertainty=, the central intervals written per answer (Class1.1_lo90, Class1.1_hi90 ...) when the checkpoint holds a "
        "calibration of that spread at that tta (training makes one for dropout at tta=1, and at tta=8 with tta8_at_end); [] for none",
        valid=lambda v: all(level in LEVELS for level in v),
        must=f"a list of levels (in %) among {', '.join(map(str, LEVELS))}",
    )
    thin_labels: str = option(
        "say",
        "answers the checkpoint was trained on with fewer than min_labels known values (gzoo.label_counts): say = name them before the run; "
        "nan = write them (and their spreads and intervals) as NaN, an empty cell in a CSV",
        choices=("say", "nan"),
    )
    min_labels: int = option(MIN_KNOWN, "the known training values below which an answer rests on too few labels (see thin_labels)", low=0)
    fits: FitsOptions = field(default_factory=FitsOptions)  # how FITS cutouts become images: the checkpoint's, but for the fits.* given


@dataclass
class EmbedOptions(SurveyOptions):
    outputs: str = option("embeddings", "what to write: the pooled body features, the answers (Class1.1 ...), or both from one pass", choices=OUTPUTS)


# ----------------------------------------------------------------------------- sources


class ListSource:
    """Images held as a list (a folder's files, the Python API's lists, DataFrames and arrays), in parts."""

    def __init__(self, images: Sequence[Path | np.ndarray], ids: Sequence, id_name: str, carry: pa.Table | None = None):
        self.images, self.ids, self.id_name = list(images), list(ids), id_name
        self.carry_table = carry if carry is not None else pa.table({})
        self.rows = len(self.images)
        self.id_type = pa.int64() if all(isinstance(i, (int, np.integer)) for i in self.ids) else pa.string()
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            h = hashlib.sha256()
            for gid, image in zip(self.ids, self.images):
                h.update(f"{gid}\t".encode())
                h.update(image.tobytes() if isinstance(image, np.ndarray) else str(Path(image).absolute()).encode())
            self._digest = h.hexdigest()
        return self._digest

    def chunks(self, size: int) -> Iterator[Chunk]:
        for index, start in enumerate(range(0, self.rows, size)):
            stop = min(start + size, self.rows)
            yield Chunk(index, start, self.images[start:stop], self.ids[start:stop], self.carry_table.slice(start, stop - start))  # type: ignore[arg-type]


class CatalogSource:
    """A catalogue file read in chunks (gzoo.data.chunks.CatalogChunks); its id column keeps its name."""

    def __init__(self, catalog: CatalogChunks):
        self.catalog = catalog
        self.id_name, self.rows, self.digest, self.id_type = catalog.id_column, catalog.rows, catalog.digest, catalog.id_type

    def chunks(self, size: int) -> Iterator[Chunk]:
        return self.catalog.chunks(size)


Source = ListSource | CatalogSource


def open_source(
    images: Any,
    file_column: str = "file_loc",
    id_column: str = "id_str",
    carry: Sequence[str] = (),
    root: str | Path | None = None,
    progress: bool = True,
    fits: FitsOptions | None = None,
) -> Source:
    """What predict/embed are given, as a source of parts: a folder, a catalogue file (.csv, .parquet: read in chunks),
    or what the Python API takes besides (an image file, a list of files or of arrays, a DataFrame; see
    gzoo.inference.image_source). ``carry``: catalogue or DataFrame columns to copy into the output. A catalogue
    or DataFrame with ``fits``' per-band columns (file_g, file_r, file_i) gives each galaxy's FITS frames."""
    carry, fits = list(carry), fits or FitsOptions()
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        if path.suffix.lower() in (".csv", ".parquet") and not path.is_dir():
            base = Path(root).expanduser() if root is not None else None
            return CatalogSource(CatalogChunks(path, file_column, id_column, carry, base, fits).scan(progress))
        if path.is_dir():
            if carry:
                raise GzooError(
                    f"carry={','.join(carry)} copies catalogue columns, but images={path} is a folder; give a catalogue (.csv, .parquet) with those columns."
                )
            paths, names = list_images(path)
            return ListSource(paths, names, id_column_name(names))
        if not path.exists() and not path.suffix:
            raise GzooError(f"images={path} not found; give a folder of images or a catalogue (.csv, .parquet).")
    if isinstance(images, pd.DataFrame) and has_band_columns(list(images.columns), fits):
        if id_column not in images.columns:
            raise GzooError(f"the DataFrame has per-band files ({', '.join(fits.band_columns())}) but no id column {id_column!r}; add one or pass id_column=.")
        base = Path(root).expanduser() if root is not None else Path.cwd()
        rows = images.to_dict("records")
        files: Sequence = [cutout_of_row(row, fits, base, file_column, f"the DataFrame, row {label}") for row, label in zip(rows, images.index)]
        ids: Sequence = [str(i).strip() for i in images[id_column]]
        id_name = id_column
    else:
        files, ids, id_name = image_source(images, file_column, id_column, root)
    table = None
    if carry:
        if not isinstance(images, pd.DataFrame):
            raise GzooError(f"carry={','.join(carry)} copies catalogue columns; give a catalogue (.csv, .parquet) or a DataFrame with those columns.")
        absent = [c for c in carry if c not in images.columns]
        if absent:
            raise GzooError(f"the DataFrame has no column {absent[0]!r} (its columns: {', '.join(map(str, images.columns))}); carry= names columns to copy.")
        table = pa.Table.from_pandas(images[carry], preserve_index=False)
    return ListSource(files, ids, id_name, table)


# ----------------------------------------------------------------------------- shares


def shard_of(text: str) -> tuple[int, int]:
    """(i, n) of ``shard=``: ``i/n`` as given; ``auto``: this SLURM array task's place among the array's tasks, else (0, 1)."""
    if text != "auto":
        i, n = map(int, text.split("/"))
        return i, n
    task, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None or not task.isdigit() or not count.isdigit():
        return 0, 1
    step = int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
    first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
    i, n = (int(task) - first) // step, int(count)
    if not 0 <= i < n:
        raise GzooError(f"SLURM array task {task} is not one of the array's {n} tasks (from {first} by {step}); pass shard=i/n.")
    return i, n


def launch(devices: int, num_nodes: int, device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device): one process, or ``devices`` x ``num_nodes`` through Lightning
    Fabric's DDP launcher (it starts the other processes of this node by rerunning the command; srun starts a
    multi-node job's, and Fabric reads SLURM's ranks)."""
    if devices == 1 and num_nodes == 1:
        return 0, 1, device
    from lightning.fabric import Fabric

    accelerator = "cpu" if device == "cpu" else ("cuda" if device.startswith("cuda") else "auto")
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")
    fabric.launch()
    return fabric.global_rank, fabric.world_size, str(fabric.device)


# ----------------------------------------------------------------------------- parts


def part_table(net: GalaxyNet, chunk: Chunk, id_name: str, id_type: pa.DataType, o: SurveyOptions, bar: tqdm | None = None) -> tuple[pa.Table, list]:
    """One part: the id column, the carried columns, then the answers and/or the embedding, one row per readable
    image in the chunk's order; and the unreadable ones (with on_bad_image=skip)."""
    values, good, skipped = predict_arrays(
        net, chunk.files, o.tta, o.batch_size, o.num_workers, o.on_bad_image, o.precision, o.outputs, o.fits, bar, o.uncertainty, o.samples
    )
    ids = [i for i, g in zip(chunk.ids, good) if g]
    columns: dict[str, pa.Array] = {id_name: pa.array(ids, type=id_type)}
    carried = chunk.carry.filter(pa.array(good, type=pa.bool_())) if chunk.carry.num_columns else chunk.carry
    columns |= {name: carried.column(name).combine_chunks() for name in carried.column_names}
    thin = thin_answers(net, o)
    if "pred" in values and thin and o.thin_labels == "nan":  # the answers resting on too few labels: NaN, spreads and intervals too
        at = [net.labels.index(c) for c in thin]
        for key in ("pred", "std"):
            if key in values:
                values[key] = values[key].astype(np.float64)
                values[key][:, at] = np.nan
    if "pred" in values:
        columns |= {label: pa.array(values["pred"][:, j].astype(np.float32)) for j, label in enumerate(net.labels)}
    if "std" in values:
        columns |= spread_columns(net, values["pred"], values["std"], o)
    if "features" in values:
        feats = values["features"].astype(o.embedding_dtype)
        if o.embedding_layout == "list":
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1])
        else:
            columns |= {f"feature_{j}": pa.array(feats[:, j]) for j in range(feats.shape[1])}
    table = pa.table(columns)
    record = thin_record(net, o)
    if record is not None:  # kept in the merged Parquet: gzoo.gallery marks these answers' rows
        table = table.replace_schema_metadata({OUTPUT_KEY.encode(): json.dumps(record).encode()})
    return table, skipped


def thin_answers(net: GalaxyNet, o: SurveyOptions) -> dict[str, int]:
    """The written answers that rest on fewer than ``o.min_labels`` known training values, with their counts
    (gzoo.label_counts); empty when the checkpoint holds no counts (made before gzoo recorded them) or no answers are written."""
    if o.outputs == "embeddings":
        return {}
    return {c: n for c, n in thin_columns(net.label_counts, o.min_labels).items() if c in net.labels}


def thin_record(net: GalaxyNet, o: SurveyOptions) -> dict | None:
    """What the output records of the thin answers (gzoo.label_counts.output_record), or None when the counts are unknown."""
    if net.label_counts is None or o.outputs == "embeddings":
        return None
    return output_record(thin_answers(net, o), o.min_labels, o.thin_labels)


def say_thin(net: GalaxyNet, o: SurveyOptions) -> None:
    """The answers that rest on too few labels, named once before the run (nothing when there are none, or the counts are unknown)."""
    thin = thin_answers(net, o)
    if not thin:
        return
    said = sentence(thin, len(net.labels), o.min_labels)
    if o.thin_labels == "nan":
        say(f"{said}: written as NaN (thin_labels=nan)")
    else:
        say(f"{said}: their numbers are mostly the network's guesses; thin_labels=nan writes them as NaN")


def spread_columns(net: GalaxyNet, pred: np.ndarray, std: np.ndarray, o: SurveyOptions) -> dict[str, pa.Array]:
    """Each answer's spread (<answer>_std) and, when the checkpoint's calibration has a fit for this spread at this tta,
    its intervals (<answer>_lo90, <answer>_hi90 ...: see gzoo.uncertainty), answer by answer."""
    fit, _ = stated_scales(net.calibration, o.uncertainty, o.tta) if o.intervals else (None, "")
    bounds_at = {level: bounds(pred, std, fit["scale"][str(level)], fit["floor"]) for level in o.intervals} if fit else {}
    columns: dict[str, pa.Array] = {}
    for j, label in enumerate(net.labels):
        columns[f"{label}_std"] = pa.array(std[:, j].astype(np.float32))
        for level, (lo, hi) in bounds_at.items():
            columns[f"{label}_lo{level}"], columns[f"{label}_hi{level}"] = pa.array(lo[:, j].astype(np.float32)), pa.array(hi[:, j].astype(np.float32))
    return columns


def check_spread(net: GalaxyNet, o: SurveyOptions) -> None:
    """uncertainty= can be given (before any work), and what its columns will be is said once."""
    if o.uncertainty == "none":
        return
    check_uncertainty([o.uncertainty], o.tta, o.outputs, net.dropout_p)
    fit, why = stated_scales(net.calibration, o.uncertainty, o.tta) if o.intervals else (None, "intervals=[]")
    if fit is None and o.intervals:
        warn(f"writing each answer's spread (<answer>_std) but no intervals: {why}")
    elif fit is not None:
        say(
            f"each answer's spread and its {', '.join(f'{v} %' for v in o.intervals)} intervals, calibrated on the run's validation galaxies (uncertainty={o.uncertainty}, tta={o.tta})"
        )


def run_parts(net: GalaxyNet, source: Source, o: SurveyOptions) -> Iterator[tuple[Chunk, pa.Table, list]]:
    """Every part of ``source``, in order, in memory: what the Python API returns when it is given no out."""
    check_spread(net, o)
    say_thin(net, o)
    with tqdm(total=source.rows, desc=_bar_name(o), unit="img", disable=not o.progress) as bar:
        for chunk in source.chunks(o.part_size):
            table, skipped = part_table(net, chunk, source.id_name, source.id_type, o, bar)
            yield chunk, table, skipped


def _bar_name(o: SurveyOptions) -> str:
    return f"{'embedding' if o.outputs == 'embeddings' else 'predicting'} (tta={o.tta})"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity(o: SurveyOptions, checkpoint: str, source: Source) -> dict:
    """What makes the parts' numbers: a rerun into the same output must have the same (the manifest's "made_by").
    Not on_bad_image: a part made with "error" read every image, so it stands for "skip" too (the usual rerun)."""
    return {
        "checkpoint_sha256": checkpoint,
        "outputs": o.outputs,
        "tta": o.tta,
        "precision": o.precision,
        "fits": dataclasses.asdict(o.fits),
        "embedding_dtype": o.embedding_dtype,
        "embedding_layout": o.embedding_layout,
        "part_size": o.part_size,
        "id_column": source.id_name,
        "carry": list(o.carry),
        "source_rows": source.rows,
        "source_digest": source.digest,
        # only when asked, so that the parts of a run made before these options keep their fingerprint
        **({"uncertainty": o.uncertainty, "samples": o.samples, "intervals": list(o.intervals)} if o.uncertainty != "none" else {}),
        **({"thin_labels": o.thin_labels, "min_labels": o.min_labels} if o.thin_labels != "say" and o.outputs != "embeddings" else {}),
    }


def _fingerprint(made_by: dict) -> str:
    return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:16]


def _difference(old: dict, new: dict) -> str:
    key = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
    names = {"checkpoint_sha256": "the checkpoint (its SHA-256)", "source_digest": "the source's ids and files", "source_rows": "the source's rows"}
    return f"{names.get(key, key)}: {old.get(key)!s:.40} there, {new.get(key)!s:.40} now"


class Parts:
    """A folder of parts and its manifest: which parts are done, writing one, the summary of unreadable images, the merge."""

    def __init__(self, folder: Path, made_by: dict, rows: int, what: str, source: dict | None = None):
        self.folder, self.made_by, self.rows, self.what = folder, made_by, rows, what
        self.source = source or {}  # where the images came from, the thin answers (galleries of the parts' galaxies read it); not part of made_by
        self.fingerprint = _fingerprint(made_by)
        self.count = math.ceil(rows / made_by["part_size"])

    def start(self, overwrite: bool, shown: str) -> None:
        """Make the folder and its manifest, or check the one there: parts of another run are refused (or with
        ``overwrite`` removed, with the manifest and summary, and nothing else in the folder)."""
        manifest = self.folder / MANIFEST
        if manifest.exists():
            old = json.loads(manifest.read_text()).get("made_by", {})
            if old != self.made_by:
                if not overwrite:
                    raise GzooError(
                        f"out={shown} holds parts made another way ({_difference(old, self.made_by)}); rerun with the same checkpoint and options "
                        "to finish it, or choose another out= (or pass overwrite=true to start it again)."
                    )
                removed = self.clear()
                say(f"overwrite=true: removed the {removed} parts of the earlier run in {self.folder}")
        elif any(not p.name.startswith(".") for p in self._listing()):  # hidden: this run's lock, temporary files
            raise GzooError(f"out={shown} is a folder holding other files and no {MANIFEST}; give a new or empty folder for the parts.")
        if not manifest.exists():
            record = {
                "format": PARTS_FORMAT,
                "what": self.what,
                "parts": self.count,
                "rows": self.rows,
                "made_by": self.made_by,
                "fingerprint": self.fingerprint,
                **self.source,
            }
            with atomic_open(manifest) as f:
                json.dump(record, f, indent=1)
            if json.loads(manifest.read_text()).get("made_by") != self.made_by:  # another job wrote it meanwhile, with other options
                raise GzooError(f"out={shown} is being filled by another run with other options; choose another out=.")

    def _listing(self) -> list[Path]:
        return list(self.folder.iterdir()) if self.folder.is_dir() else []

    def clear(self) -> int:
        parts = [p for p in self._listing() if PART.fullmatch(p.name)]
        for p in [*parts, self.folder / MANIFEST, self.folder / SKIPPED]:
            p.unlink(missing_ok=True)
        return len(parts)

    def path(self, k: int) -> Path:
        return self.folder / part_name(k)

    def done(self, k: int) -> bool:
        """Whether part k is written and belongs to this run (a part of another run is an error naming it)."""
        path = self.path(k)
        if not path.exists():
            return False
        try:
            meta = json.loads((pq.read_schema(path).metadata or {}).get(b"gzoo", b"{}"))
        except (pa.ArrowInvalid, OSError, ValueError):
            raise GzooError(f"{path} is not a readable part (written by something else?); remove it and run the same command again.") from None
        if meta.get("fingerprint") != self.fingerprint:
            raise GzooError(f"{path} was made by another run than the manifest's; remove it (or the whole folder) and run the same command again.")
        return True

    def write(self, k: int, table: pa.Table, chunk: Chunk, skipped: list) -> None:
        meta = {"part": k, "rows": [chunk.start, chunk.start + len(chunk.files)], "fingerprint": self.fingerprint, "skipped": [[str(p), e] for p, e in skipped]}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"gzoo": json.dumps(meta).encode()})
        with atomic_open(self.path(k), "wb") as f:
            pq.write_table(table, f)

    def all_done(self) -> bool:
        names = {p.name for p in self._listing()}
        return all(part_name(k) in names for k in range(self.count))

    def skipped(self) -> list[tuple[str, str]]:
        """Every unreadable image the parts left out (from each part's own record)."""
        out: list[tuple[str, str]] = []
        for k in range(self.count):
            meta = json.loads((pq.read_schema(self.path(k)).metadata or {}).get(b"gzoo", b"{}"))
            out += [(str(p), str(e)) for p, e in meta.get("skipped", [])]
        return out

    def merge(self, out: Path) -> int:
        """The parts, in order, as one table in ``out`` (.parquet or .csv), written atomically; returns its rows."""
        rows = 0
        if out.suffix.lower() == ".parquet":
            schema = pq.read_schema(self.path(0))
            kept = {k: v for k, v in (schema.metadata or {}).items() if k == OUTPUT_KEY.encode()}  # the thin answers, for gzoo.gallery
            schema = schema.remove_metadata().with_metadata(kept) if kept else schema.remove_metadata()
            with atomic_open(out, "wb") as f, pq.ParquetWriter(f, schema) as writer:
                for k in range(self.count):
                    table = pq.read_table(self.path(k)).replace_schema_metadata(None)
                    writer.write_table(table)
                    rows += table.num_rows
            return rows
        with atomic_open(out, "w", newline="") as f:
            for k in range(self.count):
                frame = pq.read_table(self.path(k)).to_pandas()
                frame.to_csv(f, header=k == 0, index=False, float_format="%.6f")
                rows += len(frame)
        return rows


def _out_kind(out: str | Path) -> tuple[Path, bool]:
    """(path, whether it is a folder of parts): a trailing slash or an existing folder; else a .csv/.parquet file."""
    out = os.fspath(out)
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) or path.is_dir():
        return path, True
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise GzooError(f"out={out} must be FILE.csv or FILE.parquet (one table) or FOLDER/ with a trailing slash (a folder of Parquet parts).")
    return path, False


def run(o: SurveyOptions, what: str = "predictions") -> Path:
    """The command: every part of ``o.images`` that this job's share holds and is not done, then the merge when all are."""
    out, is_folder = _out_kind(o.out)
    if not is_folder and o.embedding_layout == "list" and out.suffix.lower() == ".csv":
        raise GzooError(
            "embedding_layout=list writes one fixed-width column, which a CSV cannot hold; write out=FILE.parquet or FOLDER/, or use embedding_layout=columns."
        )
    folder = out if is_folder else out.with_name(f".{out.name}.parts")
    shown = f"{out}{os.sep if is_folder else ''}"
    if not is_folder and out.exists() and not folder.exists() and not o.overwrite:
        raise GzooError(f"{out} already exists; pass overwrite=true to replace it, or choose another out=.")
    with output_lock(out if not is_folder else folder / ".probe", "out", overwrite=True):
        pass  # out's folder can be made and written (a full or read-only disk is one sentence here, before any work)
    shard, shards = shard_of(o.shard)
    rank, world, device = launch(o.devices, o.num_nodes, o.device)
    o.fits = resolve_options(options_of_checkpoint(o.ckpt), o.fits)  # the checkpoint's, but for what was given
    source = open_source(o.images, o.file_column, o.id_column, o.carry, progress=o.progress and rank == 0, fits=o.fits)
    from gzoo.module import load_net

    net = load_net(o.ckpt, device).set_speed(channels_last=True)  # faster convolutions, on CPUs too (about 1.3x for b0)
    check_spread(net, o)
    say_thin(net, o)
    where: dict[str, Any] = {"source": str(Path(o.images).expanduser().absolute()), "file_column": o.file_column}
    thin = thin_record(net, o)
    if thin is not None:  # the answers resting on too few labels, for the galleries of these predictions
        where[OUTPUT_KEY] = thin
    parts = Parts(folder, identity(o, file_sha256(o.ckpt), source), source.rows, what, where)
    worker, workers = shard * world + rank, shards * world
    mine = [k for k in range(parts.count) if k % workers == worker]
    share = f" (shard {shard}/{shards}" + (f", rank {rank}/{world}" if world > 1 else "") + ")" if workers > 1 else ""
    say(
        f"{source.rows} galaxies from {o.images} in {parts.count} part{'s' if parts.count != 1 else ''} of {o.part_size}{share}: {net.timm_name} at {net.image_size} px on {next(net.parameters()).device}, tta={o.tta} -> {shown}"
    )
    with output_lock(folder / f"share-{worker}-of-{workers}", "out", overwrite=True):  # one run per share: a second is refused, naming the first
        parts.start(o.overwrite, shown)
        todo = [k for k in mine if not parts.done(k)]
        _predict_parts(net, source, parts, todo, len(mine), o, rank == 0)
    if not parts.all_done():
        say(f"this job's parts are done; {shown} is complete once the other shares' parts are (any job of this output merges them at its end)")
        return out
    return _finish(parts, out, is_folder, shown)


def _predict_parts(net: GalaxyNet, source: Source, parts: Parts, todo: list[int], mine: int, o: SurveyOptions, show: bool) -> None:
    rows_of = {k: min(o.part_size, source.rows - k * o.part_size) for k in todo}
    if len(todo) < mine:
        say(f"{mine - len(todo)} of this job's {mine} parts were done already; doing the other {len(todo)}")
    start, written, rows = time.perf_counter(), 0, 0
    wanted = set(todo)
    try:
        with tqdm(total=sum(rows_of.values()), desc=_bar_name(o), unit="img", disable=not (o.progress and show)) as bar:
            for chunk in source.chunks(o.part_size):
                if chunk.index not in wanted:
                    continue
                table, skipped = part_table(net, chunk, source.id_name, source.id_type, o, bar)
                try:
                    parts.write(chunk.index, table, chunk, skipped)
                except OSError as e:
                    raise GzooError(
                        f"{write_failure(e, parts.path(chunk.index), 'the part')}; the parts written are kept: free space there and run the same command again."
                    ) from None
                written, rows = written + 1, rows + len(chunk.files)
                wanted.discard(chunk.index)
                if not wanted:
                    break
    except (KeyboardInterrupt, Stopped) as e:
        signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else e.signum
        raise RunInterrupted(
            f"stopped by {signal.Signals(signum).name} after writing {written} of the {len(todo)} parts to do (in {parts.folder}); "
            "the finished parts are kept: run the same command again to do the rest.",
            128 + signum,
        ) from None
    seconds = time.perf_counter() - start
    if written:
        say(f"wrote {written} part{'s' if written > 1 else ''} ({rows} galaxies) in {seconds:.1f} s: {rows / max(seconds, 1e-9):.1f} images/s (tta={o.tta})")


def _finish(parts: Parts, out: Path, is_folder: bool, shown: str) -> Path:
    """Every part is done: the summary of unreadable images, and for out=FILE the merge (by the one job that takes it)."""
    if is_folder:
        skipped = parts.skipped()
        _write_skipped(parts.folder / SKIPPED, skipped)
        _say_done(parts, skipped, shown)
        return out
    try:
        lock = output_lock(out, "out", overwrite=True, what="the merged table")
        lock.__enter__()
    except GzooError:
        say(f"every part is done and another job is merging them into {out}")
        return out
    try:
        if not parts.folder.exists():
            say(f"every part was done and merged into {out} by another job")
            return out
        skipped = parts.skipped()
        try:
            rows = parts.merge(out)
            _write_skipped(out.with_name(out.name + ".skipped.txt"), skipped)
        except OSError as e:
            raise GzooError(
                f"{write_failure(e, out, 'the merged table')}; the parts are kept in {parts.folder}: free space there and run the same command again."
            ) from None
        shutil.rmtree(parts.folder)
    finally:
        lock.__exit__(None, None, None)
    _say_done(parts, skipped, f"{out} ({rows} rows)")
    return out


def _write_skipped(path: Path, skipped: list) -> None:
    path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    if skipped:
        with atomic_open(path, newline="") as f:
            f.writelines(f"{p}\t{e}\n" for p, e in skipped)


def _say_done(parts: Parts, skipped: list, where: str) -> None:
    if skipped:
        names = ", ".join(Path(p).name for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warn(
            f"left out {len(skipped)} unreadable images (on_bad_image=skip): {names}; the list is beside the output ({SKIPPED} in a folder, .skipped.txt beside a file)"
        )
    say(f"{f'all {parts.count} parts' if parts.count != 1 else 'the one part'} done ({parts.rows - len(skipped)} galaxies): {where}")


def table_of(net: GalaxyNet, source: Source, o: SurveyOptions) -> tuple[pd.DataFrame, list]:
    """Every part of ``source`` in memory, as one DataFrame, and the unreadable images left out (the Python API)."""
    tables, skipped = [], []
    for _, table, left in run_parts(net, source, o):
        tables.append(table)
        skipped += left
    return pa.concat_tables(tables).to_pandas(), skipped
