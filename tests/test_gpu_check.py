"""gzoo.tools.gpu_check: the CPU dry run of every step (what CI runs where there is no GPU), in process."""

from __future__ import annotations

import json

import pytest
import torch

from gzoo.tools import gpu_check

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the check measures for real (make gpu-check)")


@NO_GPU
@pytest.mark.parametrize(
    "args, rows",
    [
        pytest.param(["models=[b0]", "compile=[false]"], [("b0", False)], id="b0"),
        pytest.param([], [(m, c) for m in ("b0", "b4") for c in (False, True)], id="all, as make gpu-check", marks=pytest.mark.slow),
    ],
)
def test_the_dry_run_makes_every_figure_and_both_phases_checkpoints(tmp_path, capsys, args, rows):
    assert gpu_check.main([f"out={tmp_path}", "workers=0", *args]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"].startswith("cpu")
    assert [(r["model"], r["compile"]) for r in report["rows"]] == [(f"{m} (dry: test_efficientnet@32)", c) for m, c in rows]
    for row in report["rows"]:
        for path in gpu_check.PATHS:
            assert row[f"{path}_img_s"] > 0 and 0 <= row[f"{path}_wait"] <= 1
        assert row["alone_img_s"] > 0 and row["predict_tta1_img_s"] > 0 and row["predict_tta8_img_s"] > 0
    for phase in ("finetune", "fulltune"):
        ckpts = tmp_path / "runs/gpu_check/tiny" / phase / "checkpoints"
        assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
        assert report["training_run"][phase]["steps"] >= 1
    survey = report["training_run"]["survey"]  # the sharded prediction path, with the fulltune checkpoint
    assert survey["rows"] == 16 and survey["parts"] == 4 and survey["shards"] == 2 and 0 < survey["x_alone"]
    table = capsys.readouterr().out
    assert "cache (x, wait)" in table and "training run, fulltune" in table and "sharded prediction (gzoo.survey" in table


def test_asking_for_the_gpu_without_one_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([f"out={tmp_path}", "dry_run=false"]) == 2
    err = capsys.readouterr().err
    assert "no GPU is visible" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "gpu_check.json").exists()
