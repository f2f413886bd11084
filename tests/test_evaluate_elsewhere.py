"""gzoo.evaluate on data other than the run's own (another folder, a catalogue), how many of the galaxies
scored the run trained on, its outputs checked before any work, and gzoo.gallery reading gzoo.predict's tables.

Two tiny runs trained on one catalogue (own labels, and the 37 gz2 answers) are shared by this module;
the Kaggle-layout run is the suite's shared one (tests/conftest.py: trained_run). Every report is
written under the test's own tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from gzoo import evaluate as ev
from gzoo import gallery as gl
from gzoo import schema
from gzoo.data import GalaxyZooDataModule
from gzoo.errors import GzooError
from gzoo.evaluate import EvaluateOptions, OtherData
from gzoo.predict import PredictOptions, predict
from gzoo.train import train
from tests.conftest import make_cfg, write_kaggle

OWN = ["smooth", "featured"]


def options(ckpt: Path, **kwargs) -> EvaluateOptions:
    return EvaluateOptions(ckpt=Path(ckpt), **{"progress": False, "num_workers": 0, "device": "cpu", "tta": [1], **kwargs})


def catalogue_of(folder: Path, names: str | None = None) -> pd.DataFrame:
    """A Kaggle-layout folder as a catalogue: id_str (the GalaxyIDs, or ``names`` + each), file_loc (absolute), the 37 answers and two own labels."""
    table = pd.read_csv(folder / "training_solutions_rev1.csv")
    cat = pd.DataFrame(
        {
            "id_str": [f"{names}{i}" if names else str(i) for i in table[schema.ID_COLUMN]],
            "file_loc": [str(folder / "images_training_rev1" / f"{i}.jpg") for i in table[schema.ID_COLUMN]],
        }
    )
    return pd.concat([cat, table[schema.COLUMNS], table[["Class1.1", "Class1.2"]].set_axis(OWN, axis=1)], axis=1)


def training_part(ckpt: Path) -> list:
    """The run's training ids, from its config, independently of gzoo.evaluate."""
    cfg = OmegaConf.load(Path(ckpt).parent.parent / "config.yaml")
    dm = GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed, progress=False)
    dm.setup()
    return dm.ids("train").tolist()


@pytest.fixture(scope="module")
def catalogue_runs(tmp_path_factory) -> dict:
    """Two tiny runs on one catalogue of 40 galaxies (ids of digits: integers, as Kaggle's): "own" learned [smooth, featured],
    "gz2" the 37 answers; both split alike (the split follows the ids), "train" is their training part."""
    tmp = tmp_path_factory.mktemp("catalogue_runs")
    folder = write_kaggle(tmp / "gz2", n=40, size=96)
    catalogue_of(folder).to_csv(tmp / "galaxies.csv", index=False)
    runs = {"tmp": tmp, "catalog": tmp / "galaxies.csv"}
    for name, labels in (("own", f"[{','.join(OWN)}]"), ("gz2", "gz2")):
        cfg = make_cfg(tmp, folder, "data=catalog", f"data.catalog={tmp / 'galaxies.csv'}", f"data.labels={labels}", f"name={name}", "tta8_at_end=false")
        runs[name] = Path(train(cfg)["best_checkpoint"])
    runs["train"] = training_part(runs["own"])
    assert runs["train"] == training_part(runs["gz2"])
    return runs


@pytest.fixture
def quick_figures(monkeypatch):
    """The report's two figures as blank 1x1-inch PNGs: these tests check which galaxies are scored and what the report says
    of them; drawing the 37 answers' figures (seconds on 2 cores) is tested in tests/test_evaluate.py."""
    from matplotlib.figure import Figure

    for name in ("plot_rmse_per_answer", "plot_pred_vs_true"):
        monkeypatch.setattr(ev, name, lambda *args, **kwargs: Figure(figsize=(1, 1)))


@pytest.fixture
def other(tmp_path) -> Path:
    """Another Kaggle-layout folder: 9 galaxies whose GalaxyIDs are the first 9 of the runs' (write_kaggle numbers them alike), in other files."""
    return write_kaggle(tmp_path / "other", n=9, seed=5, size=96)


# ----------------------------------------------------------------------------- (3) data.root on a catalogue run


def test_another_folder_on_a_catalogue_run_is_that_folder_or_refused(catalogue_runs, other, tmp_path, capsys, quick_figures):
    # A run that learned the 37 answers from its catalogue: data.root= is read in the Kaggle layout, the folder's 9 galaxies.
    report = ev.evaluate(options(catalogue_runs["gz2"], data=OtherData(root=other), out=tmp_path / "gz2"))
    assert report["data"]["galaxies"] == 9 and report["data"]["split"] == "all"
    assert report["ids"] == pd.read_csv(other / "training_solutions_rev1.csv")[schema.ID_COLUMN].tolist()
    assert report["data"]["root"] == str(other) and "catalog" not in report["data"]
    # Its GalaxyIDs are some of the run's, in other files (as gz2-sample's are gz2-2k's): counted by id.
    expected = len(set(report["ids"]) & set(catalogue_runs["train"]))
    assert 0 < expected < 9 and report["data"]["in_training"] == expected

    # A run with its own labels: a Kaggle folder has no such columns, so it is refused in one sentence, before anything is written.
    with pytest.raises(GzooError, match=r"^the run learned its own labels \(smooth, featured\) from catalogue .*galaxies\.csv.*pass data\.catalog="):
        ev.evaluate(options(catalogue_runs["own"], data=OtherData(root=other), out=tmp_path / "own"))
    assert not (tmp_path / "own").exists()
    assert ev.main([f"ckpt={catalogue_runs['own']}", f"data.root={other}", f"out={tmp_path / 'own'}", "progress=false", "num_workers=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[gzoo] error: the run learned its own labels") and err.count("\n") == 1


# ----------------------------------------------------------------------------- (20) data.catalog, reports that fit the labels, galaxies trained on


def test_own_labels_report_has_no_empty_question_table_and_says_none_was_trained_on(catalogue_runs, tmp_path):
    report = ev.evaluate(options(catalogue_runs["own"], out=tmp_path / "eval"))
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## Answers that rest on few labels" in md  # a tiny run: every label known fewer than 100 times, named (it says thin_labels=nan)
    numbers = re.sub(r"## Answers that rest on few labels\n\n.*?\n\n", "", md, flags=re.S)
    assert "nan" not in numbers.lower() and "RMSE per question" not in md and "tree inconsistency" not in md
    assert "tree_inconsistency" not in report["model"]["1"] and report["baseline"]["per_question"] == {}
    assert report["data"]["split"] == "val" and report["data"]["in_training"] == 0  # the validation part, by construction
    assert "| predictions | RMSE | images/s |" in md and f"| model, tta=1 | {report['model']['1']['rmse']:.5f} |" in md
    assert f"| featured | {report['model']['1']['per_answer']['featured']:.4f} |" in md  # a row per own label instead
    assert f"None of the {report['data']['galaxies']} galaxies scored was in the run's training part" in md
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["data"]["in_training"] == 0


def test_a_catalogue_with_the_runs_labels_is_scored_and_its_training_galaxies_counted(catalogue_runs, other, tmp_path, capsys, quick_figures):
    # 10 of the run's galaxies under other names (the same files) and the 9 of another folder, as Parquet, with relative file paths.
    own = pd.read_csv(catalogue_runs["catalog"], dtype={"id_str": str}).iloc[:10]
    new = catalogue_of(other, "new").assign(file_loc=lambda t: [str(Path(p).relative_to(tmp_path)) for p in t["file_loc"]])
    pd.concat([own.assign(id_str="copy" + own["id_str"]), new]).to_parquet(tmp_path / "mixed.parquet")
    expected = len(set(catalogue_runs["train"]) & set(own["id_str"].astype(int)))
    assert 0 < expected < 10  # some of the 10 were validated on, not trained on: the count must tell them apart

    capsys.readouterr()
    report = ev.evaluate(options(catalogue_runs["own"], data=OtherData(catalog=tmp_path / "mixed.parquet"), out=tmp_path / "eval"))
    assert report["data"]["galaxies"] == 19 and report["data"]["split"] == "all"
    assert report["data"]["catalog"] == str(tmp_path / "mixed.parquet")
    assert list(report["baseline"]["per_answer"]) == OWN
    assert report["data"]["in_training"] == expected  # by file: the names are new
    said = f"{expected} of the 19 galaxies scored were in the run's training part"
    assert said in "".join(capsys.readouterr())  # the log line
    assert said in (tmp_path / "eval" / "report.md").read_text()


def test_a_gz2_run_scores_a_catalogue_with_the_class_columns(trained_run, other, tmp_path, quick_figures):
    # Another folder's 9 galaxies and 3 of the run's own files, named, in a catalogue with the 37 Class columns.
    mine = catalogue_of(trained_run["data"], "mine").iloc[:3]
    pd.concat([catalogue_of(other, "g"), mine]).to_csv(tmp_path / "cat.csv", index=False)
    report = ev.evaluate(options(trained_run["ckpt"], data=OtherData(catalog=tmp_path / "cat.csv"), out=tmp_path / "eval"))
    assert report["data"]["galaxies"] == 12 and report["ids"][0] == "g100000"
    expected = len(set(training_part(trained_run["ckpt"])) & {int(i.removeprefix("mine")) for i in mine["id_str"]})
    assert report["data"]["in_training"] == expected
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## RMSE per question" in md and "tree inconsistency" in md  # the 37 answers keep both


# ----------------------------------------------------------------------------- (8) outputs checked before the work


@pytest.fixture
def no_scoring(monkeypatch):
    """Any prediction is a failure of the test: the refusal must come first."""

    def scored(*args, **kwargs):
        raise AssertionError("predictions were computed before the output folder was checked")

    monkeypatch.setattr(ev, "predict_loader", scored)


def test_an_output_under_a_file_is_refused_before_scoring(trained_run, tmp_path, no_scoring):
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    with pytest.raises(GzooError, match=r"^could not write .*notes\.txt/eval: .*notes\.txt is a file, not a folder; choose another out=\.$"):
        ev.evaluate(options(trained_run["ckpt"], out=tmp_path / "notes.txt" / "eval"))
    with pytest.raises(GzooError, match=r"^could not write .*notes\.txt/p\.csv: .*notes\.txt is a file, not a folder; choose another predictions=\.$"):
        ev.evaluate(options(trained_run["ckpt"], out=tmp_path / "eval", predictions=tmp_path / "notes.txt" / "p.csv"))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(GzooError, match=r"^predictions=.*folder\.csv is a folder; give the file to write"):
        ev.evaluate(options(trained_run["ckpt"], out=tmp_path / "eval", predictions=tmp_path / "folder.csv"))
    assert not (tmp_path / "eval").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: permission bits cannot make one")
def test_a_read_only_output_folder_is_refused_before_scoring(trained_run, tmp_path, no_scoring):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(GzooError, match=r"ro is not writable .*; choose another out=\.$"):
        ev.evaluate(options(trained_run["ckpt"], out=tmp_path / "ro" / "eval"))
    with pytest.raises(GzooError, match=r"ro is not writable .*; choose another predictions=\.$"):
        ev.evaluate(options(trained_run["ckpt"], out=tmp_path / "eval", predictions=tmp_path / "ro" / "p.csv"))


# ----------------------------------------------------------------------------- a run config with a relative data path


def test_a_relative_data_root_not_found_is_named_not_guessed(trained_run, other, tmp_path, monkeypatch, quick_figures):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run["ckpt"], run / "checkpoints" / "best.ckpt")
    cfg = OmegaConf.load(trained_run["run_dir"] / "config.yaml")
    cfg.data.root = "gz2"  # as recorded by a run started in the folder holding gz2/
    OmegaConf.save(cfg, run / "config.yaml")
    monkeypatch.chdir(tmp_path)  # which has no gz2/
    ckpt = run / "checkpoints" / "best.ckpt"
    with pytest.raises(GzooError, match=rf"^{run / 'config.yaml'} records data\.root=gz2, a path relative to .*; pass data\.root=<the run's data folder>"):
        ev.evaluate(options(ckpt, out=tmp_path / "eval"))
    with pytest.raises(GzooError, match=r"data\.root=.*other is not the run's data folder"):
        ev.evaluate(options(ckpt, data=OtherData(root=other), out=tmp_path / "eval"))
    report = ev.evaluate(options(ckpt, data=OtherData(root=trained_run["data"]), out=tmp_path / "eval"))
    assert report["data"]["split"] == "val" and report["model"]["1"]["rmse"] == pytest.approx(trained_run["val/rmse"], rel=1e-5)


# ----------------------------------------------------------------------------- (14) gallery reads gzoo.predict's tables


def grey_images(folder: Path, names: list[str], suffixes: list[str]) -> dict[str, int]:
    """Uniform grey images, a different level each (so a tile shows which galaxy it is): {name: level}."""
    folder.mkdir(parents=True)
    levels = {}
    for k, (name, suffix) in enumerate(zip(names, suffixes)):
        levels[name] = 30 + 30 * k
        Image.fromarray(np.full((64, 64, 3), levels[name], np.uint8)).save(folder / f"{name}{suffix}")
    return levels


def tile_levels(png: Path, n: int) -> list[float]:
    """The mean grey level in the middle of each of the first n tiles of a one-answer gallery."""
    sheet = np.asarray(Image.open(png).convert("L"), dtype=float)
    cell_w, cell_h = gl.TILE + gl.GAP, gl.CAPTION + gl.TILE + gl.GAP
    out = []
    for j in range(n):
        x, y = (j % 8) * cell_w + gl.GAP // 2, gl.TITLE + (j // 8) * cell_h + gl.CAPTION
        out.append(sheet[y + 40 : y + gl.TILE - 40, x + 40 : x + gl.TILE - 40].mean())
    return out


@pytest.mark.parametrize("ids", ["names", "integers"])
@pytest.mark.parametrize("fmt", [".parquet", ".csv"])
def test_gallery_reads_predict_tables_and_finds_images_by_id(trained_run, tmp_path, ids, fmt):
    names = ["J123456.78+012345.6", "NGC1300", "0042x", "M51", "UGC2885"] if ids == "names" else ["100008", "100090", "42", "7", "100150"]
    levels = grey_images(tmp_path / "images", names, [".png", ".tif", ".PNG", ".jpeg", ".png"])
    table = tmp_path / f"pred{fmt}"
    predict(PredictOptions(ckpt=trained_run["ckpt"], images=tmp_path / "images", out=table, progress=False, num_workers=0, device="cpu"))
    read = pd.read_parquet(table) if fmt == ".parquet" else pd.read_csv(table, dtype={"id_str": str})
    assert read.columns[0] == ("id_str" if ids == "names" else schema.ID_COLUMN)

    png = gl.gallery(table, tmp_path / "images", "Class1.1", k=5, crop=1.0)
    order = read.assign(key=read.iloc[:, 0].astype(str)).sort_values(["Class1.1", read.columns[0]], ascending=[False, True])["key"]
    np.testing.assert_allclose(tile_levels(png, 5), [levels[str(i)] for i in order], atol=2)  # each tile is its galaxy's image

    (tmp_path / "images" / f"{names[0]}.png").unlink()  # one of the 5 shown
    with pytest.raises(GzooError, match=rf"^image of galaxy {re.escape(names[0])} cannot be read: .*images has no file {re.escape(names[0])}\.jpg\|"):
        gl.gallery(table, tmp_path / "images", "Class1.1", k=5, out=tmp_path / "again.png")
