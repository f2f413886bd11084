"""Kaggle submission from a checkpoint and a folder of JPEGs.

    python -m gzoo.predict ckpt=PATH images=DIR out=FILE.csv [tta=8] [on_bad_image=skip] ...

The checkpoint carries all that is needed: the network and its evaluation view (image size,
mean, std, crop fraction); no config is read. The CSV has the Kaggle header (GalaxyID,
Class1.1 ... Class11.6) and one row per <GalaxyID>.jpg, sorted by GalaxyID.

tta=N averages N views of each galaxy. tta=8: the four right-angle rotations with and
without a mirror flip, made with torch.rot90/flip on the cropped uint8 batch on the device,
so an image and its rotated or flipped copy get the same prediction. Any other N: the whole
image rotated by N evenly spaced angles (0, 360/N, ...) before the crop.

The CSV is written to a hidden temporary file beside ``out`` and renamed only when
complete, so a partial file never appears under ``out``. An unreadable image is an error
naming it; with on_bad_image=skip it is left out, listed at the end and in FILE.csv.skipped.txt.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gzoo import schema
from gzoo.config import REQUIRED, option, run_tool
from gzoo.data import BAD_IMAGE_MODES, GalaxyZooDataset, make_loader
from gzoo.errors import GzooError
from gzoo.io import atomic_open
from gzoo.log import say
from gzoo.module import load_net
from gzoo.net import PRECISIONS, GalaxyNet, autocast
from gzoo.transforms import eval_transform


@dataclass
class PredictOptions:
    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train")
    images: Path = option(REQUIRED, "a folder of <GalaxyID>.jpg files")
    out: Path = option(REQUIRED, "the CSV to write (Kaggle header, one row per image, sorted by GalaxyID)")
    tta: int = option(1, "views averaged per galaxy: 8 = right-angle rotations x mirror; N = N evenly spaced angles", low=1)
    batch_size: int = option(32, "galaxies per batch", low=1)
    num_workers: int = option(2, "DataLoader worker processes decoding images", low=0)
    overwrite: bool = option(False, "replace an existing out")
    on_bad_image: str = option("error", "error: stop at an unreadable image, naming it; skip: leave it out and list it", choices=BAD_IMAGE_MODES)
    device: str = option("auto", "auto (the GPU if there is one), cpu, cuda, cuda:1 ...")
    precision: str = option("auto", "auto = bf16-mixed on a GPU that has it, else 32-true", choices=PRECISIONS)
    progress: bool = option(True, "show a progress bar")


# ----------------------------------------------------------------------------- views


def tta_angles(tta: int) -> list[float]:
    """Angles (degrees) by which the whole image is rotated before the crop; tta=8 uses dihedral_views instead."""
    return [0.0] if tta in (1, 8) else [360.0 * i / tta for i in range(tta)]


def dihedral_views(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 8, C, H, W): the four right-angle rotations of x and of its mirror image."""
    return torch.stack([torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)], dim=1)


def image_dataset(net: GalaxyNet, images: Sequence[Path | np.ndarray], ids: Sequence, tta: int = 1, on_bad_image: str = "skip") -> GalaxyZooDataset:
    """Unlabelled images as the network sees them (its evaluation view), with the views of ``tta``."""
    return GalaxyZooDataset(images, None, ids, eval_transform(net.image_size, net.crop_fraction), views=tta_angles(tta), on_bad_image=on_bad_image)


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_loader(net: GalaxyNet, loader: DataLoader, tta: int = 1, precision: str = "auto", progress: bool = False) -> Iterator[dict]:
    """Predictions batch by batch, in the loader's order: each batch's dict with "pred" (B, 37) float64
    averaged over the views (NaN rows for unreadable images, whose reason is under "error").

    The loader's items carry views (B, V, 3, S, S) (see GalaxyZooDataset); tta=8 adds the
    8 right-angle views on the device.
    """
    if tta < 1:
        raise GzooError(f"tta must be a number of views >= 1, got {tta}.")
    device = next(net.parameters()).device
    net.eval()
    with tqdm(total=len(loader.dataset), desc=f"predicting (tta={tta})", unit="img", disable=not progress) as bar:
        for batch in loader:
            views = batch["image"]
            x = views.to(device, non_blocking=True).flatten(0, 1)  # (B*V, 3, S, S), image-major
            if tta == 8:
                x = dihedral_views(x).flatten(0, 1)
            with autocast(device, precision):
                pred = net(x)
            pred = pred.double().view(len(views), -1, pred.shape[-1]).mean(dim=1).cpu().numpy()
            errors = list(batch.get("error", [""] * len(views)))
            pred[[bool(e) for e in errors]] = np.nan
            bar.update(len(views))
            yield {**batch, "pred": pred, "error": errors}


def _check_readable(batch: dict, on_bad_image: str) -> None:
    if on_bad_image == "error":
        for item, error in zip(batch["id"], batch["error"]):
            if error:
                raise GzooError(f"image {item} cannot be read ({error}); replace or remove it, or pass on_bad_image=skip to leave it out.")


def predict_images(
    net: GalaxyNet,
    images: Sequence[Path | np.ndarray],
    tta: int = 1,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_image: str = "error",
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """(N, 37) predictions for image paths or decoded RGB uint8 arrays (H, W, 3).

    An unreadable image is a GzooError naming it, or with ``on_bad_image="skip"`` a row of NaN.
    """
    names = [str(p) if not isinstance(p, np.ndarray) else f"array {i}" for i, p in enumerate(images)]
    loader = make_loader(image_dataset(net, images, names, tta), batch_size, num_workers)
    rows = []
    for batch in predict_loader(net, loader, tta, precision, progress):
        _check_readable(batch, on_bad_image)
        rows.append(batch["pred"])
    return np.concatenate(rows) if rows else np.empty((0, schema.NUM_ANSWERS))


# ----------------------------------------------------------------------------- files


def list_images(folder: Path) -> list[Path]:
    """The folder's <GalaxyID>.jpg files, sorted by GalaxyID."""
    if not folder.is_dir():
        raise GzooError(f"image folder {folder} not found; images= must be a folder of <GalaxyID>.jpg files.")
    paths = [p for p in folder.iterdir() if p.suffix.lower() == ".jpg" and p.is_file()]
    if not paths:
        raise GzooError(f"{folder} holds no .jpg files; images= must be a folder of <GalaxyID>.jpg files.")
    misnamed = [p for p in paths if not p.stem.isdigit()]
    if misnamed:
        raise GzooError(f"{misnamed[0]} is not named <GalaxyID>.jpg; rename or remove it ({len(misnamed)} such files).")
    return sorted(paths, key=lambda p: int(p.stem))


def predict(o: PredictOptions) -> Path:
    """Write the Kaggle submission CSV for every <GalaxyID>.jpg in ``o.images``; returns ``o.out``."""
    out = o.out
    if out.is_dir():
        raise GzooError(f"out={out} is a folder; give the CSV file to write, e.g. out={out / 'submission.csv'}.")
    if out.exists() and not o.overwrite:
        raise GzooError(f"{out} already exists; pass overwrite=true to replace it, or choose another out=.")
    paths = list_images(o.images)
    net = load_net(o.ckpt, o.device).set_speed(channels_last=True)  # faster convolutions, on CPUs too (about 1.3x for b0)
    device = next(net.parameters()).device
    say(f"{len(paths)} images in {o.images}: {net.timm_name} at {net.image_size} px on {device}, tta={o.tta}")
    loader = make_loader(image_dataset(net, paths, [str(p) for p in paths], o.tta), o.batch_size, o.num_workers)

    out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[Path, str]] = []
    start = time.perf_counter()
    with atomic_open(out, newline="") as f:
        f.write(",".join(schema.HEADER) + "\n")
        for batch in predict_loader(net, loader, o.tta, o.precision, o.progress):
            _check_readable(batch, o.on_bad_image)
            for path, row, error in zip(batch["id"], batch["pred"], batch["error"]):
                if error:
                    skipped.append((path, error))
                else:
                    f.write(f"{int(Path(path).stem)}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    seconds = time.perf_counter() - start

    skipped_list = out.with_name(out.name + ".skipped.txt")
    skipped_list.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    if skipped:
        with atomic_open(skipped_list, newline="") as f:
            f.writelines(f"{path}\t{error}\n" for path, error in skipped)
        shown = ", ".join(Path(p).name for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        say(f"skipped {len(skipped)} unreadable images ({shown}); the list is in {skipped_list}")
    say(f"wrote {len(paths) - len(skipped)} rows to {out} in {seconds:.1f} s: {len(paths) / seconds:.1f} images/s (tta={o.tta})")
    return out


def main(argv: list[str] | None = None) -> int:
    return run_tool(predict, PredictOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
