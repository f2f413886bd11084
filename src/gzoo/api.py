"""The Python API: a trained checkpoint's predictions and embeddings for your own galaxies, as pandas DataFrames.

    import gzoo
    model = gzoo.load("outputs/default/b0/fulltune/checkpoints/best.ckpt")
    table = model.predict("my_galaxies/", tta=8)     # id, then Class1.1 ... Class11.6
    features = model.embed("my_galaxies/")           # id, then feature_0 ... (pooled body features)

A source is a folder (read as ``python -m gzoo.predict images=`` reads it), one image file, a list of
image files, a DataFrame with a file column (``file_loc`` by default, as galaxy-datasets' catalogues
name it; relative paths are read from ``root=``, by default the working folder) and, when it has one,
an id column (``id_str``), or a catalogue file (.csv or .parquet) with those columns, read as training
reads ``data.catalog`` (relative paths from the catalogue's folder). A row without a file or an id, and
two rows naming one image file, are errors naming the rows. Decoded images are accepted too: a list of
RGB uint8 arrays (H, W, 3), whose ids are their positions 0..N-1 in the column "index".
Every image file gzoo reads is accepted (see gzoo.images). Both methods take the options of
``python -m gzoo.predict`` and run the same parts (gzoo.survey); with ``out=`` they write them as the
tool does (resumable), else they return one DataFrame. Nothing downloads.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pandas as pd

from gzoo.config import check_values
from gzoo.errors import GzooError
from gzoo.fits import FitsOptions, options_of_checkpoint, resolve_options
from gzoo.log import say
from gzoo.module import load_net
from gzoo.net import GalaxyNet
from gzoo.survey import EmbedOptions, open_source, run, table_of


class Model:
    """A trained network ready to predict (see :func:`load`); ``net`` is the plain GalaxyNet."""

    def __init__(self, net: GalaxyNet, checkpoint: str | Path | None = None, fits: FitsOptions | None = None):
        self.net, self.checkpoint = net, checkpoint
        self.fits = fits or FitsOptions()  # how the checkpoint's training made FITS cutouts into images (gzoo.fits)

    @property
    def device(self):
        return next(self.net.parameters()).device

    @property
    def labels(self) -> list[str]:
        """The columns of :meth:`predict` after the id: the 37 Kaggle answers (Class1.1 ... Class11.6), or the run's data.labels."""
        return list(self.net.labels)

    def __repr__(self) -> str:
        return f"gzoo.Model({self.net.timm_name} at {self.net.image_size} px on {self.device}, from {self.checkpoint})"

    def predict(self, source: Any, out: str | Path | None = None, root: str | Path | None = None, **options: Any) -> pd.DataFrame | Path:
        """The predicted vote fractions: the id column, then one column per label (:attr:`labels`), one row per image.

        Rows follow the source: a folder sorted by id, a list, DataFrame or catalogue in its order. The id is the
        DataFrame's or catalogue's ``id_column`` when it has one, else the file name without its extension (an
        integer when it is all digits: the column is then GalaxyID, else id_str). ``options`` are gzoo.predict's
        (gzoo.survey.SurveyOptions): ``tta`` (views averaged per galaxy; 8 = right-angle rotations x mirror),
        ``batch_size``, ``num_workers``, ``precision``, ``on_bad_image="skip"`` (leave unreadable images out and
        say which), ``fits`` (gzoo.fits.FitsOptions or its fields as a dict: the checkpoint's own, but for what is given), ``file_column``/``id_column``, ``carry``
        (columns of a catalogue or DataFrame to copy), ``outputs="both"`` (the embedding too), ``progress``,
        ``uncertainty="dropout"`` (or "views", "both" with tta >= 2: each answer's spread, Class1.1_std ..., and the
        calibrated intervals of ``intervals=[90]``, Class1.1_lo90 / Class1.1_hi90 ...; see gzoo.uncertainty), ``samples``,
        ``thin_labels="nan"`` (answers trained on fewer than ``min_labels`` known values, 100, written as NaN rather than
        named; see gzoo.label_counts).
        ``root``: the folder relative paths of a list or DataFrame are read from (default: the working folder;
        a catalogue file's: its own folder). A list of arrays gives ids 0..N-1 in the column "index".

        With ``out`` (FILE.csv, FILE.parquet or FOLDER/) the table is written in parts as ``python -m gzoo.predict``
        writes it (resumable, ``part_size``, ``shard``) and the output's path is returned instead.
        """
        return self._run(source, out, root, "predictions", options)

    def embed(self, source: Any, out: str | Path | None = None, root: str | Path | None = None, **options: Any) -> pd.DataFrame | Path:
        """The pooled body features (GalaxyNet.features, e.g. 1280 for B0): the id column, then feature_0 ...,
        one row per image, averaged over the ``tta`` views; ``embedding_dtype="float16"`` halves them, and
        ``embedding_layout="list"`` makes them one column "embedding"; the rest as for :meth:`predict`."""
        return self._run(source, out, root, "embeddings", options)

    def _run(self, source: Any, out: str | Path | None, root: str | Path | None, what: str, options: dict) -> pd.DataFrame | Path:
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(EmbedOptions)} - {"ckpt", "images", "out"})
        if unknown:
            raise GzooError(f"unknown option {unknown[0]!r}; the options are those of python -m gzoo.{'predict' if what == 'predictions' else 'embed'} --help.")
        options["fits"] = resolve_options(self.fits, options.get("fits"))  # the checkpoint's, but for what was given
        options.setdefault("outputs", what)
        o = EmbedOptions(ckpt=Path(str(self.checkpoint)), images=source, out=str(out) if out is not None else "", **options)
        check_values(o, EmbedOptions)
        if out is not None:
            if self.checkpoint is None or not isinstance(source, (str, os.PathLike)):
                raise GzooError(
                    "out= writes parts as python -m gzoo.predict does: give a folder or catalogue file as the source, of a model from gzoo.load(checkpoint)."
                )
            return run(o, what)
        table, skipped = table_of(self.net, open_source(source, o.file_column, o.id_column, o.carry, root, o.progress, o.fits), o)
        if skipped:
            shown = ", ".join(str(p) for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            say(f"left out {len(skipped)} unreadable images (on_bad_image=skip): {shown}")
        return table

    def similar(self, embeddings: str | Path, query: Any, k: int = 10, **index: Any) -> pd.DataFrame:
        """The k galaxies of ``embeddings`` (a folder of parts that gzoo.embed made with this checkpoint) most like each
        query: ids of those galaxies and/or image files (embedded with this model, with the embeddings' tta). One row per
        query and neighbour: query, rank, the id column, distance, the carried columns, the predicted answers; ``index``
        takes gzoo.neighbours.IndexOptions' fields (pca=, metric=, kind= ...). See gzoo.similar."""
        from gzoo.neighbours import IndexOptions
        from gzoo.similar import similar as find

        if self.checkpoint is None:
            raise GzooError("Model.similar needs a model from gzoo.load(checkpoint): the checkpoint's SHA-256 is checked against the embeddings'.")
        return find(embeddings, query, k, ckpt=self.checkpoint, index=IndexOptions(**index), model=self)


def load(checkpoint: str | Path, device: str = "auto") -> Model:
    """The trained network of a checkpoint written by gzoo.train, on ``device`` (auto = the GPU if there is one,
    cpu, cuda, cuda:1 ...), ready to :meth:`~Model.predict` and :meth:`~Model.embed`; never downloads."""
    return Model(load_net(checkpoint, device).set_speed(channels_last=True), checkpoint, options_of_checkpoint(checkpoint))
