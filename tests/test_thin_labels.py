"""Answers that rest on too few labels (gzoo.label_counts): recorded in every checkpoint, said at the end of training,
named or written as NaN by gzoo.predict (and the Python API), marked by gzoo.gallery and gzoo.evaluate; a checkpoint
made before the counts were recorded predicts as it did.

One tiny run of this module's own: 150 galaxies whose Q3 answers are known for 5 of them and Q9's for 60, the rest
for all, so with the real threshold (100 known training values) Q3 and Q9 are thin and the others are not.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

import gzoo
from gzoo import evaluate as ev
from gzoo import gallery as gl
from gzoo import label_counts, schema, survey
from gzoo.data import split_ids
from gzoo.errors import GzooError
from gzoo.evaluate import EvaluateOptions
from gzoo.survey import SurveyOptions
from gzoo.train import train
from tests.conftest import make_cfg, write_kaggle

Q3 = ["Class3.1", "Class3.2"]
Q9 = ["Class9.1", "Class9.2", "Class9.3"]
THIN = Q3 + Q9


class Said(logging.Handler):
    """The [gzoo] lines said while it is attached (a module-scoped fixture has no capsys)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def thin_run(tmp_path_factory) -> dict:
    """A tiny run on labels whose Q3 answers are known for 5 galaxies and Q9's for 60; the lines it said."""
    tmp = tmp_path_factory.mktemp("thin")
    data = write_kaggle(tmp / "gz2", n=150, size=96)
    csv = data / "training_solutions_rev1.csv"
    table = pd.read_csv(csv).astype(object)
    table.loc[5:, Q3] = ""  # known for the first 5 rows only
    table.loc[60:, Q9] = ""
    table.to_csv(csv, index=False)
    said = Said()
    logging.getLogger("gzoo").addHandler(said)
    try:
        metrics = train(make_cfg(tmp, data, "data.missing_labels=mask"))
    finally:
        logging.getLogger("gzoo").removeHandler(said)
    ckpt = Path(metrics["best_checkpoint"])
    return {"ckpt": ckpt, "data": data, "run_dir": ckpt.parent.parent, "said": said.lines, "tmp": tmp}


def expected_counts(run: dict) -> dict[str, int]:
    """Each column's known values among the run's training galaxies, counted plainly from the CSV (not by gzoo)."""
    d = OmegaConf.load(run["run_dir"] / "config.yaml").data
    table = pd.read_csv(Path(d.root) / d.labels_csv).set_index(schema.ID_COLUMN)  # empty cells -> NaN
    train_ids = split_ids(table.index.to_numpy(), d.val_fraction, d.test_fraction, d.split_seed)["train"]
    return {c: int(table.loc[train_ids, c].notna().sum()) for c in schema.COLUMNS}


@pytest.fixture(scope="module")
def images(thin_run, tmp_path_factory) -> Path:
    """12 of the run's images in a folder of their own (GalaxyIDs), for predict and the gallery."""
    folder = tmp_path_factory.mktemp("images")
    for path in sorted((thin_run["data"] / "images_training_rev1").iterdir())[:12]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def uncounted(thin_run, tmp_path_factory) -> Path:
    """The run's best.ckpt as a checkpoint made before gzoo recorded the counts (the key removed), in a run layout."""
    run = tmp_path_factory.mktemp("old") / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(thin_run["ckpt"], map_location="cpu", weights_only=False)
    del ckpt[label_counts.KEY]
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    shutil.copy(thin_run["run_dir"] / "config.yaml", run / "config.yaml")
    return run / "checkpoints" / "best.ckpt"


def options(ckpt: Path, images: Path, out, **kwargs) -> SurveyOptions:
    return SurveyOptions(ckpt=Path(ckpt), images=images, out=str(out), **{"progress": False, "num_workers": 0, "device": "cpu", **kwargs})


# ----------------------------------------------------------------------------- training


def test_training_records_the_counts_in_every_checkpoint_and_says_the_thin_answers(thin_run):
    expected = expected_counts(thin_run)
    assert expected["Class3.1"] == expected["Class3.2"] and 0 < expected["Class3.1"] <= 5
    assert 5 < expected["Class9.1"] <= 60 and expected["Class1.1"] >= 100  # Q3 and Q9 thin, the rest not
    for name in ("best.ckpt", "last.ckpt"):
        record = torch.load(thin_run["ckpt"].parent / name, map_location="cpu", weights_only=False)[label_counts.KEY]
        assert record["columns"] == schema.COLUMNS
        assert record["known"] == [expected[c] for c in schema.COLUMNS]
        assert record["train"] == expected["Class1.1"]  # every galaxy knows Q1
    assert label_counts.thin_columns(label_counts.of_checkpoint(thin_run["ckpt"])) == {c: expected[c] for c in THIN}
    line = next(line for line in thin_run["said"] if "rest on fewer than" in line)
    n3, n9 = expected["Class3.1"], expected["Class9.1"]
    assert line == (
        f"5 of 37 answers rest on fewer than 100 known training values (Class3.1, Class3.2: {n3} each; Class9.1, Class9.2, Class9.3: {n9} each); "
        "python -m gzoo.predict thin_labels=nan writes them as NaN"
    )


def test_a_resumed_run_records_the_counts_even_from_a_checkpoint_without_them(thin_run, tmp_path):
    shutil.copytree(thin_run["tmp"] / "outputs", tmp_path / "outputs")
    last = next((tmp_path / "outputs").rglob("last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    del ckpt[label_counts.KEY]  # as a run started before gzoo recorded the counts left it
    torch.save(ckpt, last)
    train(make_cfg(tmp_path, thin_run["data"], "data.missing_labels=mask", "resume=true", "trainer.max_epochs=2"))
    record = torch.load(last, map_location="cpu", weights_only=False)
    assert record["epoch"] == 1 and record[label_counts.KEY]["known"] == [expected_counts(thin_run)[c] for c in schema.COLUMNS]


def test_the_sentence_and_the_record_reader():
    counts = label_counts.record(["a", "b", "c"], np.array([[0.1, np.nan, 0.3], [0.2, np.nan, np.nan]]))
    assert counts == {"columns": ["a", "b", "c"], "known": [2, 0, 1], "train": 2}
    assert label_counts.thin_columns(counts, 2) == {"b": 0, "c": 1}
    assert label_counts.thin_columns(None) == {} and label_counts.thin_columns(counts, 0) == {}
    assert label_counts.sentence({"b": 0, "c": 1}, 3, 2) == "2 of 3 answers rest on fewer than 2 known training values (b: 0; c: 1)"
    assert label_counts.sentence({"a": 5, "b": 7}, 2, 100) == "all 2 answers rest on fewer than 100 known training values (5 to 7 each)"
    assert label_counts.sentence({"b": 4}, 3, 100) == "1 of 3 answers rests on fewer than 100 known training values (b: 4)"
    assert label_counts.of_checkpoint({"state_dict": {}}) is None  # made before the counts: unknown
    assert label_counts.of_checkpoint({label_counts.KEY: {"columns": ["a"], "known": [1, 2]}}) is None  # not a record this gzoo reads
    well = [f"Q{q.number}" for q in label_counts.well_labelled_questions(THIN)]
    assert well == ["Q1", "Q2", "Q4", "Q5", "Q6", "Q7", "Q8", "Q10", "Q11"]
    assert "Q10" not in [f"Q{q.number}" for q in label_counts.well_labelled_questions(["Class4.1"])]  # a thin parent too


# ----------------------------------------------------------------------------- predict


def test_predict_thin_labels_nan_writes_nan_exactly_in_the_thin_answers(thin_run, images, tmp_path, capsys):
    out = survey.run(options(thin_run["ckpt"], images, f"{tmp_path / 'parts'}/", thin_labels="nan", uncertainty="dropout"))
    table = pd.read_parquet(out)
    assert len(table) == 12
    assert table[THIN].isna().all().all() and table[[f"{c}_std" for c in THIN]].isna().all().all()
    others = [c for c in schema.COLUMNS if c not in THIN]
    assert np.isfinite(table[others].to_numpy()).all() and np.isfinite(table[[f"{c}_std" for c in others]].to_numpy()).all()
    expected = {c: n for c, n in expected_counts(thin_run).items() if c in THIN}
    said = capsys.readouterr().out
    assert "5 of 37 answers rest on fewer than 100 known training values (Class3.1, Class3.2: " in said and ": written as NaN (thin_labels=nan)" in said
    # Recorded beside the numbers: the manifest and every part's Parquet metadata.
    record = {"min_labels": 100, "thin_labels": "nan", "thin": expected}
    assert json.loads((out / survey.MANIFEST).read_text())[label_counts.OUTPUT_KEY] == record
    assert json.loads(pq.read_schema(out / survey.part_name(0)).metadata[label_counts.OUTPUT_KEY.encode()]) == record
    # The numbers depend on thin_labels: a rerun into the same parts with thin_labels=say is refused, not mixed.
    with pytest.raises(GzooError, match="holds parts made another way"):
        survey.run(options(thin_run["ckpt"], images, f"{out}/"))
    # A CSV (a Kaggle submission's layout) writes them as empty cells, read back as NaN.
    csv = pd.read_csv(survey.run(options(thin_run["ckpt"], images, tmp_path / "sub.csv", thin_labels="nan")))
    assert list(csv.columns) == schema.HEADER and csv[THIN].isna().all().all() and csv[others].notna().all().all()
    # The Python API does the same, in memory.
    frame = gzoo.load(thin_run["ckpt"], "cpu").predict(images, thin_labels="nan", progress=False, num_workers=0)
    assert frame[THIN].isna().all().all() and np.isfinite(frame[others].to_numpy()).all()
    # min_labels moves the line: with 5 only Q3 is thin.
    low = gzoo.load(thin_run["ckpt"], "cpu").predict(images, thin_labels="nan", min_labels=expected["Class9.1"], progress=False, num_workers=0)
    assert low[Q3].isna().all().all() and low[Q9].notna().all().all()


def test_predict_thin_labels_say_writes_numbers_and_names_them(thin_run, images, tmp_path, capsys):
    out = survey.run(options(thin_run["ckpt"], images, tmp_path / "said.parquet"))
    table = pd.read_parquet(out)
    assert np.isfinite(table[schema.COLUMNS].to_numpy()).all()
    said = capsys.readouterr().out
    assert "5 of 37 answers rest on fewer than 100 known training values" in said
    assert "their numbers are mostly the network's guesses; thin_labels=nan writes them as NaN" in said
    # The merged Parquet keeps the record, for gzoo.gallery.
    assert json.loads(pq.read_schema(out).metadata[label_counts.OUTPUT_KEY.encode()])["thin_labels"] == "say"
    # Embeddings alone write no answers: nothing to say.
    survey.run(options(thin_run["ckpt"], images, tmp_path / "emb.parquet", outputs="embeddings"))
    assert "rest on fewer than" not in capsys.readouterr().out


def test_a_checkpoint_without_counts_predicts_as_before(thin_run, uncounted, images, tmp_path, capsys):
    counted = pd.read_parquet(survey.run(options(thin_run["ckpt"], images, tmp_path / "counted.parquet")))
    capsys.readouterr()
    out = survey.run(options(uncounted, images, tmp_path / "old.parquet", thin_labels="nan"))
    assert "rest on fewer than" not in capsys.readouterr().out  # counts unknown: nothing said, nothing NaN
    old = pd.read_parquet(out)
    pd.testing.assert_frame_equal(old, counted)
    assert label_counts.OUTPUT_KEY.encode() not in (pq.read_schema(out).metadata or {})
    assert gl.thin_answers(out) is None and gl.thin_answers(out, uncounted) is None


# ----------------------------------------------------------------------------- gallery and evaluate


def test_gallery_marks_the_rows_of_thin_answers_and_leaves_out_empty_ones(thin_run, images, tmp_path, capsys):
    said_parquet = survey.run(options(thin_run["ckpt"], images, tmp_path / "said.parquet"))
    n3 = expected_counts(thin_run)["Class3.1"]
    assert gl.thin_answers(said_parquet) == ({c: n for c, n in expected_counts(thin_run).items() if c in THIN}, 100)
    capsys.readouterr()
    png = gl.gallery(said_parquet, images, "seed", k=4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"1 of 11 answers rests on fewer than 100 known training values (Class3.1: {n3}): its row is marked" in capsys.readouterr().out
    assert gl.row_title("Class3.1", 4, 12, n3) == f"Class3.1 bar through the centre? yes: top 4 of 12  (only {n3} training labels)"
    assert gl.row_title("Class1.1", 4, 12) == "Class1.1 smooth, or features/disk, or star/artifact? smooth: top 4 of 12"
    # A CSV carries no record: ckpt= names the checkpoint whose counts mark the rows.
    csv = survey.run(options(thin_run["ckpt"], images, tmp_path / "said.csv"))
    assert gl.thin_answers(csv) is None and gl.thin_answers(csv, thin_run["ckpt"])[0]["Class3.1"] == n3
    capsys.readouterr()
    assert gl.main([f"predictions={csv}", f"images={images}", "answer=Class3.1", f"ckpt={thin_run['ckpt']}", "k=4"]) == 0
    assert f"Class3.1 rests on fewer than 100 known training values ({n3}): its row is marked" in capsys.readouterr().out
    # Written as NaN: nothing to rank, so the row is left out and said; an answer with nothing at all is one sentence.
    nan_csv = survey.run(options(thin_run["ckpt"], images, tmp_path / "nan.csv", thin_labels="nan"))
    capsys.readouterr()
    gl.gallery(nan_csv, images, "seed", k=4)
    assert "left out Class3.1: the predictions hold no values for it (thin_labels=nan, too few training labels)" in capsys.readouterr().out
    with pytest.raises(GzooError, match="holds no values for Class3.1 "):
        gl.gallery(nan_csv, images, "Class3.1", k=4)


def test_evaluate_names_thin_answers_and_scores_the_tree_over_well_labelled_questions(thin_run, uncounted, tmp_path, capsys):
    expected = {c: n for c, n in expected_counts(thin_run).items() if c in THIN}
    base = {"progress": False, "num_workers": 0, "device": "cpu", "tta": [1], "uncertainty": []}
    report = ev.evaluate(EvaluateOptions(ckpt=thin_run["ckpt"], out=tmp_path / "eval", **base))
    counts = report["label_counts"]
    assert counts["thin"] == expected and counts["counted_from"] == "checkpoint" and counts["min_labels"] == 100
    well = ["Q1", "Q2", "Q4", "Q5", "Q6", "Q7", "Q8", "Q10", "Q11"]
    assert counts["well_labelled_questions"] == well
    model = report["model"]["1"]
    assert list(model["tree_inconsistency_well_labelled"]["per_question"]) == well
    per_q = model["tree_inconsistency"]["per_question"]
    assert model["tree_inconsistency_well_labelled"]["max_abs"] == pytest.approx(max(per_q[q] for q in well))
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "## Answers that rest on few labels" in md and f"Class3.1 ({expected['Class3.1']})" in md and "(Q1, Q2, Q4, Q5, Q6, Q7, Q8, Q10, Q11)" in md
    assert "| predictions | RMSE | tree inconsistency, max / mean abs | same, well-labelled questions | images/s |" in md
    assert "5 of 37 answers rest on fewer than 100 known training values" in capsys.readouterr().out
    # A checkpoint made before the counts were recorded: counted from the run's training split, the same numbers.
    older = ev.evaluate(EvaluateOptions(ckpt=uncounted, out=tmp_path / "old", **base))
    assert older["label_counts"]["thin"] == expected and older["label_counts"]["counted_from"] == "training split"
