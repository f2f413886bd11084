"""Shared test helpers: a tiny Kaggle-layout data set, the real config shrunk (debug=tiny), and one
trained run (session-scoped) that the prediction, evaluation, export and gallery tests share."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from gzoo import schema
from gzoo.train import CONF

ROOT = Path(__file__).resolve().parents[1]
# Tiny models on a small shared machine: one thread each is faster than threads that wait on each other.
torch.set_num_threads(1)
SAMPLE = ROOT.parent / "shared" / "data" / "gz2-sample"


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same generators (Python's, numpy's, torch's), so random weights
    and random draws, and so every comparison made with them, are the same on every run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def random_fractions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Tree-consistent vote fractions for n galaxies (each question a Dirichlet draw times its parent)."""
    values = np.zeros((n, schema.NUM_ANSWERS))
    for q, sl in schema.questions_parent_first():
        parent = 1.0 if q.parent is None else values[:, schema.COLUMN_INDEX[q.parent]][:, None]
        values[:, sl] = rng.dirichlet(np.ones(len(q.answers)), size=n) * parent
    return values


def write_kaggle(root: Path, n: int = 40, seed: int = 0, size: int = 424, unknown: float = 0.0) -> Path:
    """A Kaggle-layout folder: labels CSV + images_training_rev1/<id>.jpg (blobs whose brightness follows Class1.1)."""
    rng = np.random.default_rng(seed)
    ids = 100000 + np.arange(n) * 7
    values = random_fractions(n, rng)
    (root / "images_training_rev1").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size] - size / 2
    for gid, v in zip(ids, values):
        blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 12) ** 2)) * (80 + 170 * v[0])
        img = np.clip(blob[..., None] + rng.normal(0, 5, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images_training_rev1" / f"{gid}.jpg", quality=85)
    df = pd.DataFrame(values, columns=schema.COLUMNS).round(6).astype(object)
    if unknown:
        df = df.mask(pd.DataFrame(rng.random(df.shape) < unknown, columns=df.columns), "")
    df.insert(0, schema.ID_COLUMN, ids)
    df.to_csv(root / "training_solutions_rev1.csv", index=False)
    return root


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    return write_kaggle(tmp_path / "gz2")


def compose_train(*overrides: str, hydra_config: bool = False):
    """The real train.yaml composed with Hydra (with Hydra's own node when ``hydra_config``)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_config)


def one_error_line(err: str) -> str:
    """The one line a user's mistake prints on stderr (no traceback, nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[gzoo] error: ") and "Traceback" not in err, err
    return lines[0]


def make_cfg(tmp_path: Path, data_root: Path, *overrides: str):
    """The real train.yaml composed with Hydra, shrunk to a tiny CPU run (debug=tiny) writing under tmp_path."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=["debug=tiny", f"paths.output_root={tmp_path / 'outputs'}", f"data.root={data_root}", *overrides],
        )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> dict:
    """One tiny training run, shared: 40 galaxies with 20 % unknown cells, a held-out test part, the tree head.

    Returns its metrics (metrics.json) plus "ckpt" (best.ckpt), "data" (the Kaggle folder) and "run_dir".
    Tests must not write into the run folder except under a tmp_path of their own (eval out=..., export out=...).
    """
    from gzoo.train import train

    tmp = tmp_path_factory.mktemp("trained")
    data = write_kaggle(tmp / "gz2", n=40, unknown=0.2)
    metrics = train(make_cfg(tmp, data, "data.missing_labels=mask", "data.test_fraction=0.2", "model.head=tree"))
    ckpt = Path(metrics["best_checkpoint"])
    return {**metrics, "ckpt": ckpt, "data": data, "run_dir": ckpt.parent.parent}
