"""A map of the embeddings: every galaxy (or a sample) as a point in 2-D, coloured by a predicted answer, with thumbnails.

    python -m gzoo.embedding_map embeddings=FOLDER out=MAP.png [colour=Class1.1] [method=pca|umap] [images=FOLDER|CATALOG]

The 2-D position is the first two principal components of the embeddings (after the unit length for cosine, as
the index compares them), fitted on a sample of ``max_points`` galaxies, or with ``method=umap`` a UMAP of their
first 50 components (needs ``pip install umap-learn``). The left panel shows the points coloured by ``colour``,
a predicted answer of the embeddings (outputs=both), so the morphology sequence the model learned can be seen;
with ``images=`` (the folder or catalogue the embeddings were made from) the right panel puts, on a grid over the
map, the image of the galaxy nearest each cell's centre. The PNG is written whole or not at all.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.io import atomic_open, output_lock
from gzoo.log import say
from gzoo.neighbours import Embeddings, Transform


@dataclass
class MapOptions:
    embeddings: Path = option(REQUIRED, "a folder of embedding parts from python -m gzoo.embed ... out=FOLDER/")
    out: Path = option(REQUIRED, "the map, a .png file")
    colour: str | None = option(None, "the predicted answer colouring the points (unset: the first the embeddings hold; none: one colour)")
    method: str = option("pca", "pca: the first two principal components; umap: UMAP of the first 50 (needs umap-learn)", choices=("pca", "umap"))
    metric: str = option("cosine", "cosine: each embedding scaled to unit length first, as the index compares them; l2: as they are", choices=("cosine", "l2"))
    max_points: int = option(100_000, "galaxies drawn (a sample drawn with seed when there are more)", low=10)
    images: Path | None = option(None, "the folder or catalogue the embeddings were made from: thumbnails on a grid over the map")
    file_column: str | None = option(None, "a catalogue's image column (images=CATALOG; unset: the embeddings' manifest's, else file_loc)")
    grid: int = option(12, "thumbnails per side of the grid", low=2)
    crop: float = option(0.5, "the central fraction of each image shown as a thumbnail", above=0, high=1)
    seed: int = option(0, "the sample's (and UMAP's) seed")
    overwrite: bool = option(False, "replace an existing out")
    progress: bool = option(True, "show progress bars")


def positions(
    emb: Embeddings, method: str = "pca", cosine: bool = True, max_points: int = 100_000, seed: int = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows drawn, their (n, 2) positions, the axes' names) of a sample of the embeddings."""
    rng = np.random.default_rng(seed)
    rows = np.arange(emb.rows) if emb.rows <= max_points else np.sort(rng.choice(emb.rows, max_points, replace=False))
    x = np.zeros((len(rows), emb.width), np.float32)
    for first, vectors in emb.parts(progress, "map: reading"):
        lo, hi = np.searchsorted(rows, [first, first + len(vectors)])
        x[lo:hi] = vectors[rows[lo:hi] - first]
    if cosine:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if method == "pca":
        pca = Transform.fit(x, 2, False, False)
        var = ((x - pca.mean) ** 2).sum(1).mean()
        share = [(((x - pca.mean) @ c) ** 2).mean() / var for c in pca.components]  # type: ignore[union-attr]
        return rows, pca(x), f"PC1 ({share[0]:.0%} of the variance) / PC2 ({share[1]:.0%})"
    try:
        import umap
    except ImportError:
        raise GzooError("method=umap needs the umap-learn package: pip install umap-learn (or use method=pca).") from None
    reduced = Transform.fit(x, min(50, x.shape[1], len(x) - 1), False, False)(x)
    xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(reduced)
    return rows, np.asarray(xy, np.float32), "UMAP 1 / UMAP 2 (of 50 principal components)"


def nearest_on_grid(xy: np.ndarray, grid: int) -> list[tuple[int, float, float]]:
    """(point, cell x, cell y) for each cell of a grid x grid over the 1st-99th percentiles of ``xy`` that holds a point:
    the point nearest the cell's centre."""
    lo, hi = np.percentile(xy, 1, axis=0), np.percentile(xy, 99, axis=0)
    step = (hi - lo) / grid
    picks = []
    cell = np.floor((xy - lo) / step).astype(int)
    for i in range(grid):
        for j in range(grid):
            inside = np.flatnonzero((cell[:, 0] == i) & (cell[:, 1] == j))
            if len(inside):
                centre = lo + step * (np.array([i, j]) + 0.5)
                best = inside[np.argmin(((xy[inside] - centre) ** 2).sum(1))]
                picks.append((int(best), float(lo[0] + step[0] * i), float(lo[1] + step[1] * j)))
    return picks


def draw_map(o: MapOptions) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(o.out).expanduser()
    if out.suffix.lower() != ".png":
        raise GzooError(f"out={out} must be a .png file.")
    emb = Embeddings(o.embeddings)
    colour = o.colour if o.colour is not None else (emb.answers[0] if emb.answers else "none")
    if colour != "none" and colour not in emb.answers and colour not in emb.carry:
        raise GzooError(
            f"colour={colour} is not a predicted answer or carried column of the embeddings ({', '.join(emb.answers[:3] + emb.carry[:3]) or 'none: embed with outputs=both'} ...), or none."
        )
    with output_lock(out, "out", o.overwrite):
        rows, xy, axes = positions(emb, o.method, o.metric == "cosine", o.max_points, o.seed, o.progress)
        images, file_column = emb.images(o.images, o.file_column)
        panels = 2 if images is not None else 1
        fig, ax = plt.subplots(1, panels, figsize=(7.5 * panels, 6.5), squeeze=False)
        left = ax[0, 0]
        if colour != "none":
            values = emb.column(colour)[rows]
            dots = left.scatter(xy[:, 0], xy[:, 1], c=values, s=max(1.0, 30_000 / len(rows)) ** 0.5, cmap="viridis", alpha=0.8, linewidths=0)
            fig.colorbar(dots, ax=left, label=f"{colour} (predicted)", shrink=0.8)
        else:
            left.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5, linewidths=0)
        left.set_title(f"{len(rows)} of {emb.rows} galaxies, {o.method.upper()} of the embeddings ({o.metric})")
        left.set_xlabel(axes.split(" / ")[0])
        left.set_ylabel(axes.split(" / ")[1])
        if images is not None:
            from gzoo.gallery import find_images, tile

            picks = nearest_on_grid(xy, o.grid)
            ids = emb.info_at(rows[[p for p, _, _ in picks]])[emb.id_column].tolist()
            found = find_images(images, ids, emb.id_column, file_column)
            right = ax[0, 1]
            lo, hi = np.percentile(xy, 1, axis=0), np.percentile(xy, 99, axis=0)
            step = (hi - lo) / o.grid
            for (_, x0, y0), gid in zip(picks, ids):
                right.imshow(np.asarray(tile(found[gid], o.crop, 64)), extent=(x0, x0 + step[0], y0, y0 + step[1]), origin="upper")
            right.set_xlim(lo[0], hi[0])
            right.set_ylim(lo[1], hi[1])
            right.set_aspect("auto")
            right.set_title("the galaxy nearest each cell's centre")
            right.set_xlabel(left.get_xlabel())
        fig.tight_layout()
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
    say(f"map of {len(rows)} galaxies ({o.method}, coloured by {colour}): {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_tool(draw_map, MapOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
