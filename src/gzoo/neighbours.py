"""Nearest neighbours over gzoo's embeddings: reading the parts, the index kept beside them, searching it.

    python -m gzoo.neighbours embeddings=FOLDER [index.metric=cosine] [index.pca=64] [index.whiten=true] [index.kind=auto] ...

builds the index of a folder of embedding parts (``python -m gzoo.embed ... out=FOLDER/``); gzoo.similar,
gzoo.unusual and gzoo.embedding_map build it themselves when it is not there. The index is a faiss index
(Meta's similarity-search library) of the embeddings after a PCA (``index.pca`` components: 64 by default, 0 for none;
``index.whiten`` scales each to unit variance) and, for ``metric=cosine``, a unit length (inner product =
cosine). ``kind=flat`` is exact; ``ivf`` (inverted lists: the vectors bucketed by k-means, ``nprobe`` buckets
searched per query) and ``ivfpq`` (the same, each vector compressed to ``pq_bytes`` bytes) are approximate;
``auto`` is flat below ``exact_below`` rows, ivf above. The PCA and the IVF's k-means are fitted on at most
``train_rows`` rows drawn with ``seed``; then the parts are added one at a time, so building needs the index's
own memory (rows x dims x 4 bytes for flat and ivf, rows x pq_bytes for ivfpq) and the sample, not the
embeddings. An approximate index measures its recall@10 against exact search for ``recall_queries`` sampled
rows while it is built, and keeps the smallest ``nprobe`` that reaches ``recall``.

The index is kept in ``FOLDER/_index/`` (``FOLDER/_index_whitened/`` when whitened; or ``index.folder``): ``index.faiss``, ``transform.npz`` (the PCA),
``ids.parquet`` (each row's id) and ``index.json`` (its manifest: the checkpoint's SHA-256 and the
fingerprint of the embeddings it was built from, its options and its measured recall). pandas and pyarrow
skip names starting with "_", so ``pandas.read_parquet(FOLDER)`` still reads only the embeddings. It is written
in a hidden folder beside it and renamed into place when complete. An index built from other embeddings (of
another checkpoint, or remade) is refused in one sentence; ``index.rebuild=true`` builds it again.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
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

from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.io import atomic_write_text, output_lock
from gzoo.log import say, warn

INDEX_FORMAT = 1
INDEX_DIR = "_index"
INDEX_MANIFEST = "index.json"
FEATURE = re.compile(r"feature_(\d+)")
METRICS = ("cosine", "l2")
KINDS = ("auto", "flat", "ivf", "ivfpq")
#: Principal components kept by default: on gz2-2k (a fine-tuned Lite0, 1280 wide) 32, 64 and 128 components found
#: neighbours with the query's answer about equally often, each more often than all 1280; whitened, less often (README).
DEFAULT_PCA = 64


# ----------------------------------------------------------------------------- the embeddings


class Embeddings:
    """A folder of embedding parts written by gzoo.embed (or gzoo.predict with outputs=both), read part by part.

    ``id_column``, ``carry`` and ``answers`` name its columns; ``width`` is the embedding's; ``rows`` the galaxies;
    ``made_by`` and ``fingerprint`` come from its manifest (``checkpoint`` is the SHA-256 of the checkpoint).
    """

    def __init__(self, folder: str | Path, key: str = "embeddings"):
        from gzoo.survey import MANIFEST, PART

        self.folder = Path(folder).expanduser()
        manifest = self.folder / MANIFEST
        if not self.folder.is_dir():
            raise GzooError(f"{key}={self.folder} not found; give the folder of parts that python -m gzoo.embed ... out=FOLDER/ wrote.")
        if not manifest.is_file():
            raise GzooError(f"{key}={self.folder} has no {MANIFEST}; give the folder of parts that python -m gzoo.embed ... out=FOLDER/ wrote.")
        try:
            record = json.loads(manifest.read_text())
            self.made_by: dict = record["made_by"]
            count = int(record["parts"])
        except (ValueError, KeyError, TypeError):
            raise GzooError(f"{manifest} is not a manifest written by gzoo.embed; make the embeddings again with python -m gzoo.embed.") from None
        self.fingerprint = str(record.get("fingerprint"))
        self.source = record.get("source")  # where the images came from (a folder or catalogue), when the manifest says
        self.file_column = record.get("file_column")  # a catalogue's image column, when the manifest says
        if self.made_by.get("outputs") not in ("embeddings", "both"):
            raise GzooError(
                f"{key}={self.folder} holds predictions without embeddings (outputs={self.made_by.get('outputs')}); "
                "make them with python -m gzoo.embed, or gzoo.predict with outputs=both."
            )
        names = {p.name for p in self.folder.iterdir() if PART.fullmatch(p.name)}
        missing = [k for k in range(count) if f"part-{k:06d}.parquet" not in names]
        if missing:
            raise GzooError(
                f"{key}={self.folder} is not complete: {len(missing)} of its {count} parts are missing (part-{missing[0]:06d}.parquet ...); "
                "run the same gzoo.embed command again to finish it."
            )
        self.paths = [self.folder / f"part-{k:06d}.parquet" for k in range(count)]
        self.checkpoint: str = self.made_by["checkpoint_sha256"]
        self.id_column: str = self.made_by["id_column"]
        self.carry: list[str] = list(self.made_by.get("carry", []))
        counts = [pq.read_metadata(p).num_rows for p in self.paths]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rows = int(self.offsets[-1])
        if self.rows == 0:
            raise GzooError(f"{key}={self.folder} holds no galaxies (every image was left out?); embed some galaxies first.")
        schema = pq.read_schema(self.paths[0])
        if "embedding" in schema.names:
            self.features = ["embedding"]
            self.width = schema.field("embedding").type.list_size
        else:
            self.features = sorted((n for n in schema.names if FEATURE.fullmatch(n)), key=lambda n: int(n[8:]))
            self.width = len(self.features)
        taken = {self.id_column, *self.carry, *self.features}
        self.answers = [n for n in schema.names if n not in taken]  # the predicted answers (outputs=both), in the table's order

    def images(self, images: str | Path | None, file_column: str | None) -> tuple[Path | None, str]:
        """Where the galaxies' images are (the folder or catalogue given, else the one the manifest names, else None)
        and a catalogue's image column (the one given, else the manifest's, else file_loc)."""
        where = images if images is not None else self.source
        return (Path(where).expanduser() if where is not None else None), file_column or self.file_column or "file_loc"

    def __repr__(self) -> str:
        return f"Embeddings({self.folder}: {self.rows} galaxies x {self.width})"

    @staticmethod
    def vectors_of(table: pa.Table, features: list[str]) -> np.ndarray:
        """The (n, width) float32 embedding of a part's table (either layout)."""
        if features == ["embedding"]:
            column = table.column("embedding").combine_chunks()
            return column.values.to_numpy(zero_copy_only=False).reshape(len(table), -1).astype(np.float32, copy=False)
        return np.stack([table.column(n).to_numpy() for n in features], axis=1).astype(np.float32, copy=False)

    def parts(self, progress: bool = False, desc: str = "reading embeddings") -> Iterator[tuple[int, np.ndarray]]:
        """(first row, vectors) of every part in order: one part in memory at a time."""
        with tqdm(total=self.rows, desc=desc, unit="gal", disable=not progress) as bar:
            for k, path in enumerate(self.paths):
                vectors = self.vectors_of(pq.read_table(path, columns=self.features), self.features)
                yield int(self.offsets[k]), vectors
                bar.update(len(vectors))

    def ids(self) -> np.ndarray:
        """Every row's id, in order (int64 or object)."""
        columns = [pq.read_table(p, columns=[self.id_column]).column(0) for p in self.paths]
        return pa.chunked_array([c for col in columns for c in col.chunks], type=columns[0].type).to_numpy()

    def _by_part(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(part, positions in ``rows``, rows within the part) for each part holding some of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for k in np.unique(part):
            where = np.flatnonzero(part == k)
            yield int(k), where, rows[where] - self.offsets[k]

    def vectors_at(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The embeddings of the given rows (reading only the parts that hold them)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.width), dtype=np.float32)
        for k, where, inner in self._by_part(rows):
            table = pq.read_table(self.paths[k], columns=self.features).take(pa.array(inner))
            out[where] = self.vectors_of(table, self.features)
        return out

    def info_at(self, rows: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """The id, carried columns and predicted answers of the given rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        columns = [self.id_column, *self.carry, *self.answers]
        frames: list[pd.DataFrame] = []
        order: list[np.ndarray] = []
        for k, where, inner in self._by_part(rows):
            frames.append(pq.read_table(self.paths[k], columns=columns).take(pa.array(inner)).to_pandas())
            order.append(where)
        if not frames:
            return pd.DataFrame(columns=columns)
        table = pd.concat(frames, ignore_index=True)
        return table.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)

    def column(self, name: str) -> np.ndarray:
        """One column (a predicted answer or a carried column) of every row, in order."""
        return np.concatenate([pq.read_table(p, columns=[name]).column(0).to_numpy() for p in self.paths])


# ----------------------------------------------------------------------------- the options


@dataclass
class IndexOptions:
    """How the index is built and searched (``index.*``); an option left unset takes the built index's value, else its default."""

    folder: Path | None = option(None, "where the index is kept (unset: <embeddings>/_index, or _index_whitened; readers of the embeddings skip both)")
    metric: str | None = option(None, "cosine or l2 (unset: the built index's, else cosine)", choices=METRICS)
    pca: int | None = option(None, "principal components kept before indexing; 0: none (unset: the built index's, else 64)", low=0)
    whiten: bool | None = option(None, "scale each principal component to unit variance (unset: the built index's, else false)")
    kind: str | None = option(
        None, "flat (exact), ivf or ivfpq (approximate), auto: flat below exact_below rows (unset: the built index's, else auto)", choices=KINDS
    )
    exact_below: int = option(100_000, "kind=auto builds an exact index below this many rows, an IVF index above", low=1)
    nlist: int = option(0, "IVF buckets; 0: 4 sqrt(rows), at most train_rows / 39 (faiss's k-means wants 39 points per bucket)", low=0)
    pq_bytes: int = option(0, "ivfpq: bytes per vector (must divide the indexed width); 0: width / 4", low=0)
    nprobe: int = option(0, "IVF buckets searched per query; 0: the smallest that reached recall when the index was built", low=0)
    recall: float = option(0.95, "the recall@10 against exact search that an approximate index's nprobe is chosen to reach", above=0, high=1)
    recall_queries: int = option(200, "rows whose exact neighbours are found while building, to measure an approximate index's recall", low=10)
    train_rows: int = option(50_000, "rows sampled to fit the PCA and the IVF buckets (their memory: train_rows x width x 4 bytes)", low=100)
    seed: int = option(0, "the sample's seed")
    threads: int = option(0, "faiss's threads; 0: one per core")
    rebuild: bool = option(False, "build the index again even if one is there")


def index_folder(embeddings: Embeddings, o: IndexOptions) -> Path:
    """Where the index is kept: index.folder, else <embeddings>/_index (_index_whitened for a whitened one, so that
    gzoo.unusual's whitened index and gzoo.similar's plain one are kept side by side)."""
    if o.folder is not None:
        return Path(o.folder).expanduser()
    return embeddings.folder / (INDEX_DIR + ("_whitened" if o.whiten else ""))


# ----------------------------------------------------------------------------- the transform


@dataclass
class Transform:
    """What is done to an embedding before it is indexed: centre, project on ``components`` (PCA; none: all
    dims), scale (whitening), then for cosine a unit length."""

    mean: np.ndarray
    components: np.ndarray | None  # (pca, width) or None
    scale: np.ndarray | None  # (pca,) or None
    cosine: bool

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.components is not None:
            x = (x - self.mean) @ self.components.T
            if self.scale is not None:
                x = x * self.scale
        if self.cosine:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def dims(self) -> int:
        return len(self.mean) if self.components is None else len(self.components)

    @classmethod
    def fit(cls, sample: np.ndarray, pca: int, whiten: bool, cosine: bool) -> Transform:
        mean = sample.mean(axis=0).astype(np.float32)
        if not pca:
            return cls(mean, None, None, cosine)
        cov = np.zeros((sample.shape[1], sample.shape[1]))  # width x width, summed in blocks: small beside the sample
        for lo in range(0, len(sample), 4096):
            block = (sample[lo : lo + 4096] - mean).astype(np.float64)
            cov += block.T @ block
        values, vectors = np.linalg.eigh(cov / max(len(sample) - 1, 1))
        keep = min(pca, len(values), max(len(sample) - 1, 1))
        order = np.argsort(values)[::-1][:keep]
        components = vectors[:, order].T.astype(np.float32)
        std = np.sqrt(np.maximum(values[order], 0.0))
        scale = (1.0 / np.maximum(std, 1e-6 * std[0])).astype(np.float32) if whiten else None
        return cls(mean, components, scale, cosine)

    def save(self, path: Path) -> None:
        arrays = {"mean": self.mean, "cosine": np.array(self.cosine)}
        if self.components is not None:
            arrays["components"] = self.components
        if self.scale is not None:
            arrays["scale"] = self.scale
        with open(path, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stubs read allow_pickle into **kwds

    @classmethod
    def load(cls, path: Path) -> Transform:
        with np.load(path) as z:
            return cls(z["mean"], z["components"] if "components" in z else None, z["scale"] if "scale" in z else None, bool(z["cosine"]))


# ----------------------------------------------------------------------------- the index


def _faiss(threads: int = 0):
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    return faiss


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the k best of ``base`` for each query, best first: largest inner product for cosine,
    smallest squared distance for l2 (numpy; the ground truth an approximate index is measured against)."""
    if cosine:
        score = queries @ base.T
    else:
        score = -((queries**2).sum(1)[:, None] - 2 * queries @ base.T + (base**2).sum(1)[None, :])
    k = min(k, base.shape[0])
    top = np.argpartition(-score, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(score, top, 1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(best, order, 1), np.take_along_axis(top, order, 1)


class Index:
    """A built index: its manifest (``record``), transform, faiss index and each row's id."""

    def __init__(self, folder: Path, record: dict, transform: Transform, index: Any, ids: np.ndarray, threads: int = 0):
        self.folder, self.record, self.transform, self.index, self.ids = folder, record, transform, index, ids
        self.threads = threads
        self._rows: pd.Series | None = None

    @property
    def cosine(self) -> bool:
        return self.record["metric"] == "cosine"

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    def set_nprobe(self, nprobe: int) -> None:
        if hasattr(self.index, "nprobe"):
            self.index.nprobe = nprobe

    def row_of(self) -> pd.Series:
        """Row by id (the first row of an id that appears twice)."""
        if self._rows is None:
            ids = pd.Index(self.ids)
            self._rows = pd.Series(np.arange(len(ids)), index=ids)[~ids.duplicated()]
        return self._rows

    def rows_of(self, ids: Sequence[Any], key: str = "query") -> np.ndarray:
        """The rows of the given ids (text from a command line is read as an integer where the ids are integers);
        an id that is not there is a GzooError naming it."""
        table = self.row_of()
        integers = self.ids.dtype.kind in "iu"
        rows = []
        for gid in ids:
            value: Any = gid
            if integers and isinstance(gid, str):
                value = int(gid) if gid.strip().lstrip("-").isdigit() else gid
            elif not integers and not isinstance(gid, str):
                value = str(gid)
            if value not in table.index:
                shown = ", ".join(map(str, self.ids[:3]))
                raise GzooError(
                    f"{key}={gid} is not a galaxy of the embeddings ({len(self.ids)} galaxies, ids like {shown}); give ids from their {self.record['id_column']} column."
                )
            rows.append(int(table[value]))
        return np.asarray(rows, dtype=np.int64)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows) of the k nearest rows to each raw embedding, nearest first: cosine distance (1 - cosine)
        or Euclidean distance in the indexed space; a missing neighbour (k > rows) has row -1."""
        x = self.transform(vectors)
        scores, rows = self.index.search(x, min(k, self.rows))
        distances = 1.0 - scores if self.cosine else np.sqrt(np.maximum(scores, 0.0))
        return distances.astype(np.float32), rows.astype(np.int64)

    def neighbours(self, vectors: np.ndarray, k: int, leave_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`search`, leaving out for each query the row ``leave_out[i]`` (the query itself; -1: none)."""
        if leave_out is None:
            return self.search(vectors, k)
        distances, rows = self.search(vectors, k + 1)
        keep = rows != np.asarray(leave_out)[:, None]
        out_d = np.full((len(rows), k), np.inf, dtype=np.float32)
        out_r = np.full((len(rows), k), -1, dtype=np.int64)
        for i in range(len(rows)):
            d, r = distances[i][keep[i]][:k], rows[i][keep[i]][:k]
            out_d[i, : len(d)], out_r[i, : len(r)] = d, r
        return out_d, out_r


def _check_record(record: dict, embeddings: Embeddings, folder: Path) -> None:
    """The index was built from these embeddings: the same checkpoint, the same parts."""
    if record.get("format") != INDEX_FORMAT:
        raise GzooError(
            f"the index {folder} is of another format ({record.get('format')}, this gzoo reads {INDEX_FORMAT}); build it again with index.rebuild=true."
        )
    if record.get("checkpoint_sha256") != embeddings.checkpoint:
        raise GzooError(
            f"the index {folder} was built from embeddings of another checkpoint (SHA-256 {str(record.get('checkpoint_sha256'))[:12]}... there, "
            f"{embeddings.checkpoint[:12]}... for {embeddings.folder}); build it again with index.rebuild=true, or give the embeddings it was built from."
        )
    if record.get("embeddings_fingerprint") != embeddings.fingerprint or record.get("rows") != embeddings.rows:
        raise GzooError(
            f"the index {folder} was built from other embeddings of this checkpoint ({record.get('rows')} rows there, {embeddings.rows} in {embeddings.folder}, "
            "made again since?); build it again with index.rebuild=true."
        )


def load_index(embeddings: Embeddings, o: IndexOptions | None = None) -> Index | None:
    """The index kept for ``embeddings`` (checked to be theirs), or None when there is none."""
    o = o or IndexOptions()
    folder = index_folder(embeddings, o)
    manifest = folder / INDEX_MANIFEST
    if not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text())
    except ValueError:
        raise GzooError(f"{manifest} is not readable; build the index again with index.rebuild=true.") from None
    _check_record(record, embeddings, folder)
    faiss = _faiss(o.threads)
    index = faiss.read_index(str(folder / "index.faiss"))
    ids = pq.read_table(folder / "ids.parquet").column(0).to_numpy()
    built = Index(folder, record, Transform.load(folder / "transform.npz"), index, ids, o.threads)
    built.set_nprobe(o.nprobe or record.get("nprobe") or 1)
    return built


def _asked(o: IndexOptions, record: dict | None) -> dict:
    """The settings asked for: each unset option takes the built index's value, else its default."""
    defaults = {"metric": "cosine", "pca": DEFAULT_PCA, "whiten": False, "kind": "auto"}
    return {key: getattr(o, key) if getattr(o, key) is not None else (record or {}).get("asked", {}).get(key, value) for key, value in defaults.items()}


def open_index(embeddings: Embeddings, o: IndexOptions | None = None, progress: bool = True) -> Index:
    """The index of ``embeddings``: the one kept (if it was built with the settings asked for), else built now."""
    o = o or IndexOptions()
    existing = None if o.rebuild else load_index(embeddings, o)
    if existing is not None:
        asked = _asked(o, existing.record)
        if asked == existing.record["asked"]:
            r = existing.record
            say(f"using the index {existing.folder} ({r['kind']}, {r['metric']}, {r['dims']} dims, {r['rows']} galaxies; index.rebuild=true builds it again)")
            return existing
        differs = next(k for k in asked if asked[k] != existing.record["asked"][k])
        raise GzooError(
            f"the index {existing.folder} was built with index.{differs}={existing.record['asked'][differs]}, not {asked[differs]}; "
            "pass index.rebuild=true to build it again that way, or index.folder= to keep both."
        )
    return build_index(embeddings, o, progress)


def _sample_rows(rows: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=min(n, rows), replace=False))


def build_index(embeddings: Embeddings, o: IndexOptions | None = None, progress: bool = True) -> Index:
    """Build the index of ``embeddings`` (two passes over the parts: the sample, then the rows) and keep it in its folder."""
    o = o or IndexOptions()
    faiss = _faiss(o.threads)
    asked = _asked(o, None)
    folder = index_folder(embeddings, o)
    n = embeddings.rows
    kind = asked["kind"] if asked["kind"] != "auto" else ("flat" if n < o.exact_below else "ivf")
    cosine = asked["metric"] == "cosine"
    if asked["pca"] > embeddings.width and o.pca is not None:
        raise GzooError(f"index.pca={asked['pca']} is more than the embedding's {embeddings.width} dimensions; give at most {embeddings.width}, or 0 for none.")
    pca = asked["pca"]
    if o.pca is None and (pca >= embeddings.width or min(n, o.train_rows) < 10 * pca):
        pca = 0  # the default: not on a narrow embedding, nor fitted on fewer than 10 rows per component
    with output_lock(folder, "index.folder", overwrite=True, what="the index"):
        start = time.perf_counter()
        say(
            f"building the index of {embeddings.folder} ({n} galaxies x {embeddings.width}): {kind}, {asked['metric']}, pca={pca}, whiten={asked['whiten'] and pca > 0}"
        )
        # Pass 1: the sample (for the PCA and the IVF buckets) and the queries whose exact neighbours measure the recall.
        sample_rows = _sample_rows(n, o.train_rows, o.seed)
        probe_rows = _sample_rows(n, o.recall_queries, o.seed + 1) if kind != "flat" else np.zeros(0, np.int64)
        sample = np.zeros((len(sample_rows), embeddings.width), np.float32)
        probes = np.zeros((len(probe_rows), embeddings.width), np.float32)
        for first, vectors in embeddings.parts(progress, "index: sampling"):
            for wanted, into in ((sample_rows, sample), (probe_rows, probes)):
                lo, hi = np.searchsorted(wanted, [first, first + len(vectors)])
                into[lo:hi] = vectors[wanted[lo:hi] - first]
        if not np.isfinite(sample).all():
            raise GzooError(f"{embeddings.folder} holds embeddings that are not finite numbers (NaN or inf); make them again with python -m gzoo.embed.")
        transform = Transform.fit(sample, pca, asked["whiten"] and pca > 0, cosine)
        dims = transform.dims
        metric = faiss.METRIC_INNER_PRODUCT if cosine else faiss.METRIC_L2
        nlist = 0
        if kind == "flat":
            index = faiss.IndexFlatIP(dims) if cosine else faiss.IndexFlatL2(dims)
        else:
            nlist = o.nlist or int(min(max(4 * math.sqrt(n), 16), max(len(sample) // 39, 1)))
            if nlist > len(sample):
                raise GzooError(
                    f"index.nlist={nlist} is more buckets than the {len(sample)} galaxies sampled to make them; give fewer, or use index.kind=flat."
                )
            if kind == "ivfpq" and len(sample) < 256:
                raise GzooError(
                    f"index.kind=ivfpq learns 256 codes per sub-vector and needs at least 256 galaxies ({len(sample)} here); use index.kind=ivf or flat."
                )
            quantizer = faiss.IndexFlatIP(dims) if cosine else faiss.IndexFlatL2(dims)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dims, nlist, metric)
            else:
                m = o.pq_bytes or max(dims // 4, 1)
                if dims % m:
                    raise GzooError(f"index.pq_bytes={m} must divide the indexed width {dims} (the PCA's components, or the embedding's width).")
                index = faiss.IndexIVFPQ(quantizer, dims, nlist, m, 8, metric)
            index.cp.seed = o.seed
            index.train(transform(sample))
        del sample
        # Pass 2: every row, part by part; the exact neighbours of the probes found on the way.
        ids: list[np.ndarray] = []
        px = transform(probes) if len(probes) else probes
        best_s = np.full((len(px), 11), -np.inf, np.float32)  # 10 and the probe itself
        best_r = np.full((len(px), 11), -1, np.int64)
        for k, (first, vectors) in enumerate(embeddings.parts(progress, "index: adding")):
            x = transform(vectors)
            index.add(x)
            ids.append(pq.read_table(embeddings.paths[k], columns=[embeddings.id_column]).column(0).to_numpy())
            if len(px):
                s, r = exact_topk(px, x, 11, cosine)
                s_all, r_all = np.concatenate([best_s, s], 1), np.concatenate([best_r, r + first], 1)
                top = np.argsort(-s_all, axis=1, kind="stable")[:, :11]
                best_s, best_r = np.take_along_axis(s_all, top, 1), np.take_along_axis(r_all, top, 1)
        nprobe, recall = 0, 1.0
        if kind != "flat":
            nprobe, recall = _choose_nprobe(index, px, probe_rows, best_r, o.recall, nlist)
            if recall < o.recall:
                warn(
                    f"the index reaches recall@10 {recall:.3f} only, below index.recall={o.recall} even searching every bucket (ivfpq compresses the vectors: try more index.pq_bytes or kind=ivf)"
                )
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        record = {
            "format": INDEX_FORMAT,
            "embeddings": str(embeddings.folder.absolute()),
            "embeddings_fingerprint": embeddings.fingerprint,
            "checkpoint_sha256": embeddings.checkpoint,
            "id_column": embeddings.id_column,
            "rows": n,
            "width": embeddings.width,
            "asked": asked,
            "kind": kind,
            "metric": asked["metric"],
            "pca": pca,
            "dims": dims,
            "nlist": nlist,
            "nprobe": nprobe,
            "recall_at_10": round(recall, 4) if kind != "flat" else 1.0,
            "recall_queries": len(px),
            "train_rows": int(len(sample_rows)),
            "seed": o.seed,
            "seconds": round(time.perf_counter() - start, 1),
            "faiss": faiss.__version__,
        }
        _write_index_folder(folder, index, transform, all_ids, embeddings.id_column, record)
    built = Index(folder, record, transform, index, all_ids, o.threads)
    built.set_nprobe(o.nprobe or nprobe or 1)
    said = f", nprobe={nprobe} of {nlist} buckets: recall@10 {recall:.3f} on {len(px)} sampled rows" if kind != "flat" else ""
    say(f"index built in {record['seconds']:.1f} s ({kind}, {dims} dims{said}): {folder}")
    return built


def _choose_nprobe(index: Any, queries: np.ndarray, rows: np.ndarray, truth: np.ndarray, target: float, nlist: int) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@10 against the exact neighbours ``truth`` reaches ``target``, and
    that recall; nlist if none does. Each query is a row of the index (``rows``): it is left out of both its exact and
    its found neighbours, so the recall is that of a query that is not in the index."""
    wanted = [[r for r in t if r != q][:10] for t, q in zip(truth, rows)]
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, found = index.search(queries, 11)
        got = [[r for r in f if r != q][:10] for f, q in zip(found, rows)]
        recall = float(np.mean([len(set(g) & set(w)) / max(len(w), 1) for g, w in zip(got, wanted)]))
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nprobe * 2, nlist)


def _write_index_folder(folder: Path, index: Any, transform: Transform, ids: np.ndarray, id_column: str, record: dict) -> None:
    """Write the index's files into a hidden folder beside ``folder``, then rename it into place (the old one, if any, removed after)."""
    import faiss

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        transform.save(tmp / "transform.npz")
        pq.write_table(pa.table({id_column: pa.array(ids)}), tmp / "ids.parquet")
        atomic_write_text(tmp / INDEX_MANIFEST, json.dumps(record, indent=1))
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the tool


@dataclass
class NeighboursOptions:
    embeddings: Path = option(REQUIRED, "a folder of embedding parts from python -m gzoo.embed ... out=FOLDER/")
    progress: bool = option(True, "show progress bars")
    index: IndexOptions = field(default_factory=IndexOptions)  # how the index is built


def neighbours_tool(o: NeighboursOptions) -> Index:
    """Build the index of ``o.embeddings`` (an index already there with the settings asked for is kept, and said)."""
    embeddings = Embeddings(o.embeddings)
    return open_index(embeddings, o.index, o.progress)


def main(argv: list[str] | None = None) -> int:
    return run_tool(neighbours_tool, NeighboursOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
