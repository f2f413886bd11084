"""The Python API (gzoo.load -> Model.predict / Model.embed): the README's lines run as written, and the
sources (folder, files, DataFrame) give the tool's own predictions; FITS cutouts made here with astropy."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import gzoo
from gzoo import predict, schema
from gzoo.errors import GzooError
from gzoo.inference import predict_images
from gzoo.module import load_net
from gzoo.predict import PredictOptions
from tests.conftest import ROOT, write_kaggle

fits = pytest.importorskip("astropy.io.fits", reason="astropy (the fits extra, installed by make install) reads FITS")


def readme_python_api() -> str:
    """The code block of the README's "Python API" section, exactly as a reader sees it."""
    section = (ROOT / "README.md").read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def fits_galaxy(path: Path, bands: int = 1, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96] - 48
    cube = np.stack([(500 + 300 * b) * np.exp(-(xx**2 / 90 + yy**2 / 40)) + rng.normal(0, 3, (96, 96)) for b in range(bands)]).astype(np.float32)
    fits.PrimaryHDU(cube[0] if bands == 1 else cube).writeto(path)
    return path


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run["ckpt"]


@pytest.fixture(scope="module")
def jpgs(tmp_path_factory) -> list[Path]:
    return sorted((write_kaggle(tmp_path_factory.mktemp("src"), n=3, seed=5) / "images_training_rev1").iterdir())


def test_the_readme_lines_run_as_written(ckpt, jpgs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs/default/b0/fulltune/checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, tmp_path / "outputs/default/b0/fulltune/checkpoints/best.ckpt")
    (tmp_path / "my_galaxies").mkdir()
    Image.open(jpgs[0]).save(tmp_path / "my_galaxies" / "J123456.78+012345.6.png")
    fits_galaxy(tmp_path / "my_galaxies" / "NGC1300.fits")
    namespace: dict = {}
    exec(readme_python_api(), namespace)

    table, features = namespace["table"], namespace["features"]
    assert list(table.columns) == ["id_str", *schema.COLUMNS] and table["id_str"].tolist() == ["J123456.78+012345.6", "NGC1300"]
    assert np.isfinite(table[schema.COLUMNS].to_numpy()).all()
    pd.testing.assert_frame_equal(pd.read_parquet("my_predictions.parquet"), table)
    width = namespace["model"].net.body.num_features
    assert list(features.columns) == ["id_str", *(f"feature_{k}" for k in range(width))] and features["id_str"].tolist() == ["NGC1300"]
    assert features.iloc[0, 1:].std() > 0


def test_predict_is_the_tools_prediction_for_every_kind_of_source(ckpt, jpgs, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path, gid in zip(jpgs, (30, 4, 200)):
        shutil.copy(path, folder / f"{gid}.jpg")
    model = gzoo.load(ckpt, device="cpu")
    table = model.predict(folder, num_workers=0, progress=False)
    assert list(table.columns) == schema.HEADER and table[schema.ID_COLUMN].tolist() == [4, 30, 200]
    tool = pd.read_csv(predict.predict(PredictOptions(ckpt=ckpt, images=folder, out=tmp_path / "sub.csv", num_workers=0, progress=False, device="cpu")))
    np.testing.assert_allclose(table[schema.COLUMNS].to_numpy(), tool[schema.COLUMNS].to_numpy(), atol=6e-7)
    # A list of files, in the order given; a DataFrame with file_loc and no id column: ids from the names.
    files = [folder / "200.jpg", folder / "4.jpg"]
    listed = model.predict(files, num_workers=0, progress=False)
    assert listed[schema.ID_COLUMN].tolist() == [200, 4]
    np.testing.assert_allclose(listed[schema.COLUMNS].to_numpy(), predict_images(load_net(ckpt, "cpu"), files), atol=1e-6)
    framed = model.predict(pd.DataFrame({"file_loc": [str(f) for f in files]}), num_workers=0, progress=False)
    pd.testing.assert_frame_equal(framed, listed)
    # tta reaches the network: 8 views differ from one.
    assert np.abs(model.predict(files, tta=8, num_workers=0, progress=False)[schema.COLUMNS].to_numpy() - listed[schema.COLUMNS].to_numpy()).max() > 1e-6


def test_fits_cutouts_one_band_and_three_to_a_dataframe(ckpt, tmp_path):
    one = fits_galaxy(tmp_path / "a.fits", bands=1)
    three = fits_galaxy(tmp_path / "b.fits.gz", bands=3, seed=1)
    model = gzoo.load(ckpt, device="cpu")
    table = model.predict(pd.DataFrame({"id_str": ["one", "three"], "file_loc": [str(one), str(three)]}), num_workers=0, progress=False)
    assert table["id_str"].tolist() == ["one", "three"] and np.isfinite(table[schema.COLUMNS].to_numpy()).all()
    # The composite's parameters reach the pixels the network sees.
    harsh = model.predict([one], fits={"stretch": 5.0}, num_workers=0, progress=False)
    assert np.abs(harsh[schema.COLUMNS].to_numpy() - table[schema.COLUMNS].to_numpy()[:1]).max() > 1e-6


def test_embed_is_the_networks_pooled_features(ckpt, jpgs):
    import torch

    from gzoo.images import load_image
    from gzoo.transforms import eval_transform

    model = gzoo.load(ckpt, device="cpu")
    features = model.embed(jpgs, num_workers=0, progress=False)
    view = eval_transform(model.net.image_size, model.net.crop_fraction)
    with torch.no_grad():
        direct = model.net.features(torch.stack([view(image=load_image(f))["image"] for f in jpgs])).numpy()
    np.testing.assert_allclose(features.iloc[:, 1:].to_numpy(), direct, atol=1e-5)


def test_mistakes_are_one_sentence(ckpt, jpgs, tmp_path):
    model = gzoo.load(ckpt, device="cpu")
    with pytest.raises(GzooError, match=r"the DataFrame has no column 'file_loc' \(its columns: path\); pass file_column="):
        model.predict(pd.DataFrame({"path": [str(jpgs[0])]}))
    with pytest.raises(GzooError, match=r"a\.jpg and .*b\.jpg are both galaxy 'x'; remove or rename one of them \(a galaxy's id is its 'id_str' value\)"):
        shutil.copy(jpgs[0], tmp_path / "a.jpg")
        shutil.copy(jpgs[1], tmp_path / "b.jpg")
        model.predict(pd.DataFrame({"id_str": ["x", "x"], "file_loc": [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]}))
    with pytest.raises(GzooError, match=r"image file .*nope\.jpg not found"):
        model.predict([tmp_path / "nope.jpg"])
    with pytest.raises(GzooError, match=r"checkpoint .*missing\.ckpt not found"):
        gzoo.load(tmp_path / "missing.ckpt")


def test_import_gzoo_stays_light():
    code = "import sys, gzoo; print(sorted(m for m in ('torch', 'timm', 'lightning', 'pandas') if m in sys.modules), 'load' in gzoo.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]  # gzoo.load itself imports torch on first use (the other tests use it)
