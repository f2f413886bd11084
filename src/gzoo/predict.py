"""Kaggle submission from a checkpoint and a folder of JPEGs.

    python -m gzoo.predict ckpt=PATH images=DIR out=FILE.csv [tta=1] [batch_size=32]
        [num_workers=2] [overwrite=false] [on_bad_image=error|skip] [device=auto] [progress=true]

The checkpoint carries all that is needed: the network and its evaluation transform
(image size, mean, std, crop fraction); no config is read. The CSV has the Kaggle header
(GalaxyID, Class1.1 ... Class11.6) and one row per <GalaxyID>.jpg, sorted by GalaxyID.

tta=N averages N views of each galaxy. tta=8: the four right-angle rotations with and
without a mirror flip, made with torch.rot90/flip on the cropped uint8 tensor, so an
image and its rotated or flipped copy get the same prediction. Any other N: the whole
image rotated by N evenly spaced angles (0, 360/N, ...) before the crop.

The CSV is written to a hidden temporary file beside ``out`` and renamed only when
complete, so a partial file never appears under ``out``. An unreadable image is an error
naming it; with on_bad_image=skip it is left out, listed at the end and in FILE.csv.skipped.txt.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gzoo import cli, schema
from gzoo.data import BAD_IMAGE_MODES, load_rgb
from gzoo.errors import GzooError
from gzoo.files import atomic_open
from gzoo.module import GalaxyZooModule
from gzoo.train import say
from gzoo.transforms import eval_transform



# ----------------------------------------------------------------------------- model


def resolve_device(device: str) -> torch.device:
    """``auto`` = the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GzooError(f"device={device!r} is not a torch device; use auto, cpu or cuda.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GzooError(f"device={device} was asked for, but no GPU is visible; use device=auto or device=cpu.")
    return dev


def load_module(ckpt: str | Path, device: str = "auto") -> GalaxyZooModule:
    """A trained module in eval mode on the chosen device; never downloads weights."""
    dev = resolve_device(device)
    try:
        module = GalaxyZooModule.from_checkpoint(ckpt, map_location=dev)
    except GzooError:
        raise
    except Exception as e:  # not a checkpoint, or not one of ours
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GzooError(f"checkpoint {ckpt} cannot be loaded as a gzoo model ({reason}).") from None
    return module.eval().to(memory_format=torch.channels_last)  # faster convolutions, on CPUs too (about 1.3x for b0)


# ----------------------------------------------------------------------------- views


def tta_angles(tta: int) -> list[float]:
    """Angles (degrees) by which the whole image is rotated before the crop; tta=8 uses dihedral_views instead."""
    return [0.0] if tta in (1, 8) else [360.0 * i / tta for i in range(tta)]


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """Rotate an (H, W, 3) image counter-clockwise; right angles exactly, others with reflected edges."""
    if angle % 90 == 0:
        return np.ascontiguousarray(np.rot90(image, int(angle // 90)))
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def dihedral_views(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 8, C, H, W): the four right-angle rotations of x and of its mirror image."""
    return torch.stack([torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)], dim=1)


class _Views(Dataset):
    """Item i: the views of image i (V, 3, S, S) and why it could not be read ("" if it could)."""

    def __init__(self, images: Sequence[Path | np.ndarray], transform, angles: list[float], size: int):
        self.images, self.transform, self.angles, self.size = images, transform, angles, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        item = self.images[i]
        try:
            image = item if isinstance(item, np.ndarray) else load_rgb(item)
        except Exception as e:  # decoders raise many kinds for bad files
            return torch.zeros(len(self.angles), 3, self.size, self.size, dtype=torch.uint8), str(e) or type(e).__name__
        return torch.stack([self.transform(image=rotate(image, a))["image"] for a in self.angles]), ""


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict_batches(
    module: GalaxyZooModule,
    images: Sequence[Path | np.ndarray],
    tta: int = 1,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = False,
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Predictions batch by batch, in order: a (B, 37) array (NaN rows for unreadable
    images) and, per image, why it could not be read ("" if it could)."""
    if tta < 1:
        raise GzooError(f"tta must be a number of views >= 1, got {tta}.")
    hp = module.hparams
    transform = eval_transform(hp.image_size, hp.mean, hp.std, hp.crop_fraction, normalise=False)  # the module normalises
    dataset = _Views(images, transform, tta_angles(tta), hp.image_size)
    device = module.device
    on_gpu = device.type == "cuda"
    bf16 = on_gpu and torch.cuda.is_bf16_supported()  # half the memory traffic; a negligible change to the fractions
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=on_gpu)
    with tqdm(total=len(dataset), desc=f"predicting (tta={tta})", unit="img", disable=not progress) as bar:
        for views, errors in loader:
            x = views.to(device, non_blocking=True).flatten(0, 1)  # (B*V, 3, S, S), image-major
            if tta == 8:
                x = dihedral_views(x).flatten(0, 1)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                pred = module(x)
            pred = pred.double().view(len(views), -1, schema.NUM_ANSWERS).mean(dim=1).cpu().numpy()
            pred[[bool(e) for e in errors]] = np.nan
            bar.update(len(views))
            yield pred, list(errors)


def _check_readable(items: Sequence, errors: list[str], on_bad_image: str) -> None:
    if on_bad_image == "error":
        for item, error in zip(items, errors):
            if error:
                raise GzooError(f"image {item} cannot be read ({error}); replace or remove it, or pass on_bad_image=skip to leave it out.")


def predict_images(
    module: GalaxyZooModule,
    images: Sequence[Path | np.ndarray],
    tta: int = 1,
    batch_size: int = 32,
    num_workers: int = 0,
    on_bad_image: str = "error",
    progress: bool = False,
) -> np.ndarray:
    """(N, 37) predictions for JPEG paths or decoded RGB uint8 arrays (H, W, 3).

    An unreadable image is a GzooError, or with ``on_bad_image="skip"`` a row of NaN.
    """
    rows, done = [], 0
    for pred, errors in predict_batches(module, images, tta, batch_size, num_workers, progress):
        _check_readable(images[done : done + len(pred)], errors, on_bad_image)
        rows.append(pred)
        done += len(pred)
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


def predict_folder(
    ckpt: str | Path,
    images: str | Path,
    out: str | Path,
    tta: int = 1,
    batch_size: int = 32,
    num_workers: int = 2,
    overwrite: bool = False,
    on_bad_image: str = "error",
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Write the Kaggle submission CSV for every <GalaxyID>.jpg in ``images``; returns ``out``."""
    images, out = Path(images), Path(out)
    if on_bad_image not in BAD_IMAGE_MODES:
        raise GzooError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_MODES)}, got {on_bad_image!r}.")
    if out.is_dir():
        raise GzooError(f"out={out} is a folder; give the CSV file to write, e.g. out={out / 'submission.csv'}.")
    if out.exists() and not overwrite:
        raise GzooError(f"{out} already exists; pass overwrite=true to replace it, or choose another out=.")
    paths = list_images(images)
    module = load_module(ckpt, device)
    say(f"{len(paths)} images in {images}: {module.hparams.timm_name} at {module.hparams.image_size} px on {module.device}, tta={tta}")

    out.parent.mkdir(parents=True, exist_ok=True)
    skipped: list[tuple[Path, str]] = []
    start = time.perf_counter()
    with atomic_open(out, newline="") as f:
        f.write(",".join(schema.HEADER) + "\n")
        done = 0
        for pred, errors in predict_batches(module, paths, tta, batch_size, num_workers, progress):
            batch = paths[done : done + len(pred)]
            done += len(pred)
            _check_readable(batch, errors, on_bad_image)
            for path, row, error in zip(batch, pred, errors):
                if error:
                    skipped.append((path, error))
                else:
                    f.write(f"{int(path.stem)}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    seconds = time.perf_counter() - start

    skipped_list = out.with_name(out.name + ".skipped.txt")
    skipped_list.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    if skipped:
        with atomic_open(skipped_list, newline="") as f:
            f.writelines(f"{path}\t{error}\n" for path, error in skipped)
        shown = ", ".join(p.name for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        say(f"skipped {len(skipped)} unreadable images ({shown}); the list is in {skipped_list}")
    say(f"wrote {len(paths) - len(skipped)} rows to {out} in {seconds:.1f} s: {len(paths) / seconds:.1f} images/s (tta={tta})")
    return out


OPTIONS: cli.Options = {
    "ckpt": (cli.path, cli.REQUIRED),
    "images": (cli.path, cli.REQUIRED),
    "out": (cli.path, cli.REQUIRED),
    "tta": (cli.integer(1), 1),
    "batch_size": (cli.integer(1), 32),
    "num_workers": (cli.integer(0), 2),
    "overwrite": (cli.boolean, False),
    "on_bad_image": (cli.choice(*BAD_IMAGE_MODES), "error"),
    "device": (str, "auto"),
    "progress": (cli.boolean, True),
}


def main(argv: list[str] | None = None) -> int:
    return cli.run(predict_folder, OPTIONS, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
