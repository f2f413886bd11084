"""Predictions for galaxy images from a checkpoint: a Kaggle submission, a CSV/Parquet table, or a survey's parts.

    python -m gzoo.predict ckpt=PATH images=DIR|CATALOG out=FILE.csv|FILE.parquet|FOLDER/ [tta=8] [outputs=both] ...

The checkpoint carries all that is needed: the network and its evaluation view (image size,
mean, std, crop fraction); no config is read. ``images=`` is a folder (subfolders too) of .jpg .jpeg
.png .tif .tiff .fits .fits.gz files in any letter case (see gzoo.images: 16-bit scaled to 8,
greyscale to three channels, FITS stretched by fits.*; anything else in it is left out and said), or
a catalogue .csv/.parquet with ``id_column`` and ``file_column`` (id_str, file_loc by default), read in
chunks; ``carry=[ra,dec]`` copies catalogue columns into the output. A folder's galaxy id is its file
name without the extension: an integer when it is all digits, else the name. The table has the id
column (GalaxyID when every id is an integer, as Kaggle's, else id_str; a catalogue's own id column),
then Class1.1 ... Class11.6, one row per image, a folder's sorted by id, a catalogue's in its order:
for the Kaggle test folder it is exactly a Kaggle submission. Two files of one id and broken
symbolic links are errors naming them.

tta=N averages N views of each galaxy. tta=8: the four right-angle rotations with and
without a mirror flip, made with torch.rot90/flip on the cropped uint8 batch on the device,
so an image and its rotated or flipped copy get the same prediction. Any other N: the whole
image rotated by N evenly spaced angles (0, 360/N, ...) before the crop.

The galaxies are predicted in parts of part_size, each written whole or not at all, so the same
command after a kill does only what is left; shard=i/n (or a SLURM array) and devices=N share the
parts out; out=FOLDER/ keeps them as a Parquet dataset, out=FILE merges them into FILE (.csv or
.parquet by its extension) when all are done (see gzoo.survey). An unreadable image is an error
naming it; with on_bad_image=skip it is left out, listed at the end and in FILE.skipped.txt
(_skipped.txt in a folder).

An answer the checkpoint was trained on with fewer than min_labels (100) known values is named before the run;
thin_labels=nan writes it as NaN instead (an empty cell in a CSV; see gzoo.label_counts and gzoo.survey).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gzoo.config import run_tool
from gzoo.survey import SurveyOptions, run

PredictOptions = SurveyOptions


def predict(o: SurveyOptions) -> Path:
    """Write the predictions (and, with outputs=embeddings|both, the embeddings) of ``o.images``; returns the output."""
    return run(o, "predictions")


def main(argv: list[str] | None = None) -> int:
    return run_tool(predict, SurveyOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
