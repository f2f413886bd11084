"""gzoo.evaluate: the numbers against numpy and against training's own metrics, the report files,
and the validation part being exactly training's, also when unreadable images were left out.

Most tests score the shared tiny run (tests/conftest.py: trained_run) and write their reports
under their own tmp_path, never into its run folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gzoo import evaluate as ev
from gzoo import schema
from gzoo.data import GalaxyZooDataModule, split_ids
from gzoo.errors import GzooError
from gzoo.evaluate import EvaluateOptions, OtherData
from gzoo.images import load_image
from gzoo.metrics import rmse_table
from gzoo.module import load_net
from gzoo.train import train
from gzoo.transforms import eval_transform
from tests.conftest import make_cfg, write_kaggle


def options(ckpt: Path, **kwargs) -> EvaluateOptions:
    """The tool's options as the command line would make them: quiet, no workers, on the CPU (as training ran)."""
    return EvaluateOptions(ckpt=Path(ckpt), **{"progress": False, "num_workers": 0, "device": "cpu", **kwargs})


@pytest.fixture(scope="module")
def run(trained_run) -> tuple[Path, dict]:
    """The shared run (40 galaxies, 20 % unknown cells, a held-out test part, tree head): (checkpoint, metrics)."""
    return trained_run["ckpt"], trained_run


def reference(ckpt: Path, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions, labels and training means for one part, computed plainly (no gzoo.evaluate)."""
    d = OmegaConf.load(ckpt.parent.parent / "config.yaml").data
    table = pd.read_csv(Path(d.root) / d.labels_csv).set_index(schema.ID_COLUMN)  # empty cells -> NaN
    parts = split_ids(table.index.to_numpy(), d.val_fraction, d.test_fraction, d.split_seed)
    true = table.loc[parts[part], schema.COLUMNS].to_numpy()
    mean = table.loc[parts["train"], schema.COLUMNS].mean().to_numpy()
    net = load_net(ckpt, "cpu")
    tf = eval_transform(net.image_size, net.crop_fraction)
    images = torch.stack([tf(image=load_image(Path(d.root) / d.images_dir / f"{i}.jpg"))["image"] for i in parts[part]])
    with torch.no_grad():
        pred = net(images).double().numpy()
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
    table = rmse_table(pred, true)
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
    report = ev.evaluate(options(ckpt, tta=[1, 8], out=tmp_path / "eval"))
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
    # The tree head obeys the decision tree by construction, so what is left is float32 rounding (about 6e-8):
    # compared with an absolute tolerance, not a relative one on rounding noise.
    assert model["tree_inconsistency"]["max_abs"] == pytest.approx(schema.tree_inconsistency(pred)["max_abs"], rel=1e-5, abs=1e-6)
    assert model["tree_inconsistency"]["max_abs"] < 1e-6
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


def test_held_out_split_and_default_folder(run, tmp_path):
    ckpt, metrics = run
    # A copy of the run's layout (config.yaml beside checkpoints/), so the default out lands under tmp_path,
    # not in the shared run folder.
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, copy / "checkpoints" / ckpt.name)
    shutil.copy(ckpt.parent.parent / "config.yaml", copy / "config.yaml")
    ckpt = copy / "checkpoints" / ckpt.name

    report = ev.evaluate(options(ckpt, split="test", tta=[1]))
    assert report["model"]["1"]["rmse"] == pytest.approx(metrics["test/rmse"], rel=1e-5)
    assert report["baseline"]["rmse"] == pytest.approx(metrics["test/rmse_baseline"], rel=1e-9)
    assert (ckpt.parent.parent / "eval" / "test" / "report.json").is_file()  # default out: <run_dir>/eval/<split>
    with pytest.raises(GzooError, match="already holds an evaluation; pass overwrite=true"):
        ev.evaluate(options(ckpt, split="test", tta=[1]))
    ev.evaluate(options(ckpt, split="test", tta=[1], overwrite=True))


def test_another_labelled_folder_is_scored_whole(run, tmp_path):
    ckpt, _ = run
    other = write_kaggle(tmp_path / "other", n=9, seed=5)
    report = ev.evaluate(options(ckpt, tta=[1], data=OtherData(root=other), out=tmp_path / "eval"))
    assert report["data"]["split"] == "all" and report["data"]["galaxies"] == 9
    labels = pd.read_csv(other / "training_solutions_rev1.csv")[schema.COLUMNS].to_numpy()
    _, _, mean = reference(ckpt, "val")  # the baseline still comes from the run's training part
    assert report["baseline"]["rmse"] == pytest.approx(numpy_rmse(np.broadcast_to(mean, labels.shape), labels), rel=1e-9)


def test_mistakes_are_named(run, tmp_path, capsys):
    ckpt, _ = run
    with pytest.raises(GzooError, match="run config .*config.yaml not found"):
        ev.evaluate(options(tmp_path / "elsewhere" / "checkpoints" / "best.ckpt"))
    assert ev.main([f"ckpt={ckpt}", "split=training"]) == 2
    assert "split=training is not one of null, train, val, test, all" in capsys.readouterr().err


def test_validation_part_is_trainings_own_when_unreadable_images_are_skipped(tmp_path):
    """The point of rebuilding the data module from the run's config: with data.on_bad_image=skip the
    split is made after the unreadable images are left out, and evaluate must score that very part."""
    data = write_kaggle(tmp_path / "gz2", n=40)
    cfg = make_cfg(tmp_path, data, "data.on_bad_image=skip", "data.val_fraction=0.3")
    all_ids = pd.read_csv(data / cfg.data.labels_csv)[schema.ID_COLUMN].to_numpy()
    unfiltered_val = split_ids(all_ids, 0.3, 0.0, cfg.data.split_seed)["val"]
    # Break three files that a split of the full list would validate on.
    bad = [int(i) for i in unfiltered_val[:3]]
    images = data / cfg.data.images_dir
    (images / f"{bad[0]}.jpg").write_bytes((images / f"{bad[0]}.jpg").read_bytes()[:300])  # truncated download
    (images / f"{bad[1]}.jpg").write_bytes(b"")  # empty file
    (images / f"{bad[2]}.jpg").write_text("not an image at all\n")  # text

    metrics = train(cfg)
    ckpt = Path(metrics["best_checkpoint"])
    skipped = pd.read_csv(Path(cfg.run_dir) / "skipped_images.csv")["path"]
    assert sorted(int(Path(p).stem) for p in skipped) == sorted(bad)

    report = ev.evaluate(options(ckpt, tta=[1], out=tmp_path / "eval"))

    # Training's validation ids, built independently of evaluate from the run's own config ...
    dm = GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed, progress=False)
    dm.setup()
    trained_val = [int(i) for i in dm.ids("val")]
    # ... which are the split of the readable galaxies alone.
    readable = np.setdiff1d(all_ids, bad)
    assert trained_val == [int(i) for i in split_ids(readable, 0.3, 0.0, cfg.data.split_seed)["val"]]

    assert report["ids"] == trained_val
    assert report["data"]["split"] == "val" and report["data"]["galaxies"] == len(trained_val)
    assert not set(bad) & set(report["ids"])
    assert report["model"]["1"]["rmse"] == pytest.approx(metrics["val/rmse"], abs=1e-6)

    # Negative control: splitting the full id list (without leaving the bad images out) gives another
    # validation part, one that even holds the unreadable files, so the check above can fail.
    assert set(bad) <= {int(i) for i in unfiltered_val}
    assert {int(i) for i in unfiltered_val} != set(report["ids"])


def test_predictions_table_as_csv_or_parquet_by_its_extension(run, tmp_path):
    ckpt, _ = run
    pred, _, _ = reference(ckpt, "val")
    ev.evaluate(options(ckpt, tta=[1], out=tmp_path / "eval", predictions=tmp_path / "val.parquet"))
    table = pd.read_parquet(tmp_path / "val.parquet")
    assert list(table.columns) == schema.HEADER and table[schema.ID_COLUMN].dtype == np.int64
    np.testing.assert_allclose(table[schema.COLUMNS].to_numpy(), pred, atol=1e-6)
    ev.evaluate(options(ckpt, tta=[1], out=tmp_path / "eval", overwrite=True, predictions=tmp_path / "val.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "val.csv"), table, atol=6e-7)
    with pytest.raises(GzooError, match=r"predictions=.*val\.xlsx: the extension chooses the format and must be \.csv or \.parquet"):
        ev.evaluate(options(ckpt, tta=[1], out=tmp_path / "eval2", predictions=tmp_path / "val.xlsx"))
    assert not (tmp_path / "eval2").exists()  # refused before anything was scored or written
