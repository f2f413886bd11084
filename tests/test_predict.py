"""gzoo.predict: the Kaggle submission, test-time augmentation, safe writing, bad files, the command line.

The checkpoint is the shared tiny run's (tests/conftest.py: trained_run); the image folders are
this module's own (their GalaxyIDs need only be files, not the run's galaxies).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gzoo import inference, predict, schema
from gzoo.errors import GzooError, RunInterrupted
from gzoo.inference import predict_images
from gzoo.module import load_net
from gzoo.predict import PredictOptions
from tests.conftest import write_kaggle


def options(ckpt: Path, images: Path, out: Path, **kwargs) -> PredictOptions:
    """The tool's options as the command line would make them: quiet, no workers, on the CPU."""
    return PredictOptions(ckpt=Path(ckpt), images=Path(images), out=Path(out), **{"progress": False, "num_workers": 0, "device": "cpu", **kwargs})


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    """The shared tiny run's best.ckpt (read only)."""
    return trained_run["ckpt"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A test folder whose GalaxyIDs sort differently as text and as numbers."""
    src = write_kaggle(tmp_path_factory.mktemp("src"), n=7, seed=3) / "images_training_rev1"
    folder = tmp_path_factory.mktemp("images_test_rev1")
    for path, gid in zip(sorted(src.iterdir()), (900, 10000, 25, 3, 123456, 7, 1000)):
        shutil.copy(path, folder / f"{gid}.jpg")
    return folder


def test_submission_has_the_kaggle_format(ckpt, images, tmp_path):
    out = predict.predict(options(ckpt, images, tmp_path / "sub.csv"))
    table = pd.read_csv(out)
    assert list(table.columns) == schema.HEADER
    assert table[schema.ID_COLUMN].tolist() == [3, 7, 25, 900, 1000, 10000, 123456]  # one row per JPEG, numeric order
    values = table[schema.COLUMNS].to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    # The rows are the model's predictions for those files (to the 6 decimals written).
    paths = [images / f"{gid}.jpg" for gid in table[schema.ID_COLUMN]]
    np.testing.assert_allclose(values, predict_images(load_net(ckpt, "cpu"), paths), atol=6e-7)


def asymmetric_galaxy(seed: int = 0) -> np.ndarray:
    """A 424x424 RGB image with no rotational or mirror symmetry: an off-centre elliptical blob and,
    inside the central crop, a bright bar in one corner (so even a nearly rotation-blind model sees it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:424, :424]
    blob = 200 * np.exp(-((xx - 230) ** 2 / 800 + (yy - 190) ** 2 / 200))
    blob = blob + 200 * ((xx > 120) & (xx < 200) & (yy > 120) & (yy < 170))
    return np.clip(blob[..., None] + rng.integers(0, 60, (424, 424, 3)), 0, 255).astype(np.uint8)


def test_tta8_is_exactly_invariant_to_right_angle_rotations_and_flips(ckpt):
    net = load_net(ckpt, "cpu")
    image = asymmetric_galaxy()
    copies = [image, np.rot90(image), np.rot90(image, 2), np.rot90(image, 3), np.fliplr(image), np.flipud(np.rot90(image))]
    copies = [np.ascontiguousarray(c) for c in copies]
    plain = predict_images(net, copies, tta=1)
    assert np.abs(plain - plain[0]).max() > 1e-4  # the model alone does see the rotation ...
    tta8 = predict_images(net, copies, tta=8)
    np.testing.assert_allclose(tta8, np.broadcast_to(tta8[0], tta8.shape), atol=1e-5)  # ... the 8 views do not
    # tta=4 rotates the whole frame by 0, 90, 180, 270 degrees: exact for rotated copies too.
    tta4 = predict_images(net, copies[:4], tta=4)
    np.testing.assert_allclose(tta4, np.broadcast_to(tta4[0], tta4.shape), atol=1e-5)
    # Other N use other angles, so they change the prediction.
    assert np.abs(predict_images(net, [image], tta=3) - plain[0]).max() > 1e-5


def test_an_interrupted_prediction_leaves_no_table_and_a_rerun_finishes_it(ckpt, images, tmp_path, monkeypatch):
    real = inference.predict_loader

    def interrupted(*args, **kwargs):
        batches = real(*args, **kwargs)
        yield next(batches)  # the first batch is computed ...
        raise KeyboardInterrupt  # ... then the user presses Ctrl-C

    monkeypatch.setattr(inference, "predict_loader", interrupted)
    with pytest.raises(RunInterrupted, match="stopped by SIGINT after writing 0 of the 1 parts to do .* run the same command again") as stop:
        predict.predict(options(ckpt, images, tmp_path / "sub.csv", batch_size=2))
    assert stop.value.status == 130
    parts = tmp_path / ".sub.csv.parts"
    assert [p.name for p in tmp_path.iterdir()] == [parts.name]  # no table, no temporary file, no lock
    assert [p.name for p in parts.iterdir()] == ["_manifest.json"]  # no half-written part

    # An earlier result survives an interrupted overwrite untouched.
    (tmp_path / "sub.csv").write_text("earlier\n")
    with pytest.raises(RunInterrupted):
        predict.predict(options(ckpt, images, tmp_path / "sub.csv", batch_size=2, overwrite=True))
    assert (tmp_path / "sub.csv").read_text() == "earlier\n"
    monkeypatch.setattr(inference, "predict_loader", real)
    predict.predict(options(ckpt, images, tmp_path / "sub.csv", batch_size=2, overwrite=True))
    assert len(pd.read_csv(tmp_path / "sub.csv")) == 7 and [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_an_existing_output_is_kept_unless_overwrite(ckpt, images, tmp_path):
    out = tmp_path / "sub.csv"
    out.write_text("earlier\n")
    with pytest.raises(GzooError, match="already exists; pass overwrite=true"):
        predict.predict(options(ckpt, images, out))
    assert out.read_text() == "earlier\n"
    predict.predict(options(ckpt, images, out, overwrite=True))
    assert len(pd.read_csv(out)) == 7


@pytest.fixture
def with_bad_files(images, tmp_path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "11.jpg").write_bytes(b"not an image at all")
    (folder / "12.jpg").write_bytes((images / "3.jpg").read_bytes()[:300])  # truncated download
    return folder


def test_a_bad_image_is_an_error_naming_it(ckpt, with_bad_files, tmp_path):
    with pytest.raises(GzooError, match=r"image .*11\.jpg cannot be read.*on_bad_image=skip"):
        predict.predict(options(ckpt, with_bad_files, tmp_path / "sub.csv"))
    assert not (tmp_path / "sub.csv").exists()


def test_skip_leaves_bad_images_out_and_lists_them(ckpt, with_bad_files, tmp_path, capsys):
    out = predict.predict(options(ckpt, with_bad_files, tmp_path / "sub.csv", on_bad_image="skip"))
    assert pd.read_csv(out)[schema.ID_COLUMN].tolist() == [3, 7, 25, 900, 1000, 10000, 123456]
    listed = (tmp_path / "sub.csv.skipped.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in listed] == ["11.jpg", "12.jpg"]
    assert "left out 2 unreadable images (on_bad_image=skip): 11.jpg, 12.jpg;" in capsys.readouterr().err


def test_command_line(ckpt, images, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert predict.main([f"ckpt={ckpt}", f"images={images}", f"out={out}", "tta=2", "num_workers=0", "progress=false", "device=cpu"]) == 0
    assert len(pd.read_csv(out)) == 7
    assert "images/s (tta=2)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["ckpt=x", "images=y", "out=z.csv", "colour=red"], "unknown option 'colour'"),
        (["ckpt=x", "images=y", "out=z.csv", "tta=0"], "tta=0 must be >= 1"),
        (["ckpt=x", "images=y", "out=z.csv", "on_bad_image=ignore"], "on_bad_image=ignore is not one of error, skip"),
        (["ckpt=x", "images=y"], "out=... is required"),
        (["ckpt=missing.ckpt", "images=.", "out=z.csv"], "checkpoint missing.ckpt not found"),  # read first: it says how FITS are made
        (["ckpt=x", "images=.", "out=z.json"], "out=z.json must be FILE.csv or FILE.parquet (one table) or FOLDER/"),
        (["ckpt=x", "images=y", "out=z.csv", "fits.softening=0"], "fits.softening=0.0 must be > 0"),
    ],
)
def test_command_line_mistakes_are_one_sentence(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("[gzoo] error:") and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_missing_checkpoint_is_named(images, tmp_path):
    with pytest.raises(GzooError, match="checkpoint .*nope.ckpt not found"):
        predict.predict(options(tmp_path / "nope.ckpt", images, tmp_path / "sub.csv"))


# ----------------------------------------------------------------------------- any image file, tables, names


def test_any_image_file_in_any_case_and_other_files_said(ckpt, images, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    jpgs = sorted(images.iterdir())
    shutil.copy(jpgs[0], folder / "1.JPG")
    shutil.copy(jpgs[1], folder / "2.jpeg")
    Image.open(jpgs[2]).save(folder / "3.PNG")
    Image.open(jpgs[3]).convert("L").save(folder / "4.tif")
    (folder / "notes.txt").write_text("not an image")
    out = predict.predict(options(ckpt, folder, tmp_path / "sub.csv"))
    assert pd.read_csv(out)[schema.ID_COLUMN].tolist() == [1, 2, 3, 4]
    assert "left out what is not an image file (.jpg .jpeg .png .tif .tiff .fits .fits.gz) in" in capsys.readouterr().out


def test_string_ids_from_file_names_and_parquet_output(ckpt, images, tmp_path):
    folder = tmp_path / "sky"
    folder.mkdir()
    names = ["J123456.78+012345.6", "J000102.03-040506.7", "NGC1300"]
    for path, name in zip(sorted(images.iterdir()), names):
        Image.open(path).save(folder / f"{name}.png")
    table = pd.read_parquet(predict.predict(options(ckpt, folder, tmp_path / "pred.parquet")))
    assert list(table.columns) == ["id_str", *schema.COLUMNS]
    assert table["id_str"].tolist() == sorted(names)
    # The same rows as a CSV (6 decimals) and as the numpy API.
    csv = pd.read_csv(predict.predict(options(ckpt, folder, tmp_path / "pred.csv")))
    assert csv["id_str"].tolist() == sorted(names)
    np.testing.assert_allclose(csv[schema.COLUMNS].to_numpy(), table[schema.COLUMNS].to_numpy(), atol=6e-7)
    paths = [folder / f"{name}.png" for name in table["id_str"]]
    np.testing.assert_allclose(table[schema.COLUMNS].to_numpy(), predict_images(load_net(ckpt, "cpu"), paths), atol=1e-6)


def test_integer_ids_stay_integers_in_parquet(ckpt, images, tmp_path):
    table = pd.read_parquet(predict.predict(options(ckpt, images, tmp_path / "sub.parquet")))
    assert list(table.columns) == schema.HEADER and table[schema.ID_COLUMN].dtype == np.int64
    assert table[schema.ID_COLUMN].tolist() == [3, 7, 25, 900, 1000, 10000, 123456]


def test_two_files_of_one_galaxy_are_refused_naming_both(ckpt, images, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    shutil.copy(folder / "900.jpg", folder / "0900.jpg")
    with pytest.raises(GzooError, match=r"0900\.jpg and .*/900\.jpg are both galaxy 900; remove or rename one of them"):
        predict.predict(options(ckpt, folder, tmp_path / "sub.csv"))
    assert not (tmp_path / "sub.csv").exists()


def test_a_broken_symlink_is_named(ckpt, images, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "55.jpg").symlink_to(tmp_path / "moved" / "55.jpg")
    with pytest.raises(
        GzooError, match=r"images/55\.jpg is a broken symbolic link \(its target .*moved/55\.jpg does not exist\); fix the link or remove it\.$"
    ):
        predict.predict(options(ckpt, folder, tmp_path / "sub.csv"))
    assert not (tmp_path / "sub.csv").exists()


def test_a_killed_predictions_temporary_file_is_removed_by_the_next_write(ckpt, images, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that no longer runs, as one killed by SIGKILL mid-write
    out = tmp_path / "sub.csv"
    stale = tmp_path / f".sub.csv.{dead.pid}.tmp"
    stale.write_text("GalaxyID,Class1.1\n3,0.5\n")  # what the killed run left
    running = tmp_path / f".sub.csv.{os.getppid()}.tmp"  # a live process's file is not touched
    running.write_text("in progress\n")
    predict.predict(options(ckpt, images, out))
    assert not stale.exists() and running.exists() and len(pd.read_csv(out)) == 7
