"""Your own galaxies: a CSV or Parquet catalogue (id_str, file_loc, your label columns), trained, predicted, evaluated."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import gzoo
from gzoo.data import GalaxyZooDataModule
from gzoo.errors import GzooError
from gzoo.evaluate import EvaluateOptions, evaluate
from gzoo.predict import PredictOptions, predict
from gzoo.train import train
from tests.conftest import SAMPLE, make_cfg

GZ2_2K = SAMPLE.parent / "gz2-2k"


def bar_name(k: int) -> str:
    return f"J{123456 + k:06d}.78+0{12345 + k:05d}.6"


def write_bars(folder: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """PNG cutouts named like SDSS designations: a bright bar at a random angle when is_bar is high."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:96, :96] - 48.0
    rows = []
    for k in range(n):
        is_bar = float(rng.random() < 0.5) * 0.8 + rng.random() * 0.2
        angle = rng.uniform(0, np.pi)
        along, across = xx * np.cos(angle) + yy * np.sin(angle), -xx * np.sin(angle) + yy * np.cos(angle)
        disk = 120 * np.exp(-(xx**2 + yy**2) / (2 * 14**2))
        bar = 120 * is_bar * np.exp(-(along**2) / (2 * 16**2) - across**2 / (2 * 3**2))
        image = np.clip(disk + bar + rng.normal(0, 4, disk.shape), 0, 255).astype(np.uint8)
        name = f"{bar_name(k)}.png"
        Image.fromarray(np.repeat(image[..., None], 3, axis=2)).save(folder / name)
        rows.append({"id_str": bar_name(k), "file_loc": f"{folder.name}/{name}", "is_bar": round(is_bar, 4) if k % 7 else None})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    table = write_bars(root / "cutouts", 48)
    table.to_parquet(root / "catalog.parquet")
    return root


def test_fine_tune_on_a_parquet_catalogue_with_one_label_then_predict_and_evaluate(tmp_path, bars):
    cfg = make_cfg(
        tmp_path, bars, "data=catalog", f"data.catalog={bars / 'catalog.parquet'}", "data.labels=[is_bar]", "data.val_fraction=0.25", "tta8_at_end=false"
    )
    assert cfg.data.missing_labels == "mask"  # blank = unknown, as in galaxy-datasets' catalogues
    dm = GalaxyZooDataModule.from_config(cfg.data, seed=0, progress=False)
    dm.setup()
    assert dm.columns == ["is_bar"] and dm.labels("train").shape[1] == 1 and all(isinstance(i, str) for i in dm.ids("all"))
    assert np.isnan(dm.labels("all")).sum() == 7  # rows 0, 7, ... have no label: masked, not dropped
    metrics = train(cfg)
    assert np.isfinite(metrics["val/rmse"])

    model = gzoo.load(metrics["best_checkpoint"])
    assert model.labels == ["is_bar"]
    table = model.predict(bars / "cutouts", progress=False)
    assert list(table.columns) == ["id_str", "is_bar"] and len(table) == 48
    assert table["id_str"].iloc[0] == bar_name(0) and table["is_bar"].between(0, 1).all()

    out = tmp_path / "pred.parquet"
    predict(PredictOptions(ckpt=Path(metrics["best_checkpoint"]), images=bars / "cutouts", out=out, progress=False, num_workers=0))
    saved = pd.read_parquet(out)
    assert list(saved.columns) == ["id_str", "is_bar"] and np.allclose(saved["is_bar"], table["is_bar"], atol=1e-6)

    report = evaluate(EvaluateOptions(ckpt=Path(metrics["best_checkpoint"]), out=tmp_path / "eval", progress=False, num_workers=0))
    assert list(report["baseline"]["per_answer"]) == ["is_bar"] and report["baseline"]["per_question"] == {}
    assert report["model"]["1"]["rmse"] == pytest.approx(metrics["val/rmse"], abs=1e-5)
    assert (tmp_path / "eval" / "report.md").is_file()


def test_catalogue_mistakes_end_in_one_sentence(tmp_path, bars):
    table = pd.read_parquet(bars / "catalog.parquet")

    def setup(df: pd.DataFrame, labels=("is_bar",), name="c.csv", **kw):
        df.to_csv(bars / name, index=False) if name.endswith(".csv") else df.to_parquet(bars / name)
        GalaxyZooDataModule(root=bars, catalog=bars / name, labels=list(labels), missing_labels="mask", progress=False, **kw).setup()

    with pytest.raises(GzooError, match=r"has no column 'is_merger' .* set data.id_column, data.file_column or data.labels"):
        setup(table, labels=("is_bar", "is_merger"))
    with pytest.raises(GzooError, match=re.escape(f"rows 2 and 3 are both galaxy {bar_name(0)!r}")):
        setup(pd.concat([table.iloc[:1], table]))
    with pytest.raises(GzooError, match=r"row 3, column is_bar: value 1.5 is outside \[0, 1\]"):
        setup(table.assign(is_bar=[0.5, 1.5] + [0.5] * (len(table) - 2)))
    with pytest.raises(GzooError, match=r"its image .*nowhere.png does not exist"):
        setup(table.assign(file_loc=["cutouts/nowhere.png"] + list(table.file_loc[1:])))
    with pytest.raises(GzooError, match=r"must be a .csv or .parquet file, got .json"):
        setup(table, name="c.json")
    with pytest.raises(GzooError, match="data.labels must be gz2 or a list of column names"):
        GalaxyZooDataModule(root=bars, labels="bars")
    with pytest.raises(GzooError, match=r"data.labels names 'is_bar', which is not a Kaggle column; .* data.catalog=PATH"):
        GalaxyZooDataModule(root=bars, labels=["is_bar"], progress=False).setup()
    with pytest.raises(GzooError, match="model.head=tree follows the Galaxy Zoo 2 decision tree, so it needs data.labels=gz2"):
        train(make_cfg(tmp_path, bars, "data=catalog", f"data.catalog={bars / 'catalog.parquet'}", "data.labels=[is_bar]", "model.head=tree"))


@pytest.mark.skipif(not GZ2_2K.is_dir(), reason=f"the 2,000 real galaxies are not at {GZ2_2K}")
def test_a_catalogue_of_the_kaggle_files_splits_and_scores_as_the_kaggle_layout(tmp_path):
    labels = pd.read_csv(GZ2_2K / "training_solutions_partial.csv", dtype=str, keep_default_na=False).iloc[:160]
    catalog = labels.rename(columns={"GalaxyID": "id_str"})
    catalog.insert(1, "file_loc", [str(GZ2_2K / "images_training_rev1" / f"{i}.jpg") for i in catalog.id_str])
    catalog.to_csv(tmp_path / "catalog.csv", index=False)
    common = ["data.labels_csv=training_solutions_partial.csv", "data.missing_labels=mask", "data.limit=160", "data.val_fraction=0.25", "tta8_at_end=false"]
    kaggle = make_cfg(tmp_path, GZ2_2K, *common, "name=kaggle")
    own = make_cfg(tmp_path, GZ2_2K, *common, "name=own", "data=catalog", f"data.catalog={tmp_path / 'catalog.csv'}")
    dms = [GalaxyZooDataModule.from_config(c.data, seed=0, progress=False) for c in (kaggle, own)]
    for part in ("train", "val"):
        assert dms[0].ids(part).tolist() == dms[1].ids(part).tolist()
        np.testing.assert_array_equal(dms[0].labels(part), dms[1].labels(part))
    a, b = train(kaggle), train(own)
    assert a["val/rmse"] == b["val/rmse"] and a["val/rmse_baseline"] == b["val/rmse_baseline"]


def test_hf_hub_names_pass_the_name_check_and_fail_offline_in_the_usual_sentence(monkeypatch):
    from gzoo.net import GalaxyNet, backbone_norm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert backbone_norm("hf_hub:mwalmsley/zoobot-encoder-convnext_nano") is None  # a name timm.create_model takes
    with pytest.raises(
        GzooError, match=r"^could not fetch the pretrained weights of hf_hub:mwalmsley/zoobot-encoder-convnext_nano \(the Hugging Face hub cannot"
    ):
        GalaxyNet("hf_hub:mwalmsley/zoobot-encoder-convnext_nano", pretrained=True, image_size=64)
    with pytest.raises(GzooError, match="is not a timm model"):
        backbone_norm("efficientnet_b99")  # negative control: other names are still checked
