"""gzoo.tools.learning_curve: the same run on nested training subsets, the same validation galaxies, a table and a picture."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from gzoo.data import GalaxyZooDataModule
from gzoo.tools import learning_curve as lc
from tests.conftest import write_kaggle


def test_the_power_law_is_recovered_from_exact_points():
    n = np.array([250.0, 500, 1000, 1600])
    b, c = lc.power_law(n, 0.4 * n**-0.15)
    assert b == pytest.approx(0.4, rel=1e-9) and c == pytest.approx(0.15, rel=1e-9)


def test_finished_sizes_are_read_not_trained_again_and_the_table_and_picture_are_written(tmp_path, monkeypatch):
    o = lc.LearningCurveOptions(sizes=[500, 250], out=tmp_path / "curve")
    for size, score in ((250, 0.15), (500, 0.14)):
        run = lc.runs_of(o, size) / "lite0" / "finetune"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"val/rmse": score, "val/rmse_baseline": 0.18, "epochs": 40, "val/rmse_tta8": score - 0.002}))
    monkeypatch.setattr(lc.subprocess, "run", lambda *a, **k: pytest.fail("a finished size was trained again"))
    table = lc.run(o, ["model=lite0"])
    assert table["train_galaxies"].tolist() == [250, 500] and table["val_rmse"].tolist() == [0.15, 0.14]
    assert pd.read_csv(tmp_path / "curve/learning_curve.csv")["val_rmse_tta8"].tolist() == pytest.approx([0.148, 0.138])
    assert (tmp_path / "curve/learning_curve.png").stat().st_size > 10_000


@pytest.mark.slow
def test_two_sizes_train_on_nested_galaxies_and_are_scored_on_the_same_validation_set(tmp_path):
    data = write_kaggle(tmp_path / "gz2", n=40)
    out = tmp_path / "curve"
    args = ["sizes=[10,30]", f"out={out}", "--", "debug=tiny", f"data.root={data}", "data.val_fraction=0.25"]
    done = subprocess.run([sys.executable, "-m", "gzoo.tools.learning_curve", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out / "learning_curve.csv")
    assert table["train_galaxies"].tolist() == [10, 30] and table["val_rmse"].notna().all()
    modules = {}
    for size in (10, 30):
        cfg = OmegaConf.load(next((out / "runs" / f"curve_{size}").glob("*/*/config.yaml")))
        assert cfg.data.train_limit == size
        modules[size] = GalaxyZooDataModule.from_config(cfg.data, progress=False)
        modules[size].setup()
    small, large = modules[10], modules[30]
    assert np.array_equal(small.ids("val"), large.ids("val")) and len(small.ids("val")) == 10
    assert len(small.ids("train")) == 10 and set(small.ids("train")) < set(large.ids("train"))
    again = subprocess.run([sys.executable, "-m", "gzoo.tools.learning_curve", *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "done before" in again.stderr + again.stdout


def test_a_size_stopped_midway_goes_on_from_its_last_checkpoint_or_starts_again(tmp_path, monkeypatch):
    o = lc.LearningCurveOptions(sizes=[250, 500, 1000], out=tmp_path / "curve")
    for size in (250, 500):  # both stopped before their metrics.json; only 250 had saved a checkpoint
        run = lc.runs_of(o, size) / "lite0" / "finetune"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("name: x\n")
    (lc.runs_of(o, 250) / "lite0/finetune/checkpoints/last.ckpt").write_bytes(b"weights")
    commands = {}

    def fake_train(command, **kwargs):  # records the command and finishes the run as gzoo.train would
        size = int(next(a for a in command if a.startswith("data.train_limit=")).partition("=")[2])
        commands[size] = command
        run = lc.runs_of(o, size) / "lite0" / "finetune"
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.json").write_text(json.dumps({"val/rmse": 0.15, "val/rmse_baseline": 0.18, "epochs": 3}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(lc.subprocess, "run", fake_train)
    lc.run(o, ["model=lite0"])
    assert commands[250][-1] == "resume=true" and commands[500][-1] == "overwrite=true"
    assert not any(a in ("resume=true", "overwrite=true") for a in commands[1000])  # a size not started starts plainly
