"""An uncertainty for every answer (gzoo.uncertainty): the spreads, the calibrated intervals and their coverage, the
columns gzoo.predict and the Python API write, the checkpoint's calibration and gzoo.evaluate's calibration section.

The model is the shared tiny run's (tests/conftest.py: trained_run); the maths is checked on hand-made numbers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import gzoo
from gzoo import evaluate as ev
from gzoo import schema, survey
from gzoo.errors import GzooError
from gzoo.survey import SurveyOptions
from gzoo.uncertainty import (
    bounds,
    conformal_quantile,
    coverage,
    cross_fitted,
    fit_scales,
    gaussian_coverage,
    spread,
    stated_scales,
)

# ----------------------------------------------------------------------------- the maths


def test_coverage_counts_known_cells_only_overall_per_question_and_per_answer():
    true = np.full((4, 37), np.nan)
    true[:, 0] = [0.1, 0.5, 0.9, 0.3]  # Class1.1: inside, inside, outside, inside
    true[:2, 3] = [0.2, 0.8]  # Class2.1: inside, outside
    lo, hi = np.full((4, 37), 0.2), np.full((4, 37), 0.6)
    lo[0, 0] = 0.0  # [0, 0.6] holds 0.1
    table = coverage(true, lo, hi)
    assert table["overall"] == pytest.approx(4 / 6)  # every known cell once: 3 of 4 and 1 of 2
    assert table["per_answer"]["Class1.1"] == pytest.approx(3 / 4) and table["per_answer"]["Class2.1"] == pytest.approx(1 / 2)
    assert table["per_question"]["Q1"] == pytest.approx(3 / 4) and table["per_question"]["Q2"] == pytest.approx(1 / 2)
    assert math.isnan(table["per_answer"]["Class3.1"]) and math.isnan(table["per_question"]["Q3"])  # nothing known: no share
    assert table["known"]["Class1.1"] == 4 and table["known"]["Class3.1"] == 0


def test_conformal_scales_bounds_and_the_pooled_scale_of_a_thin_answer():
    assert conformal_quantile(np.arange(1.0, 10.0), 0.9) == 9.0  # the ceil(10 * 0.9) = 9th smallest of 1..9
    assert conformal_quantile(np.array([3.0, np.nan, 1.0, 2.0]), 0.5) == 2.0  # NaN (unknown) left out; ceil(4 * 0.5) = 2nd
    assert conformal_quantile(np.array([1.0, 2.0]), 0.95) == 2.0  # past n: the largest
    n = 40
    true, mean, std = np.full((n, 2), np.nan), np.full((n, 2), 0.5), np.full((n, 2), 0.1 / 1.1)  # std + floor (a tenth of it) = 0.1
    true[:, 0] = 0.5 + 0.1 * np.linspace(-1, 1, n)  # normalised errors |t - m| / 0.1 spread evenly in [0, 1]
    true[:3, 1] = [0.5, 0.5, 0.5]  # three known values: too few for a scale of its own
    fit = fit_scales(true, mean, std, [90])
    scales = fit["scale"]
    assert fit["pooled"] == [False, True] and fit["known"] == [n, 3]
    np.testing.assert_allclose(fit["floor"], [0.01 / 1.1, 0.01 / 1.1])  # FLOOR times the median spread
    s0 = np.sort(np.abs(true[:, 0] - 0.5) / 0.1)
    assert scales["90"][0] == pytest.approx(s0[math.ceil(41 * 0.9) - 1])
    everyone = np.sort(np.concatenate([s0, [0, 0, 0]]))
    assert scales["90"][1] == pytest.approx(everyone[math.ceil(44 * 0.9) - 1])  # all known values together
    lo, hi = bounds(np.array([0.05, 0.5]), np.array([0.09, 0.09]), [2.0, 2.0], [0.01, 0.01])  # half-width 2 x (0.09 + 0.01)
    np.testing.assert_allclose(lo, [0.0, 0.3])  # clipped to [0, 1]
    np.testing.assert_allclose(hi, [0.25, 0.7])


def test_cross_fitted_intervals_are_honest_and_a_constant_width_misses_the_hard_galaxies():
    rng = np.random.default_rng(1)
    n = 4000
    std = rng.uniform(0.02, 0.2, (n, 3))
    mean = np.full((n, 3), 0.5)
    true = mean + std * rng.normal(size=(n, 3))
    fitted = cross_fitted(true, mean, std, [68, 90], columns=["a", "b", "c"])
    assert fitted["90"]["overall"] == pytest.approx(0.9, abs=0.015) and fitted["68"]["overall"] == pytest.approx(0.68, abs=0.02)
    assert fitted["90"]["widest_quarter"] == pytest.approx(0.9, abs=0.03)  # as honest on the hard quarter
    constant = cross_fitted(true, mean, np.zeros_like(std), [90], columns=["a", "b", "c"], reference=std)
    assert constant["90"]["overall"] == pytest.approx(0.9, abs=0.015)  # honest on average ...
    assert constant["90"]["widest_quarter"] < 0.8  # ... but not where the galaxies are hard
    raw = gaussian_coverage(true, mean, std, [68, 90])
    assert raw["68"] == pytest.approx(0.6827, abs=0.02) and raw["90"] == pytest.approx(0.9, abs=0.02)  # Gaussian errors


def test_the_spreads_of_views_dropout_and_both():
    views = torch.tensor([[[0.1, 0.2], [0.3, 0.2]]], dtype=torch.float64)  # (B=1, V=2, L=2)
    draws = torch.tensor([[[[0.0, 0.2], [0.2, 0.2]]], [[[0.2, 0.2], [0.4, 0.2]]]], dtype=torch.float64)  # (K=2, B, V, L)
    np.testing.assert_allclose(spread(views, None, "views"), [[0.1, 0.0]])
    np.testing.assert_allclose(spread(views, draws, "dropout"), [[0.1, 0.0]])  # the views' means 0.1 and 0.3
    np.testing.assert_allclose(spread(views, draws, "both"), [[np.std([0.0, 0.2, 0.2, 0.4]), 0.0]])


# ----------------------------------------------------------------------------- prediction


@pytest.fixture(scope="module")
def model(trained_run) -> gzoo.Model:
    return gzoo.load(trained_run["ckpt"], device="cpu")


def smooth_and_noise(size: int = 64) -> list[np.ndarray]:
    """A smooth galaxy-like blob, and an image of uniform noise: plainly harder."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 10) ** 2))[..., None] * np.array([200.0, 180.0, 150.0])
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3))
    return [np.clip(blob + 10, 0, 255).astype(np.uint8), noise.astype(np.uint8)]


def test_the_checkpoint_holds_the_calibration_made_at_the_end_of_training(trained_run, model):
    record = torch.load(trained_run["ckpt"], map_location="cpu", weights_only=False)["gzoo_calibration"]
    tta8 = {("dropout", 8), ("views", 8), ("both", 8)} if "val/rmse_tta8" in trained_run else set()  # with tta8_at_end
    assert {(f["method"], f["tta"]) for f in record["fits"]} == {("dropout", 1), *tta8}
    assert record["split"] == "val" and record["galaxies"] > 0 and record["columns"] == schema.COLUMNS
    fit, why = stated_scales(model.net.calibration, "dropout", 1)  # loaded with the network
    assert why == "" and fit is not None and all(np.all(v > 0) for v in fit["scale"].values()) and np.all(fit["floor"] > 0)
    assert np.all(fit["scale"]["95"] >= fit["scale"]["68"])  # a wider level, a wider interval
    assert stated_scales(model.net.calibration, "views", 4)[0] is None


def test_predict_writes_non_negative_spreads_and_intervals_around_the_same_answers(model):
    images = smooth_and_noise()
    plain = model.predict(images, num_workers=0, progress=False)
    table = model.predict(images, uncertainty="dropout", intervals=[68, 90], num_workers=0, progress=False)
    pd.testing.assert_frame_equal(table[plain.columns], plain)  # the answers do not change
    extra = [c for c in table.columns if c not in plain.columns]
    assert extra == [f"{c}_{k}" for c in schema.COLUMNS for k in ("std", "lo68", "hi68", "lo90", "hi90")]
    std = table[[f"{c}_std" for c in schema.COLUMNS]].to_numpy()
    assert np.isfinite(std).all() and (std >= 0).all() and (std > 0).any()
    for c in schema.COLUMNS:
        assert (0 <= table[f"{c}_lo90"]).all() and (table[f"{c}_lo90"] <= table[f"{c}_lo68"]).all()
        assert (table[f"{c}_lo68"] <= table[c]).all() and (table[c] <= table[f"{c}_hi68"]).all()
        assert (table[f"{c}_hi68"] <= table[f"{c}_hi90"]).all() and (table[f"{c}_hi90"] <= 1).all()
    for method in ("views", "both"):  # the TTA views' spread
        views = model.predict(images, uncertainty=method, tta=8, intervals=[], num_workers=0, progress=False)
        assert (views[[f"{c}_std" for c in schema.COLUMNS]].to_numpy() >= 0).all() and "Class1.1_lo90" not in views


def test_the_interval_widens_for_a_noise_image_and_a_constant_width_does_not(model):
    table = model.predict(smooth_and_noise(), uncertainty="dropout", num_workers=0, progress=False)
    width = np.array([(table[f"{c}_hi90"] - table[f"{c}_lo90"]).to_numpy() for c in schema.COLUMNS]).mean(axis=0)
    smooth, noise = width
    assert noise > 1.2 * smooth  # the plainly harder input gets a wider interval
    # Negative control: the same calibration with no spread of its own (a constant width per answer) cannot widen.
    fit, _ = stated_scales(model.net.calibration, "dropout", 1)
    pred = table[schema.COLUMNS].to_numpy()
    lo, hi = bounds(np.full_like(pred, 0.5), np.zeros_like(pred), fit["scale"]["90"], fit["floor"])  # centred, so no clipping
    constant = (hi - lo).mean(axis=1)
    assert not constant[1] > 1.2 * constant[0]


def test_predict_writes_spreads_without_intervals_for_a_checkpoint_without_calibration(model, tmp_path, capsys):
    calibration, model.net.calibration = model.net.calibration, None
    try:
        table = model.predict(smooth_and_noise(), uncertainty="dropout", num_workers=0, progress=False)
    finally:
        model.net.calibration = calibration
    assert "Class1.1_std" in table and "Class1.1_lo90" not in table
    assert "no intervals: the checkpoint holds no calibration" in capsys.readouterr().err


def test_the_tool_writes_the_spread_columns_and_records_them_in_the_manifest(trained_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for k, image in enumerate(smooth_and_noise()):
        Image.fromarray(image).save(folder / f"{k + 1}.png")
    out = tmp_path / "pred.csv"
    o = SurveyOptions(ckpt=trained_run["ckpt"], images=folder, out=str(out), uncertainty="dropout", samples=8, num_workers=0, progress=False, device="cpu")
    survey.run(o)
    table = pd.read_csv(out)
    assert (table[[f"{c}_std" for c in schema.COLUMNS]] >= 0).all().all() and "Class11.6_hi90" in table
    o.samples, o.out = 9, f"{tmp_path / 'parts'}/"
    survey.run(o)
    made_by = json.loads((tmp_path / "parts" / survey.MANIFEST).read_text())["made_by"]
    assert made_by["uncertainty"] == "dropout" and made_by["samples"] == 9 and made_by["intervals"] == [90]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"uncertainty": "views"}, "uncertainty=views is the spread of the TTA views, so it needs tta >= 2"),
        ({"uncertainty": "dropout", "outputs": "embeddings"}, "pass outputs=predictions or outputs=both"),
        ({"uncertainty": "dropout", "intervals": [33]}, r"intervals=\[33\] must be a list of levels"),
        ({"uncertainty": "spread"}, "uncertainty=spread is not one of none, dropout, views, both"),
    ],
)
def test_mistakes_are_one_sentence(model, options, said):
    with pytest.raises(GzooError, match=said):
        model.predict(smooth_and_noise()[:1], num_workers=0, progress=False, **options)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_reports_the_coverage_of_each_spread_draws_it_and_writes_the_spread_when_asked(trained_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    monkeypatch.setattr(ev, "plot_rmse_per_answer", lambda *a: Figure(figsize=(1, 1)))  # tested in test_evaluate; not drawn here, for speed
    monkeypatch.setattr(ev, "plot_pred_vs_true", lambda *a: Figure(figsize=(1, 1)))
    out = tmp_path / "eval"
    common = {"ckpt": trained_run["ckpt"], "out": out, "progress": False, "num_workers": 0, "device": "cpu"}
    report = ev.evaluate(ev.EvaluateOptions(**common, tta=[1, 8], predictions=tmp_path / "val.csv", predictions_spread=True))
    rows = report["calibration"]["rows"]
    assert [(r["spread"], r["tta"]) for r in rows] == [
        ("dropout", 1),
        ("constant width", 1),
        ("dropout", 8),
        ("views", 8),
        ("both", 8),
        ("constant width", 8),
    ]
    for r in rows:
        for level in ("68", "90"):
            table = r["cross_fitted"][level]
            assert 0 <= table["overall"] <= 1 and table["width"] > 0 and set(table["per_question"]) == {f"Q{q.number}" for q in schema.QUESTIONS}
        calibrated = stated_scales(torch.load(trained_run["ckpt"], weights_only=False)["gzoo_calibration"], r["spread"], r["tta"])[0] is not None
        assert (r["stated"] is not None) == (r["spread"] != "constant width" and calibrated)  # stated: the checkpoint's own intervals
    # Stated on the very galaxies it was fitted on: at least the level's share (conformal quantiles, in-sample).
    assert rows[0]["stated"]["90"]["overall"] >= 0.9 - 1e-9
    assert report["calibration"]["calibrated_on"]["split"] == "val"
    md = (out / "report.md").read_text()
    assert "## Uncertainty: how often each answer's interval holds the true fraction" in md
    assert f"| dropout | 1 | {rows[0]['mean_std']:.4f} |" in md and "![coverage of the intervals](calibration.png)" in md
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["calibration"]["levels"] == [68, 90]
    table = pd.read_csv(tmp_path / "val.csv")  # predictions_spread=true: the first spread (dropout) at the largest tta
    assert list(table.columns) == [*schema.HEADER, *(f"{c}_std" for c in schema.COLUMNS)]
    assert (table[[f"{c}_std" for c in schema.COLUMNS]] >= 0).all().all()

    ev.evaluate(ev.EvaluateOptions(**common, tta=[1], overwrite=True, uncertainty=[]))
    assert not (out / "calibration.png").exists() and "## Uncertainty" not in (out / "report.md").read_text()  # [] for none
