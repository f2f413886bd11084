"""A synthetic data set folder in the Kaggle layout: labels, images, and the parameters last.

The folder holds training_solutions_rev1.csv, images_training_rev1/ and images_test_rev1/ as
Kaggle's does, plus test_solutions_rev1.csv (the test truth) and synth.json (the parameters;
written last, so its presence means the folder is complete). Galaxies 0 .. n_train-1 are the
training set, the next n_test the test set; GalaxyID is FIRST_ID + index.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gzoo.errors import GzooError
from gzoo.log import say
from gzoo.synth.features import FIRST_ID
from gzoo.synth.renderer import jpeg_bytes, render
from gzoo.synth.volunteers import _labels, _table

#: Bump when the renderer or the vote model changes, so old folders no longer match.
VERSION = 1

TRAIN_CSV = "training_solutions_rev1.csv"
TEST_CSV = "test_solutions_rev1.csv"
TRAIN_DIR = "images_training_rev1"
TEST_DIR = "images_test_rev1"
PARAMS = "synth.json"
PARTIAL = "synth.partial.json"  # our own marker while a run is in progress


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_params(out: Path) -> dict | None:
    """The parameters of the complete synthetic data set in ``out`` (its synth.json), or None."""
    return _read_json(Path(out) / PARAMS)


def _make(job: tuple[int, int, str]) -> np.ndarray:
    """Label row of one galaxy; writes its image (runs in worker processes too)."""
    seed, index, folder = job
    g, row = _labels(seed, index)
    (Path(folder) / f"{FIRST_ID + index}.jpg").write_bytes(jpeg_bytes(render(g, seed, index)))
    return row


def _write_csv(path: Path, first: int, rows: list[np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _table(first, rows).to_csv(tmp, index=False, float_format="%.8g")  # 8 digits keep the tree sums within 1e-7
    os.replace(tmp, path)


def _run(jobs: list[tuple[int, int, str]], workers: int):
    """Label rows of the jobs, in order; images written on the way."""
    if workers == 1:
        yield from map(_make, jobs)
    else:  # spawn: safe even when the caller holds CUDA or threads
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap(_make, jobs, chunksize=16)


def _prepare(out: Path, params: dict, overwrite: bool) -> None:
    """Empty ``out`` of earlier outputs, refusing to replace a different data set unless ``overwrite``."""
    present = [name for name in (TRAIN_CSV, TEST_CSV, TRAIN_DIR, TEST_DIR, PARAMS, PARTIAL) if (out / name).exists()]
    unfinished_same = PARAMS not in present and _read_json(out / PARTIAL) == params
    if present and not overwrite and not unfinished_same:
        held = read_params(out)
        what = "synthetic, " + ", ".join(f"{k}={v}" for k, v in held.items()) if held else ", ".join(present)
        raise GzooError(f"{out} already holds a different data set ({what}); pass overwrite=true to replace it.")
    for name in present:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()


def generate(out: Path, n_train: int, n_test: int, seed: int = 0, progress: bool = True, overwrite: bool = False, workers: int = 1) -> Path:
    """Write a synthetic data set in the Kaggle layout to ``out`` and return ``out``.

    Galaxies 0 .. n_train-1 are the training set, the next n_test the test set; GalaxyID is
    100000 + index. If ``out`` already holds this very data set (same synth.json), nothing
    is written; a different one is only replaced with ``overwrite=True``. ``workers`` > 1
    renders in that many processes (same files).
    """
    out = Path(out)
    checks = (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0), ("workers", workers, 1))
    for name, value, low in checks:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise GzooError(f"{name} must be an integer >= {low}, got {value!r}.")
    params = {"n_train": int(n_train), "n_test": int(n_test), "seed": int(seed), "version": VERSION}
    if read_params(out) == params:
        if progress:
            say(f"{out} already holds this synthetic data set; nothing to do.")
        return out
    if out.exists() and not out.is_dir():
        raise GzooError(f"{out} is a file, not a folder.")
    _prepare(out, params, overwrite)
    for folder in (TRAIN_DIR, TEST_DIR):
        (out / folder).mkdir(parents=True)
    (out / PARTIAL).write_text(json.dumps(params))

    jobs = [(params["seed"], i, str(out / (TRAIN_DIR if i < n_train else TEST_DIR))) for i in range(n_train + n_test)]
    rows = []
    with tqdm(total=len(jobs), desc="synthetic galaxies", unit="img", disable=not progress) as bar:
        for row in _run(jobs, workers):
            rows.append(row)
            bar.update()

    _write_csv(out / TRAIN_CSV, 0, rows[:n_train])
    _write_csv(out / TEST_CSV, n_train, rows[n_train:])
    tmp = out / (PARAMS + ".tmp")
    tmp.write_text(json.dumps(params, indent=1) + "\n")
    os.replace(tmp, out / PARAMS)  # last: its presence means the folder is complete
    (out / PARTIAL).unlink()
    return out
