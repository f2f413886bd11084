"""gzoo.synth: synthetic galaxies in the Kaggle layout, labels from virtual volunteers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gzoo import schema, synth
from gzoo.errors import GzooError
from gzoo.synth.__main__ import SynthOptions
from gzoo.synth.__main__ import main as synth_main
from gzoo.tools.contact_sheet import contact_sheet
from gzoo.tools.contact_sheet import main as contact_sheet_main
from tests.conftest import one_error_line

N_TRAIN, N_TEST, SEED = 8, 4, 7


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "gz2", N_TRAIN, N_TEST, SEED, progress=False)


@pytest.fixture(scope="module")
def labels() -> tuple[list[synth.Galaxy], pd.DataFrame]:
    return synth.sample_labels(3000, seed=0)


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    again = synth.generate(tmp_path / "again", N_TRAIN, N_TEST, SEED, progress=False)
    first, second = files(dataset), files(again)
    assert len(first) == N_TRAIN + N_TEST + 3 and first == second
    other = files(synth.generate(tmp_path / "other", N_TRAIN, N_TEST, SEED + 1, progress=False))
    assert other.keys() == first.keys()
    changed = [name for name in first if name != synth.PARAMS and first[name] != other[name]]
    assert len(changed) == len(first) - 1  # every image and both CSVs differ


def test_worker_processes_write_the_same_files(dataset, tmp_path):
    parallel = synth.generate(tmp_path / "parallel", N_TRAIN, N_TEST, SEED, progress=False, workers=2)
    assert files(parallel) == files(dataset)


def test_kaggle_layout(dataset):
    train = pd.read_csv(dataset / synth.TRAIN_CSV)
    test = pd.read_csv(dataset / synth.TEST_CSV)
    for table, folder, n in ((train, synth.TRAIN_DIR, N_TRAIN), (test, synth.TEST_DIR, N_TEST)):
        assert list(table.columns) == schema.HEADER and len(table) == n
        assert table[schema.ID_COLUMN].dtype == np.int64 and table[schema.ID_COLUMN].is_unique
        assert all(pd.api.types.is_numeric_dtype(table[c]) for c in schema.COLUMNS)
        names = sorted(p.name for p in (dataset / folder).iterdir())
        assert names == sorted(f"{i}.jpg" for i in table[schema.ID_COLUMN])
        for gid in table[schema.ID_COLUMN]:
            with Image.open(dataset / folder / f"{gid}.jpg") as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (424, 424))
    assert not set(train[schema.ID_COLUMN]) & set(test[schema.ID_COLUMN])
    assert json.loads((dataset / synth.PARAMS).read_text()) == {"n_train": N_TRAIN, "n_test": N_TEST, "seed": SEED, "version": synth.VERSION}
    assert not list(dataset.glob("*.tmp")) and not (dataset / synth.PARTIAL).exists()


def test_written_rows_are_tree_consistent_and_match_sample_labels(dataset):
    written = pd.concat([pd.read_csv(dataset / synth.TRAIN_CSV), pd.read_csv(dataset / synth.TEST_CSV)])
    values = written[schema.COLUMNS].to_numpy()
    assert schema.tree_inconsistency(values)["max_abs"] < 1e-6
    assert values.min() >= 0 and values.max() <= 1
    _, sampled = synth.sample_labels(N_TRAIN + N_TEST, seed=SEED)
    assert (sampled[schema.ID_COLUMN].to_numpy() == written[schema.ID_COLUMN].to_numpy()).all()
    np.testing.assert_allclose(sampled[schema.COLUMNS].to_numpy(), values, atol=1e-8)


def test_many_rows_are_tree_consistent(labels):
    values = labels[1][schema.COLUMNS].to_numpy()
    assert schema.tree_inconsistency(values)["max_abs"] < 1e-6
    assert values.min() >= 0 and values.max() <= 1
    np.testing.assert_allclose(values[:, schema.question_slices()[5][1]].sum(axis=1), 1.0)  # Q6 sums to 1


def test_every_answer_wins_its_question_somewhere(labels):
    values = labels[1][schema.COLUMNS].to_numpy()
    dead = []
    for q, sl in schema.question_slices():
        group = values[:, sl]
        winners = group[group.sum(axis=1) > 0].argmax(axis=1)
        dead += [c for i, c in enumerate(q.columns) if not (winners == i).any()]
    assert dead == []


def test_class_mix_is_roughly_like_gz2(labels):
    q1 = labels[1][["Class1.1", "Class1.2", "Class1.3"]].to_numpy().argmax(axis=1)
    smooth, disk, star = np.bincount(q1, minlength=3) / len(q1)
    assert 0.3 < smooth < 0.55 and 0.4 < disk < 0.65 and 0.01 < star < 0.06


def test_votes_follow_the_true_features(labels):
    galaxies, table = labels
    kind = np.array([g.kind for g in galaxies])
    edge_on = np.array([g.edge_on for g in galaxies])
    odd = np.array([g.odd >= 0 for g in galaxies])
    assert table["Class1.3"][kind == "star"].mean() > 0.5 > 0.1 > table["Class1.3"][kind != "star"].mean()
    assert table["Class1.1"][kind == "smooth"].mean() > 0.6 > table["Class1.1"][kind == "disk"].mean()
    assert table["Class2.1"][edge_on].mean() > 0.4 > 0.1 > table["Class2.1"][~edge_on].mean()
    assert table["Class6.1"][odd].mean() > 0.4 > 0.15 > table["Class6.1"][~odd].mean()
    # fainter, smaller galaxies get less unanimous votes on Q1
    visibility = np.array([g.visibility for g in galaxies])
    agreement = table[["Class1.1", "Class1.2", "Class1.3"]].max(axis=1)
    assert agreement[visibility > 0.7].mean() > agreement[visibility < 0.3].mean() + 0.05


def test_galaxy_sits_in_the_central_crop(dataset):
    for path in sorted((dataset / synth.TRAIN_DIR).iterdir()):
        pixels = np.asarray(Image.open(path), dtype=np.float64).mean(axis=2)
        centre = pixels[160:264, 160:264].mean()
        border = np.concatenate([pixels[:60].ravel(), pixels[-60:].ravel()])
        assert centre > np.median(border) + 4, path.name


def test_refuses_to_replace_a_different_data_set(dataset, tmp_path):
    out = tmp_path / "gz2"
    assert synth_main([f"out={out}", "n_train=3", "n_test=1", "progress=false"]) == 0
    before = files(out)
    with pytest.raises(GzooError, match="overwrite=true"):
        synth.generate(out, 3, 1, seed=1, progress=False)
    assert synth_main([f"out={out}", "n_train=3", "n_test=1", "seed=1", "progress=false"]) == 2
    assert files(out) == before
    assert synth.generate(out, 3, 1, seed=0, progress=False) == out and files(out) == before  # same set: kept
    assert synth_main([f"out={out}", "n_train=2", "n_test=1", "seed=1", "overwrite=true", "progress=false"]) == 0
    assert synth.read_params(out)["seed"] == 1 and len(list((out / synth.TRAIN_DIR).iterdir())) == 2


def test_refuses_to_write_over_real_data(tmp_path):
    (tmp_path / synth.TRAIN_CSV).write_text(",".join(schema.HEADER) + "\n")
    with pytest.raises(GzooError, match="already holds a different data set"):
        synth.generate(tmp_path, 2, 0, progress=False)
    assert (tmp_path / synth.TRAIN_CSV).read_text() == ",".join(schema.HEADER) + "\n"


def test_cli_bad_key_or_value_is_one_clear_error(tmp_path, capsys):
    assert synth_main([f"out={tmp_path}", "colour=red"]) == 2
    assert "unknown option 'colour'" in one_error_line(capsys.readouterr().err)
    assert synth_main([f"out={tmp_path}", "n_train=abc"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("[gzoo] error: n_train='abc' is not a valid value (expected an integer)")
    assert synth_main([f"out={tmp_path}", "n_train=many"]) == 2
    assert "n_train='many' is not a valid value (expected an integer)" in one_error_line(capsys.readouterr().err)
    assert synth_main([f"out={tmp_path}", "n_train=0"]) == 2
    assert one_error_line(capsys.readouterr().err) == "[gzoo] error: n_train=0 must be >= 1."
    assert synth_main([f"out={tmp_path}", "n_train=-3"]) == 2
    assert one_error_line(capsys.readouterr().err) == "[gzoo] error: n_train=-3 must be >= 1."
    for bad, message in (
        ("n_test=-1", "n_test=-1 must be >= 0."),
        ("seed=-1", "seed=-1 must be >= 0."),
        ("workers=0", "workers=0 must be >= 1."),
        ("overwrite=maybe", "overwrite='maybe' is not"),
    ):
        assert synth_main([f"out={tmp_path}", bad]) == 2
        assert message in one_error_line(capsys.readouterr().err)
    assert synth_main(["n_train=3"]) == 2  # out is required
    assert "out=... is required" in one_error_line(capsys.readouterr().err)
    assert synth_main(["out=", "n_train=3"]) == 2  # an empty path is not the current folder
    assert "out='' is not a valid value" in one_error_line(capsys.readouterr().err)
    assert capsys.readouterr().out == ""
    command = [sys.executable, "-m", "gzoo.synth", f"out={tmp_path}", "nrain=5"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "[gzoo] error: unknown option 'nrain'; the options are out, n_train, n_test, seed, overwrite, workers, progress."
    ]
    assert not list(tmp_path.iterdir())


DEFAULTS = {"out": "(required)", "n_train": "1000", "n_test": "200", "seed": "0", "overwrite": "false", "workers": "1", "progress": "true"}


def check_help(text: str) -> None:
    """--help lists every option, with its default and its comment, on one line each."""
    fields = dataclasses.fields(SynthOptions)
    assert [f.name for f in fields] == list(DEFAULTS)
    for f in fields:
        line = next((row for row in text.splitlines() if row.split() and row.split()[0] == f"{f.name}={DEFAULTS[f.name]}"), None)
        assert line is not None and line.rstrip().endswith(f.metadata["help"]) and f.metadata["help"], (f.name, text)
    assert [f.metadata["low"] for f in fields] == [None, 1, 0, 0, None, 1, None]


def test_cli_help_lists_every_option(tmp_path, capsys):
    assert synth_main(["--help"]) == 0
    captured = capsys.readouterr()
    check_help(captured.out)
    assert captured.err == "" and not list(tmp_path.iterdir())


def test_cli_help_runs_as_a_module(tmp_path):
    run = subprocess.run([sys.executable, "-m", "gzoo.synth", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    check_help(run.stdout)
    assert not list(tmp_path.iterdir())  # help writes nothing


def test_contact_sheet_draws_every_row(tmp_path):
    real = synth.generate(tmp_path / "real", 60, 0, seed=3, progress=False)  # stands in for real data
    out = contact_sheet(tmp_path / "sheet.png", real, seed=0, per_side=2, tile=60)
    with Image.open(out) as sheet:
        assert sheet.size == (150 + 4 * 60 + 16, 30 + 7 * 60)
        pixels = np.asarray(sheet.convert("L"))
    for row in range(7):  # every synthetic tile was drawn (dark sky, not the white background)
        for k in range(2):
            assert pixels[30 + row * 60 + 5 : 30 + row * 60 + 40, 150 + k * 60 + 5 : 150 + k * 60 + 55].mean() < 120


def test_contact_sheet_cli_needs_real(tmp_path, capsys):
    assert contact_sheet_main([f"out={tmp_path / 'sheet.png'}"]) == 2
    assert "real=... is required" in one_error_line(capsys.readouterr().err)
    assert contact_sheet_main([f"out={tmp_path / 'sheet.png'}", f"real={tmp_path}", "per_side=0"]) == 2
    assert one_error_line(capsys.readouterr().err) == "[gzoo] error: per_side=0 must be >= 1."
    assert contact_sheet_main([f"out={tmp_path / 'sheet.png'}", f"real={tmp_path}"]) == 2  # no solutions CSV
    assert "has neither training_solutions_rev1.csv" in one_error_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())
