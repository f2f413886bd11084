"""gzoo.gallery (top-k galleries from a predictions CSV) and the ValidationGallery callback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gzoo import gallery as gl
from gzoo import schema
from gzoo.errors import GzooError
from gzoo.train import train
from tests.conftest import make_cfg, write_kaggle


@pytest.fixture
def predictions(tmp_path) -> tuple[Path, Path]:
    """A predictions CSV for 20 galaxies (Class4.1 rises with the row) and their images."""
    data = write_kaggle(tmp_path / "gz2", n=20)
    ids = pd.read_csv(data / "training_solutions_rev1.csv")[schema.ID_COLUMN]
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.random((20, schema.NUM_ANSWERS)), columns=schema.COLUMNS)
    table["Class4.1"] = np.linspace(0.1, 0.9, 20)
    table.insert(0, schema.ID_COLUMN, ids)
    csv = tmp_path / "sub.csv"
    table.to_csv(csv, index=False)
    return csv, data / "images_training_rev1"


def test_top_k_are_the_highest_values(predictions):
    csv, _ = predictions
    table = pd.read_csv(csv)
    top = gl.top_k(table, "Class4.1", 5)
    assert top[schema.ID_COLUMN].tolist() == table[schema.ID_COLUMN].tolist()[::-1][:5]


def test_gallery_png_has_one_tile_per_galaxy(predictions):
    csv, images = predictions
    one_row = gl.gallery(csv, images, "Class4.1", k=4)
    assert one_row == csv.with_name("sub_gallery_Class4.1.png")  # default: beside the predictions
    two_rows = gl.gallery(csv, images, "Class4.1", k=16, out=csv.with_name("g16.png"))
    seed = gl.gallery(csv, images, "seed", k=4)
    (w1, h1), (w2, h2), (w3, h3) = (Image.open(p).size for p in (one_row, two_rows, seed))
    assert w2 == 2 * w1  # 4 columns, then 8 (at most 8 per row)
    assert h2 > 1.5 * h1  # a second row
    assert (w3, h3) == (w1, len(gl.SEED_ANSWERS) * h1)  # one row of 4 per answer of the seed report
    assert np.asarray(Image.open(seed).convert("L")).std() > 10  # pictures, not a blank page


def test_mistakes_are_named(predictions, capsys):
    csv, images = predictions
    with pytest.raises(GzooError, match="answer='Class4.9' is not one of the 37 answers"):
        gl.gallery(csv, images, "Class4.9")
    with pytest.raises(GzooError, match=r"image .*nowhere.* cannot be read"):
        gl.gallery(csv, csv.parent / "nowhere", "Class4.1")
    assert gl.main([f"predictions={csv}", f"images={images}", "answer=spiral"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[gzoo] error: answer='spiral'") and err.count("\n") == 1


def test_validation_gallery_goes_to_tensorboard(tmp_path):
    cfg = make_cfg(
        tmp_path,
        write_kaggle(tmp_path / "gz2", n=24),
        "trainer.max_epochs=2",
        "callbacks.val_gallery.n=4",  # in the default callbacks
    )
    train(cfg)
    (events_dir,) = (Path(cfg.run_dir) / "tensorboard").glob("version_*")
    images = EventAccumulator(str(events_dir)).Reload().Images("val/gallery")
    assert len(images) == 2  # one per validation epoch (not the sanity check)
    assert images[0].width > images[0].height  # 4 galaxies side by side
