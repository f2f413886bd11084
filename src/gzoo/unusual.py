"""Unusual galaxies: a score per galaxy for how little it resembles the rest, as a table and a gallery of the top.

    python -m gzoo.unusual embeddings=FOLDER out=FILE.csv|FILE.parquet [method=knn|iforest|lof] [k=10] [top=24] [images=FOLDER|CATALOG]

The score (higher = more unusual) is computed in the index's space (gzoo.neighbours: the embeddings after its
PCA, whitened by default here (index.whiten=true, kept in FOLDER/_index_whitened/), and for cosine unit length;
built on first use, ``index.*`` options):

    knn      the distance to the k-th nearest other galaxy, from the index (the default: on gz2-2k, with the index's
             default 64 principal components whitened, it put the most galaxies volunteers called odd in its top 5 %;
             see the README's "Similar and unusual galaxies")
    iforest  scikit-learn's isolation forest, fitted on ``index.train_rows`` sampled galaxies, scoring every one
    lof      scikit-learn's local outlier factor with k neighbours (fitted on every galaxy when they are at most
             index.train_rows, else on a sample, the rest scored as new points)

The table has every galaxy, most unusual first: rank, the id column, score, the carried catalogue columns and the
predicted answers when the embeddings hold them. The gallery (beside out, <out>.png; needs ``images=``, the folder
or catalogue the embeddings were made from) shows the ``top`` most unusual. Both are written whole or not at all.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gzoo.config import REQUIRED, option, run_tool
from gzoo.io import output_lock, table_suffix, write_table
from gzoo.log import say
from gzoo.neighbours import Embeddings, Index, IndexOptions, open_index

METHODS = ("knn", "iforest", "lof")


@dataclass
class UnusualOptions:
    embeddings: Path = option(REQUIRED, "a folder of embedding parts from python -m gzoo.embed ... out=FOLDER/")
    out: Path = option(REQUIRED, "the table: FILE.csv or FILE.parquet, every galaxy most unusual first (the gallery goes beside it as FILE.png)")
    method: str = option("knn", "knn: distance to the k-th neighbour; iforest: isolation forest; lof: local outlier factor", choices=METHODS)
    k: int = option(10, "knn and lof: the neighbours counted", low=1)
    top: int = option(24, "galaxies shown in the gallery", low=1)
    images: Path | None = option(None, "the folder or catalogue the embeddings were made from, for the gallery's pictures")
    file_column: str | None = option(None, "a catalogue's image column (images=CATALOG; unset: the embeddings' manifest's, else file_loc)")
    gallery: bool = option(True, "draw the gallery PNG (needs images=)")
    answer: str | None = option(None, "the predicted answer shown under each tile (unset: the first the embeddings hold)")
    crop: float = option(0.5, "the central fraction of each image shown in the gallery", above=0, high=1)
    seed: int = option(0, "the isolation forest's seed")
    overwrite: bool = option(False, "replace existing outputs")
    progress: bool = option(True, "show progress bars")
    index: IndexOptions = field(default_factory=lambda: IndexOptions(whiten=True))  # the index (gzoo.neighbours); whitened: it ranked odd galaxies higher


def _sample(emb: Embeddings, idx: Index, n: int, seed: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, transformed vectors) of up to n rows drawn with ``seed``; all rows, in order, when there are at most n."""
    rng = np.random.default_rng(seed)
    rows = np.arange(emb.rows) if emb.rows <= n else np.sort(rng.choice(emb.rows, n, replace=False))
    out = np.zeros((len(rows), idx.transform.dims), np.float32)
    for first, vectors in emb.parts(progress, "unusual: sampling"):
        lo, hi = np.searchsorted(rows, [first, first + len(vectors)])
        out[lo:hi] = idx.transform(vectors[rows[lo:hi] - first])
    return rows, out


def scores(emb: Embeddings, idx: Index, method: str = "knn", k: int = 10, seed: int = 0, train_rows: int = 50_000, progress: bool = False) -> np.ndarray:
    """How unusual each galaxy is (one number per row, higher = more unusual), by ``method`` (see the module's doc)."""
    out = np.zeros(emb.rows, np.float32)
    if method == "knn":
        for first, vectors in emb.parts(progress, f"unusual: {k}-th neighbour"):
            rows = np.arange(first, first + len(vectors))
            for lo in range(0, len(vectors), 4096):
                distances, _ = idx.neighbours(vectors[lo : lo + 4096], k, rows[lo : lo + 4096])
                out[first + lo : first + lo + len(distances)] = distances[:, -1]
        return out
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor

    rows, sample = _sample(emb, idx, train_rows, seed, progress)
    if method == "lof" and len(rows) == emb.rows:  # every galaxy fits: the exact local outlier factor of each
        lof = LocalOutlierFactor(n_neighbors=min(k, emb.rows - 1)).fit(sample)
        return (-lof.negative_outlier_factor_).astype(np.float32)
    model = (
        IsolationForest(n_estimators=200, random_state=seed).fit(sample) if method == "iforest" else LocalOutlierFactor(n_neighbors=k, novelty=True).fit(sample)
    )
    for first, vectors in emb.parts(progress, f"unusual: {method}"):
        out[first : first + len(vectors)] = -model.score_samples(idx.transform(vectors))
    return out


def ranking(emb: Embeddings, score: np.ndarray) -> pd.DataFrame:
    """Every galaxy, most unusual first: rank, the id column, score, carried columns, predicted answers."""
    order = np.argsort(-score, kind="stable")
    table = emb.info_at(order)
    table.insert(0, "rank", np.arange(1, len(order) + 1))
    table.insert(2, "score", score[order])
    return table


def unusual_gallery(
    table: pd.DataFrame, emb: Embeddings, images: Path, out: Path, top: int, answer: str | None, file_column: str, crop: float, method: str
) -> Path:
    from gzoo.gallery import draw_sheet, find_images
    from gzoo.similar import Tile, caption_of

    head = table.head(top)
    found = find_images(images, head[emb.id_column].tolist(), emb.id_column, file_column)
    values = head[answer] if answer is not None else [None] * len(head)
    tiles: list[Tile] = [
        (found[gid], f"#{r} " + caption_of(gid, float(s), answer, v, "score"), None)
        for r, gid, s, v in zip(head["rank"], head[emb.id_column], head["score"], values)
    ]
    title = f"the {len(head)} most unusual of {len(table)} galaxies ({method})" + (f"; {answer} predicted" if answer else "")
    rows = [(title if i == 0 else "", tiles[i : i + 8]) for i in range(0, len(tiles), 8)]
    return draw_sheet(rows, out, crop, lines=2)


def unusual_tool(o: UnusualOptions) -> pd.DataFrame:
    from gzoo.similar import default_answer, gallery_path

    out = Path(o.out).expanduser()
    table_suffix(out)
    emb = Embeddings(o.embeddings)
    answer = default_answer(emb, o.answer)
    images, file_column = emb.images(o.images, o.file_column)
    picture = gallery_path(out) if o.gallery and images is not None else None
    with output_lock(out, "out", o.overwrite, also=[picture] if picture else []):
        idx = open_index(emb, o.index, o.progress)
        score = scores(emb, idx, o.method, o.k, o.seed, o.index.train_rows, o.progress)
        table = ranking(emb, score)
        write_table(table, out, float_format="%.6g")
        say(f"{len(table)} galaxies scored ({o.method}); the most unusual: {', '.join(map(str, table[emb.id_column].head(5)))}: {out}")
        if picture is not None and images is not None:
            unusual_gallery(table, emb, images, picture, o.top, answer, file_column, o.crop, o.method)
            say(f"gallery: {picture}")
        elif o.gallery:
            say("no gallery: give images= (the folder or catalogue the embeddings were made from) to draw one")
    return table


def main(argv: list[str] | None = None) -> int:
    return run_tool(unusual_tool, UnusualOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
