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
Every image file gzoo reads is accepted (see gzoo.images). Both methods build their table with
gzoo.inference.predict_table, the prediction tool's own loop; nothing downloads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from gzoo.images import FitsStretch
from gzoo.inference import image_source, predict_table
from gzoo.log import say
from gzoo.module import load_net
from gzoo.net import GalaxyNet


class Model:
    """A trained network ready to predict (see :func:`load`); ``net`` is the plain GalaxyNet."""

    def __init__(self, net: GalaxyNet, checkpoint: str | Path | None = None):
        self.net, self.checkpoint = net, checkpoint

    @property
    def device(self):
        return next(self.net.parameters()).device

    @property
    def labels(self) -> list[str]:
        """The columns of :meth:`predict` after the id: the 37 Kaggle answers (Class1.1 ... Class11.6), or the run's data.labels."""
        return list(self.net.labels)

    def __repr__(self) -> str:
        return f"gzoo.Model({self.net.timm_name} at {self.net.image_size} px on {self.device}, from {self.checkpoint})"

    def predict(
        self,
        source: Any,
        tta: int = 1,
        batch_size: int = 32,
        num_workers: int = 2,
        precision: str = "auto",
        on_bad_image: str = "error",
        fits: FitsStretch | dict | None = None,
        file_column: str = "file_loc",
        id_column: str = "id_str",
        progress: bool = True,
        root: str | Path | None = None,
    ) -> pd.DataFrame:
        """The predicted vote fractions: the id column, then one column per label (:attr:`labels`), one row per image.

        Rows follow the source: a folder sorted by id, a list or DataFrame in its order. The id is the
        DataFrame's ``id_column`` when it has one, else the file name without its extension (an integer
        when it is all digits: the column is then GalaxyID, else id_str). ``tta``: views averaged per galaxy
        (8 = right-angle rotations x mirror; see gzoo.inference). ``on_bad_image="skip"`` leaves unreadable
        images out and says which; ``fits``: the stretch of FITS files (a FitsStretch or its fields as a dict).
        ``root``: the folder relative paths of a list or DataFrame are read from (default: the working folder;
        a catalogue file's: its own folder). A list of arrays gives ids 0..N-1 in the column "index".
        """
        return self._table(source, False, tta, batch_size, num_workers, precision, on_bad_image, fits, file_column, id_column, progress, root)

    def embed(
        self,
        source: Any,
        tta: int = 1,
        batch_size: int = 32,
        num_workers: int = 2,
        precision: str = "auto",
        on_bad_image: str = "error",
        fits: FitsStretch | dict | None = None,
        file_column: str = "file_loc",
        id_column: str = "id_str",
        progress: bool = True,
        root: str | Path | None = None,
    ) -> pd.DataFrame:
        """The pooled body features (GalaxyNet.features, e.g. 1280 for B0): the id column, then feature_0 ...,
        one row per image, averaged over the ``tta`` views; the other arguments as for :meth:`predict`."""
        return self._table(source, True, tta, batch_size, num_workers, precision, on_bad_image, fits, file_column, id_column, progress, root)

    def _table(self, source, features, tta, batch_size, num_workers, precision, on_bad_image, fits, file_column, id_column, progress, root) -> pd.DataFrame:
        paths, ids, id_name = image_source(source, file_column, id_column, root)
        fits = FitsStretch(**fits) if isinstance(fits, dict) else fits
        table, skipped = predict_table(self.net, paths, ids, id_name, tta, batch_size, num_workers, on_bad_image, precision, progress, fits, features)
        if skipped:
            shown = ", ".join(str(p) for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            say(f"left out {len(skipped)} unreadable images (on_bad_image=skip): {shown}")
        return table


def load(checkpoint: str | Path, device: str = "auto") -> Model:
    """The trained network of a checkpoint written by gzoo.train, on ``device`` (auto = the GPU if there is one,
    cpu, cuda, cuda:1 ...), ready to :meth:`~Model.predict` and :meth:`~Model.embed`; never downloads."""
    return Model(load_net(checkpoint, device).set_speed(channels_last=True), checkpoint)
