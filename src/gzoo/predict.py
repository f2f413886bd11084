"""Predictions for a folder of galaxy images from a checkpoint: a Kaggle submission, or a CSV/Parquet table.

    python -m gzoo.predict ckpt=PATH images=DIR out=FILE.csv|FILE.parquet [tta=8] [on_bad_image=skip] ...

The checkpoint carries all that is needed: the network and its evaluation view (image size,
mean, std, crop fraction); no config is read. The folder's images are .jpg .jpeg .png .tif .tiff
.fits .fits.gz files in any letter case (see gzoo.images: 16-bit scaled to 8, greyscale to three
channels, FITS stretched by fits.*); anything else in it is left out and said. A galaxy's id is its
file name without the extension: an integer when it is all digits, else the name. The table has the
id column (GalaxyID when every id is an integer, as Kaggle's, else id_str), then Class1.1 ...
Class11.6, one row per image, sorted by id: with integer ids it is exactly a Kaggle submission.
Two files of one id (0100150.jpg beside 100150.jpg) and broken symbolic links are errors naming them.

tta=N averages N views of each galaxy. tta=8: the four right-angle rotations with and
without a mirror flip, made with torch.rot90/flip on the cropped uint8 batch on the device,
so an image and its rotated or flipped copy get the same prediction. Any other N: the whole
image rotated by N evenly spaced angles (0, 360/N, ...) before the crop.

The table's format follows out's extension (.csv or .parquet). It is written to a hidden temporary
file beside ``out`` and renamed only when complete, so a partial file never appears under ``out``.
Before any image is read, out's folder is made and tried (a full or read-only disk, or a path component
that is a file, is one sentence then, not after the predictions), and ``.<out's name>.lock`` beside it is
taken for the whole run: a second run writing the same out is refused, naming the first.
An unreadable image is an error naming it; with on_bad_image=skip it is left out, listed at the end
and in FILE.csv.skipped.txt.

This module is the command: the images, views, batches and the table are gzoo.inference's.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gzoo.config import REQUIRED, option, run_tool
from gzoo.data import BAD_IMAGE_MODES
from gzoo.device import PRECISIONS
from gzoo.errors import GzooError
from gzoo.images import FitsStretch
from gzoo.inference import list_images, predict_table
from gzoo.io import atomic_open, output_lock, table_suffix, write_failure, write_table
from gzoo.log import say
from gzoo.module import load_net


@dataclass
class PredictOptions:
    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train")
    images: Path = option(REQUIRED, "a folder of images named <id>.<ext>: .jpg .jpeg .png .tif .tiff .fits .fits.gz, any letter case")
    out: Path = option(REQUIRED, "the table to write, .csv or .parquet by its extension: the id, then Class1.1 ... Class11.6, sorted by id")
    tta: int = option(1, "views averaged per galaxy: 8 = right-angle rotations x mirror; N = N evenly spaced angles", low=1)
    batch_size: int = option(32, "galaxies per batch", low=1)
    num_workers: int = option(2, "DataLoader worker processes decoding images", low=0)
    overwrite: bool = option(False, "replace an existing out")
    on_bad_image: str = option("error", "error: stop at an unreadable image, naming it; skip: leave it out and list it", choices=BAD_IMAGE_MODES)
    device: str = option("auto", "auto (the GPU if there is one), cpu, cuda, cuda:1 ...")
    precision: str = option("auto", "auto = bf16-mixed on a GPU that has it, else 32-true", choices=PRECISIONS)
    progress: bool = option(True, "show a progress bar")
    fits: FitsStretch = field(default_factory=FitsStretch)  # how FITS cutouts become 8-bit images


def predict(o: PredictOptions) -> Path:
    """Write the table (CSV or Parquet by out's extension) of every image in ``o.images``; returns ``o.out``."""
    out = o.out
    if out.is_dir():
        raise GzooError(f"out={out} is a folder; give the file to write, e.g. out={out / 'submission.csv'} (or .parquet).")
    table_suffix(out)
    # Before any work: out's folder can be written, no other run writes out, and out is new unless overwrite=true.
    with output_lock(out, "out", o.overwrite):
        paths, ids = list_images(o.images)
        net = load_net(o.ckpt, o.device).set_speed(channels_last=True)  # faster convolutions, on CPUs too (about 1.3x for b0)
        device = next(net.parameters()).device
        say(f"{len(paths)} images in {o.images}: {net.timm_name} at {net.image_size} px on {device}, tta={o.tta}")

        start = time.perf_counter()
        table, skipped = predict_table(net, paths, ids, None, o.tta, o.batch_size, o.num_workers, o.on_bad_image, o.precision, o.progress, fits=o.fits)
        seconds = time.perf_counter() - start
        skipped_list = out.with_name(out.name + ".skipped.txt")
        try:
            write_table(table, out, "out", float_format="%.6f")
            skipped_list.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
            if skipped:
                with atomic_open(skipped_list, newline="") as f:
                    f.writelines(f"{path}\t{error}\n" for path, error in skipped)
        except OSError as e:
            raise GzooError(
                f"{write_failure(OSError(e.errno, e.strerror), out, 'the predictions')}; the {len(table)} predictions were computed but not saved "
                f"(nothing half-written is left); free space there or choose another out=, then run the same command again."
            ) from None
    if skipped:
        shown = ", ".join(Path(p).name for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        say(f"skipped {len(skipped)} unreadable images ({shown}); the list is in {skipped_list}")
    say(f"wrote {len(table)} rows to {out} in {seconds:.1f} s: {len(paths) / seconds:.1f} images/s (tta={o.tta})")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_tool(predict, PredictOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
