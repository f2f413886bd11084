"""gzoo.evaluate: the numbers against numpy and against training's own metrics, the report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gzoo import evaluate as ev
from gzoo import schema
from gzoo.data import load_rgb, split_ids
from gzoo.errors import GzooError
from gzoo.module import GalaxyZooModule
from gzoo.train import train
from gzoo.transforms import eval_transform
from tests.conftest import make_cfg, write_kaggle

QUIET = {"progress": False, "num_workers": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """One epoch on 40 galaxies with 20 % unknown cells and a held-out test part: (checkpoint, metrics)."""
    tmp = tmp_path_factory.mktemp("run")
    data = write_kaggle(tmp / "gz2", n=40, unknown=0.2)
    metrics = train(make_cfg(tmp, data, "data.missing_labels=mask", "data.test_fraction=0.2"))
    return Path(metrics["best_checkpoint"]), metrics


def reference(ckpt: Path, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions, labels and training means for one part, computed plainly (no gzoo.evaluate)."""
    d = OmegaConf.load(ckpt.parent.parent / "config.yaml").data
    table = pd.read_csv(Path(d.root) / d.labels_csv).set_index(schema.ID_COLUMN)  # empty cells -> NaN
    parts = split_ids(table.index.to_numpy(), d.val_fraction, d.test_fraction, d.split_seed)
    true = table.loc[parts[part], schema.COLUMNS].to_numpy()
    mean = table.loc[parts["train"], schema.COLUMNS].mean().to_numpy()
    module = GalaxyZooModule.from_checkpoint(ckpt).eval()
    hp = module.hparams
    tf = eval_transform(hp.image_size, hp.mean, hp.std, hp.crop_fraction)
    images = torch.stack([tf(image=load_rgb(Path(d.root) / d.images_dir / f"{i}.jpg"))["image"] for i in parts[part]])
    with torch.no_grad():
        pred = module(images).double().numpy()
    return pred, true, mean


def numpy_rmse(pred: np.ndarray, true: np.ndarray) -> float:
    known = ~np.isnan(true)
    return float(np.sqrt(((pred - true)[known] ** 2).mean()))


def test_rmse_table_matches_a_plain_computation():
    rng = np.random.default_rng(0)
    true = rng.random((50, 37))
    true[rng.random(true.shape) < 0.3] = np.nan
    true[:, schema.COLUMN_INDEX["Class9.2"]] = np.nan  # a column with no known cell
    pred = rng.random((50, 37))
    table = ev.rmse_table(pred, true)
    assert table["rmse"] == pytest.approx(numpy_rmse(pred, true), rel=1e-12)
    for q, sl in schema.question_slices():
        assert table["per_question"][f"Q{q.number}"] == pytest.approx(numpy_rmse(pred[:, sl], true[:, sl]), rel=1e-12)
    for i, column in enumerate(schema.COLUMNS):
        if column != "Class9.2":
            assert table["per_answer"][column] == pytest.approx(numpy_rmse(pred[:, i], true[:, i]), rel=1e-12)
    assert np.isnan(table["per_answer"]["Class9.2"])
    # One RMSE over all cells, not a mean of the per-answer RMSEs.
    assert table["rmse"] != pytest.approx(np.nanmean(list(table["per_answer"].values())), rel=1e-3)


def test_validation_report_matches_numpy_and_training(run, tmp_path):
    ckpt, metrics = run
    report = ev.evaluate(ckpt, tta=[1, 8], out=tmp_path / "eval", **QUIET)
    pred, true, mean = reference(ckpt, "val")
    model = report["model"]["1"]

    assert report["data"]["split"] == "val" and report["data"]["galaxies"] == len(true)
    assert report["data"]["known_cells"] == int((~np.isnan(true)).sum())
    assert model["rmse"] == pytest.approx(numpy_rmse(pred, true), rel=1e-5)
    for q, sl in schema.question_slices():
        expected = numpy_rmse(pred[:, sl], true[:, sl]) if (~np.isnan(true[:, sl])).any() else None
        got = model["per_question"][f"Q{q.number}"]
        assert np.isnan(got) if expected is None else got == pytest.approx(expected, rel=1e-5)
    assert report["baseline"]["rmse"] == pytest.approx(numpy_rmse(np.broadcast_to(mean, true.shape), true), rel=1e-9)
    assert model["tree_inconsistency"]["max_abs"] == pytest.approx(schema.tree_inconsistency(pred)["max_abs"], rel=1e-5)
    # The same numbers as training's own validation metric and baseline.
    assert model["rmse"] == pytest.approx(metrics["val/rmse"], rel=1e-5)
    assert report["baseline"]["rmse"] == pytest.approx(metrics["val/rmse_baseline"], rel=1e-9)
    assert report["model"]["8"]["rmse"] != model["rmse"]  # the views change the predictions

    out = tmp_path / "eval"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    md = (out / "report.md").read_text()
    assert f"| model, tta=1 | {model['rmse']:.5f} |" in md and "![RMSE per answer](rmse_per_answer.png)" in md
    for png in ("rmse_per_answer.png", "pred_vs_true.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert events.Scalars("eval/rmse/tta1")[0].value == pytest.approx(model["rmse"], rel=1e-6)
    assert {"eval/rmse_per_answer", "eval/pred_vs_true"} <= set(events.Tags()["images"])


def test_held_out_split_and_default_folder(run):
    ckpt, metrics = run
    report = ev.evaluate(ckpt, split="test", tta=[1], **QUIET)
    assert report["model"]["1"]["rmse"] == pytest.approx(metrics["test/rmse"], rel=1e-5)
    assert report["baseline"]["rmse"] == pytest.approx(metrics["test/rmse_baseline"], rel=1e-9)
    assert (ckpt.parent.parent / "eval" / "test" / "report.json").is_file()  # default out: <run_dir>/eval/<split>
    with pytest.raises(GzooError, match="already holds an evaluation; pass overwrite=true"):
        ev.evaluate(ckpt, split="test", tta=[1], **QUIET)
    ev.evaluate(ckpt, split="test", tta=[1], overwrite=True, **QUIET)


def test_another_labelled_folder_is_scored_whole(run, tmp_path):
    ckpt, _ = run
    other = write_kaggle(tmp_path / "other", n=9, seed=5)
    report = ev.evaluate(ckpt, tta=[1], data_root=str(other), out=tmp_path / "eval", **QUIET)
    assert report["data"]["split"] == "all" and report["data"]["galaxies"] == 9
    labels = pd.read_csv(other / "training_solutions_rev1.csv")[schema.COLUMNS].to_numpy()
    _, _, mean = reference(ckpt, "val")  # the baseline still comes from the run's training part
    assert report["baseline"]["rmse"] == pytest.approx(numpy_rmse(np.broadcast_to(mean, labels.shape), labels), rel=1e-9)


def test_mistakes_are_named(run, tmp_path, capsys):
    ckpt, _ = run
    with pytest.raises(GzooError, match="run config .*config.yaml not found"):
        ev.evaluate(tmp_path / "elsewhere" / "checkpoints" / "best.ckpt", **QUIET)
    assert ev.main([f"ckpt={ckpt}", "split=training"]) == 2
    assert "split='training': expected one of train, val, test, all" in capsys.readouterr().err
