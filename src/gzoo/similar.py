"""Similar galaxies: the k nearest neighbours of query galaxies in a model's embedding, as a table and a gallery.

    python -m gzoo.similar embeddings=FOLDER query=ID[,ID...] k=10 out=FILE.csv|FILE.parquet [images=FOLDER|CATALOG]
    python -m gzoo.similar embeddings=FOLDER query=my_cutout.png ckpt=CKPT out=FILE.csv ...

``embeddings`` is a folder of parts from ``python -m gzoo.embed ... out=FOLDER/`` (outputs=both adds the predicted
answers to the table). A query is a galaxy's id in them, or an image file (a path with an image suffix: .jpg,
.png, .fits ...) that is embedded with ``ckpt``, which must be the checkpoint that made the embeddings (its
SHA-256 is checked), with their tta and FITS stretch. The search runs on the index kept beside the embeddings
(gzoo.neighbours; built on first use, ``index.*`` options). A query galaxy is left out of its own neighbours;
so is, for an image file, a row with the very same embedding (the file is that galaxy), and it is said.

The table has one row per query and neighbour: query, rank (1 = nearest), the id column, distance (cosine
distance 1 - cos, or Euclidean for index.metric=l2, after the index's PCA), the carried catalogue columns and
the predicted answers when the embeddings hold them. The gallery (``gallery=true``, beside out as <out>.png)
shows each query (framed) beside its neighbours, labelled with id, distance and ``answer``'s predicted value;
the images are found in ``images=``, the folder or catalogue the embeddings were made from. Both files are
written whole or not at all; existing ones are kept unless ``overwrite=true``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.images import image_suffix
from gzoo.io import output_lock, table_suffix, write_table
from gzoo.log import say
from gzoo.neighbours import Embeddings, Index, IndexOptions, open_index

#: A gallery tile: an image file or a drawn tile, its caption, its frame's colour or None.
Tile = tuple[Any, str, "str | None"]
#: A neighbour this close to an image-file query (cosine distance, or Euclidean relative to the query's length) is that very galaxy.
SAME = 1e-5


@dataclass
class SimilarOptions:
    embeddings: Path = option(REQUIRED, "a folder of embedding parts from python -m gzoo.embed ... out=FOLDER/")
    query: list[str] = option(REQUIRED, "galaxy ids in the embeddings, or image files (embedded with ckpt=), comma-separated")
    out: Path = option(REQUIRED, "the table: FILE.csv or FILE.parquet (the gallery goes beside it as FILE.png)")
    k: int = option(10, "neighbours per query", low=1)
    ckpt: Path | None = option(None, "the checkpoint that made the embeddings: needed to query by image file")
    images: Path | None = option(None, "the folder or catalogue the embeddings were made from, for the gallery's pictures")
    file_column: str | None = option(None, "a catalogue's image column (images=CATALOG; unset: the embeddings' manifest's, else file_loc)")
    gallery: bool = option(True, "draw the gallery PNG (needs images=)")
    answer: str | None = option(None, "the predicted answer shown under each tile (unset: the first the embeddings hold)")
    crop: float = option(0.5, "the central fraction of each image shown in the gallery", above=0, high=1)
    device: str = option("cpu", "where an image-file query is embedded: cpu, auto, cuda ...")
    overwrite: bool = option(False, "replace existing outputs")
    progress: bool = option(True, "show progress bars")
    index: IndexOptions = field(default_factory=IndexOptions)  # how the index is built and searched (gzoo.neighbours)


def is_file_query(query: str) -> bool:
    """A query naming an image file (a path with an image suffix) rather than a galaxy's id."""
    return image_suffix(query) is not None


def embed_files(embeddings: Embeddings, files: list[Path], ckpt: Path | None, device: str = "cpu", progress: bool = False, model: Any = None) -> np.ndarray:
    """The embeddings of image files made as ``embeddings`` were: the same checkpoint (its SHA-256 checked), tta and FITS
    stretch; ``model`` (a gzoo.Model of that checkpoint) saves loading it again."""
    from gzoo.survey import file_sha256

    if ckpt is None:
        raise GzooError(f"query={files[0]} is an image file; give ckpt= (the checkpoint that made the embeddings) to embed it.")
    ckpt = Path(ckpt).expanduser()
    if not ckpt.is_file():
        raise GzooError(f"ckpt={ckpt} not found; give the checkpoint that made the embeddings in {embeddings.folder}.")
    for f in files:
        if not Path(f).is_file():
            raise GzooError(f"query={f} not found; a query is a galaxy id of the embeddings or an existing image file.")
    if file_sha256(ckpt) != embeddings.checkpoint:
        raise GzooError(
            f"ckpt={ckpt} is not the checkpoint that made the embeddings in {embeddings.folder} (its SHA-256 differs); "
            "give that checkpoint, or embed the catalogue again with this one."
        )
    import gzoo

    made = embeddings.made_by
    table = (model if model is not None else gzoo.load(ckpt, device=device)).embed(
        [Path(f) for f in files], tta=made.get("tta", 1), fits=made.get("fits"), precision=made.get("precision", "auto"), num_workers=0, progress=progress
    )
    assert isinstance(table, pd.DataFrame)
    return table[[c for c in table.columns if c.startswith("feature_")]].to_numpy(np.float32)


def similar(
    embeddings: str | Path | Embeddings,
    query: Any,
    k: int = 10,
    ckpt: str | Path | None = None,
    index: IndexOptions | Index | None = None,
    device: str = "cpu",
    progress: bool = False,
    model: Any = None,
) -> pd.DataFrame:
    """The k nearest galaxies of each query (ids and/or image files): query, rank, the id column, distance, carried columns, answers.

    ``embeddings``: a folder of parts from gzoo.embed; ``ckpt``: the checkpoint that made them, to embed image files
    (``model``: a gzoo.Model of it already loaded); ``index``: IndexOptions (or an opened Index)."""
    emb = embeddings if isinstance(embeddings, Embeddings) else Embeddings(embeddings)
    queries = [str(q) for q in ([query] if isinstance(query, (str, int, Path)) else list(query))]
    if not queries:
        raise GzooError("query= is empty; give galaxy ids of the embeddings or image files.")
    idx = index if isinstance(index, Index) else open_index(emb, index, progress)
    files = [q for q in queries if is_file_query(q)]
    by_id = [q for q in queries if not is_file_query(q)]
    vectors = np.zeros((len(queries), emb.width), np.float32)
    self_row = np.full(len(queries), -1, np.int64)
    if by_id:
        rows = idx.rows_of(by_id)
        at = [i for i, q in enumerate(queries) if not is_file_query(q)]
        vectors[at] = emb.vectors_at(rows)
        self_row[at] = rows
    if files:
        at = [i for i, q in enumerate(queries) if is_file_query(q)]
        vectors[at] = embed_files(emb, [Path(f) for f in files], Path(ckpt) if ckpt is not None else None, device, progress, model)
    distances, rows = idx.neighbours(vectors, k + 1, self_row)  # one spare: a file query's own galaxy, left out below
    scale = np.ones(len(queries)) if idx.cosine else np.linalg.norm(idx.transform(vectors), axis=1)
    frames = []
    for i, q in enumerate(queries):
        d, r = distances[i], rows[i]
        keep = r >= 0
        if self_row[i] < 0:
            same = keep & (d <= SAME * max(scale[i], 1e-12))
            if same.any():
                say(f"query {q} is galaxy {idx.ids[r[same][0]]} of the embeddings (the same embedding): left out of its neighbours")
            keep &= ~same
        d, r = d[keep][:k], r[keep][:k]
        info = emb.info_at(r)
        info.insert(0, "query", q)
        info.insert(1, "rank", np.arange(1, len(r) + 1))
        info.insert(3, "distance", d.astype(np.float32))
        frames.append(info)
    return pd.concat(frames, ignore_index=True)


def caption_of(gid: Any, distance: float | None, answer: str | None, value: float | None, label: str = "d") -> str:
    """Two short lines under a tile: the id, then the distance (or score) and the answer's predicted value."""
    from gzoo.schema import COLUMN_INDEX

    text = str(gid)
    text = text if len(text) <= 22 else text[:21] + "…"
    parts = [f"{label}={distance:.3f}"] if distance is not None else []
    if answer is not None and value is not None and np.isfinite(value):
        parts.append(f"{answer.replace('Class', '') if answer in COLUMN_INDEX else answer[:10]} {value:.2f}")
    return f"{text}\n{'  '.join(parts)}"


def default_answer(emb: Embeddings, answer: str | None) -> str | None:
    if answer is not None and answer not in emb.answers:
        shown = ", ".join(emb.answers[:3]) + (" ..." if len(emb.answers) > 3 else "") if emb.answers else "none: embed with outputs=both"
        raise GzooError(f"answer={answer} is not a predicted answer of the embeddings (they hold {shown}).")
    return answer if answer is not None else (emb.answers[0] if emb.answers else None)


def similar_gallery(table: pd.DataFrame, emb: Embeddings, idx: Index, images: Path, out: Path, answer: str | None, file_column: str, crop: float) -> Path:
    """The query (framed) beside its neighbours, one row per query."""
    from gzoo.gallery import draw_sheet, find_images

    id_column = emb.id_column
    queries = list(dict.fromkeys(table["query"]))
    ids = [q for q in queries if not is_file_query(q)]
    found = find_images(images, list(dict.fromkeys(ids + table[id_column].tolist())), id_column, file_column)
    own = dict(zip(ids, emb.info_at(idx.rows_of(ids))[answer])) if answer is not None and ids else {}
    rows: list[tuple[str, list[Tile]]] = []
    for q in queries:
        mine = table[table["query"] == q]
        name = Path(q).name if is_file_query(q) else q
        first: Tile = (Path(q), f"query\n{name}", "red") if is_file_query(q) else (found[q], caption_of(q, None, answer, own.get(q)), "red")
        values = mine[answer] if answer is not None else [None] * len(mine)
        tiles: list[Tile] = [first] + [(found[gid], caption_of(gid, float(d), answer, v), None) for gid, d, v in zip(mine[id_column], mine["distance"], values)]
        title = f"query {name} (framed) and its {len(mine)} nearest galaxies" + (f"; {answer} predicted" if answer else "")
        rows.append((title, tiles))
    return draw_sheet(rows, out, crop, lines=2)


def gallery_path(out: Path) -> Path:
    return out.with_suffix(".png")


def similar_tool(o: SimilarOptions) -> pd.DataFrame:
    out = Path(o.out).expanduser()
    table_suffix(out)
    emb = Embeddings(o.embeddings)
    answer = default_answer(emb, o.answer)
    images, file_column = emb.images(o.images, o.file_column)
    picture = gallery_path(out) if o.gallery and images is not None else None
    with output_lock(out, "out", o.overwrite, also=[picture] if picture else []):
        idx = open_index(emb, o.index, o.progress)
        table = similar(emb, o.query, o.k, o.ckpt, idx, o.device, o.progress)
        write_table(table, out, float_format="%.6g")
        say(f"{len(table)} neighbours of {len(set(table['query']))} queries: {out}")
        if picture is not None and images is not None:
            similar_gallery(table, emb, idx, images, picture, answer, file_column, o.crop)
            say(f"gallery: {picture}")
        elif o.gallery:
            say("no gallery: give images= (the folder or catalogue the embeddings were made from) to draw one")
    return table


def main(argv: list[str] | None = None) -> int:
    return run_tool(similar_tool, SimilarOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
