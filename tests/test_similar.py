"""Similar and unusual galaxies (gzoo.neighbours, gzoo.similar, gzoo.unusual, gzoo.embedding_map) on the shared tiny run.

The galaxies are small blob images listed in a catalogue; the embeddings are
made in-process with gzoo.survey.run, as python -m gzoo.embed makes them. The galaxies are centred, as survey
cutouts are: an off-centre blob would leave the tiny network's central crop empty and be an outlier of its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import gzoo
from gzoo import neighbours, similar, survey, unusual
from gzoo.embedding_map import main as map_main
from gzoo.errors import GzooError
from gzoo.neighbours import Embeddings, IndexOptions, open_index
from gzoo.survey import EmbedOptions
from tests.conftest import one_error_line

N = 40


def embed(ckpt: Path, catalog: Path, out: Path, **kwargs) -> Path:
    o = EmbedOptions(ckpt=ckpt, images=catalog, out=f"{out}/", progress=False, num_workers=0, device="cpu", part_size=16, **{"outputs": "both", **kwargs})
    survey.run(o, "embeddings")
    return out


def write_galaxies(folder: Path, n: int, seed: int = 0, size: int = 64) -> list[Path]:
    """``n`` galaxy-like PNG files g<k>.png: a centred elliptical blob (radius, axis ratio, angle, brightness drawn) on faint sky."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2 + 0.5
    files = []
    for k in range(n):
        r, q, a = rng.uniform(3, 7), rng.uniform(0.4, 1), rng.uniform(0, np.pi)
        u, v = xx * np.cos(a) + yy * np.sin(a), (-xx * np.sin(a) + yy * np.cos(a)) / q
        blob = np.exp(-(u**2 + v**2) / (2 * r**2))[..., None] * rng.uniform(150, 255) * np.array([1.0, 0.9, 0.8])
        files.append(folder / f"g{k}.png")
        Image.fromarray(np.clip(blob + rng.normal(15, 4, (size, size, 3)), 0, 255).astype(np.uint8)).save(files[-1])
    return files


def write_catalog(root: Path, n: int = N, outlier: bool = False) -> Path:
    """A catalogue of n galaxies (id_str G000.., file_loc, ra); with ``outlier`` one more: a noise image, id_str ODD."""
    files = write_galaxies(root / "cutouts", n)
    ids = [f"G{k:03d}" for k in range(n)]
    if outlier:
        rng = np.random.default_rng(1)
        files.append(root / "cutouts" / "odd.png")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(files[-1])
        ids.append("ODD")
    table = pd.DataFrame({"id_str": ids, "file_loc": [str(f.relative_to(root)) for f in files], "ra": np.linspace(10, 11, len(ids))})
    table.to_parquet(root / "catalog.parquet", index=False)
    return root / "catalog.parquet"


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run["ckpt"]


@pytest.fixture(scope="module")
def data(ckpt, tmp_path_factory) -> dict:
    """The catalogue with a planted outlier and its embeddings (outputs=both, 3 parts), and the catalogue without it and its embeddings."""
    root = tmp_path_factory.mktemp("similar")
    odd = write_catalog(root / "odd", outlier=True)
    plain = write_catalog(root / "plain")
    return {
        "catalog": odd,
        "emb": embed(ckpt, odd, root / "emb_odd", carry=["ra"]),
        "plain_catalog": plain,
        "plain_emb": embed(ckpt, plain, root / "emb_plain"),
    }


def test_index_is_kept_beside_the_embeddings_which_still_read_as_one_table(data, tmp_path):
    emb = Embeddings(data["emb"])
    assert (emb.rows, emb.id_column, emb.carry) == (N + 1, "id_str", ["ra"]) and emb.answers[0] == "Class1.1"
    index = open_index(emb, IndexOptions(), progress=False)
    assert (
        (data["emb"] / "_index" / "index.json").is_file() and index.record["kind"] == "flat" and index.record["pca"] == 0
    )  # 64 by default, but not fitted on 41 rows
    table = pd.read_parquet(data["emb"])  # the _index folder is skipped by pyarrow's reader
    assert len(table) == N + 1
    # A flat index is exact: without PCA its neighbours are numpy's cosine neighbours.
    x = table[[c for c in table.columns if c.startswith("feature_")]].to_numpy(np.float32, copy=True)
    _, rows = open_index(emb, IndexOptions(folder=tmp_path / "plain", pca=0), progress=False).search(x[:5], 4)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(rows, np.argsort(-(x[:5] @ x.T), axis=1, kind="stable")[:, :4])


def test_an_approximate_index_measures_its_recall_against_exact_search(data, tmp_path):
    emb = Embeddings(data["emb"])
    index = open_index(emb, IndexOptions(folder=tmp_path / "ivf", kind="ivf", pca=8, whiten=True, nlist=4, recall_queries=10, train_rows=100), progress=False)
    assert index.record["dims"] == 8 and index.record["nlist"] == 4 and index.record["recall_at_10"] >= 0.95
    # Asking another setting of a kept index is refused (not silently rebuilt); index.rebuild=true builds it again.
    with pytest.raises(GzooError, match=r"was built with index.pca=8, not 4; pass index.rebuild=true"):
        open_index(emb, IndexOptions(folder=tmp_path / "ivf", pca=4), progress=False)
    assert open_index(emb, IndexOptions(folder=tmp_path / "ivf", pca=4, rebuild=True), progress=False).record["dims"] == 4
    with pytest.raises(GzooError, match=r"index.kind=ivfpq learns 256 codes per sub-vector and needs at least 256 galaxies \(41 here\)"):
        open_index(emb, IndexOptions(folder=tmp_path / "pq", kind="ivfpq", pca=8, pq_bytes=4, nlist=2), progress=False)


def test_the_index_refuses_embeddings_of_another_checkpoint(data, ckpt, tmp_path):
    other = torch.load(ckpt, map_location="cpu", weights_only=False)
    name = next(k for k, v in other["state_dict"].items() if v.is_floating_point() and "body" in k)
    other["state_dict"][name] = other["state_dict"][name] + 0.1
    torch.save(other, tmp_path / "other.ckpt")
    shared = IndexOptions(folder=tmp_path / "index")
    open_index(Embeddings(data["plain_emb"]), shared, progress=False)
    theirs = embed(tmp_path / "other.ckpt", data["plain_catalog"], tmp_path / "emb_other")
    with pytest.raises(GzooError, match=r"the index .* was built from embeddings of another checkpoint .*index.rebuild=true"):
        open_index(Embeddings(theirs), shared, progress=False)
    # An image-file query must be embedded by the embeddings' own checkpoint.
    with pytest.raises(GzooError, match=r"ckpt=.*other.ckpt is not the checkpoint that made the embeddings"):
        similar.similar(data["plain_emb"], str(data["plain_catalog"].parent / "cutouts" / "g3.png"), ckpt=tmp_path / "other.ckpt")


def test_a_query_by_image_file_equals_the_query_by_its_id(data, ckpt, capsys):
    by_id = similar.similar(data["emb"], "G007", k=5)
    by_file = similar.similar(data["emb"], str(data["catalog"].parent / "cutouts" / "g7.png"), k=5, ckpt=ckpt)
    assert "is galaxy G007 of the embeddings (the same embedding): left out" in capsys.readouterr().out
    assert by_id["id_str"].tolist() == by_file["id_str"].tolist() and "G007" not in by_id["id_str"].tolist()
    np.testing.assert_allclose(by_id["distance"], by_file["distance"], atol=1e-5)
    assert list(by_id.columns[:5]) == ["query", "rank", "id_str", "distance", "ra"] and by_id["rank"].tolist() == [1, 2, 3, 4, 5]
    assert by_id["distance"].is_monotonic_increasing and "Class1.1" in by_id.columns


def unusual_top(folder: Path, method: str) -> pd.DataFrame:
    emb = Embeddings(folder)
    return unusual.ranking(emb, unusual.scores(emb, open_index(emb, progress=False), method))


def test_the_unusual_ranking_puts_a_planted_outlier_first(data):
    table = unusual_top(data["emb"], "knn")
    assert table["id_str"].iloc[0] == "ODD" and table["score"].is_monotonic_decreasing
    assert table["score"].iloc[0] > 2 * table["score"].iloc[1]
    # Negative control: the same galaxies without it; the top is one of them, scored well below the outlier.
    control = unusual_top(data["plain_emb"], "knn")
    assert control["id_str"].iloc[0].startswith("G") and len(control) == N
    assert control["score"].iloc[0] < table["score"].iloc[0] / 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["iforest", "lof"])
def test_the_other_unusual_scores_put_the_planted_outlier_first_too(data, method):
    assert unusual_top(data["emb"], method)["id_str"].iloc[0] == "ODD"
    assert unusual_top(data["plain_emb"], method)["id_str"].iloc[0].startswith("G")


def test_the_command_lines_write_tables_and_galleries(data, ckpt, tmp_path, capsys):
    images = data["catalog"]
    assert similar.main([f"embeddings={data['emb']}", "query=G001,G002", "k=3", f"out={tmp_path / 'sim.csv'}", f"images={images}", "progress=false"]) == 0
    table = pd.read_csv(tmp_path / "sim.csv")
    assert len(table) == 6 and set(table["query"]) == {"G001", "G002"}
    assert Image.open(tmp_path / "sim.png").size[0] == 4 * (160 + 6) + 6  # the query and its 3 neighbours
    assert unusual.main([f"embeddings={data['emb']}", f"out={tmp_path / 'odd.parquet'}", f"images={images}", "top=4", "progress=false"]) == 0
    assert pd.read_parquet(tmp_path / "odd.parquet")["id_str"].iloc[0] == "ODD" and (tmp_path / "odd.png").is_file()
    assert map_main([f"embeddings={data['emb']}", f"out={tmp_path / 'map.png'}", f"images={images}", "grid=3", "progress=false"]) == 0
    assert Image.open(tmp_path / "map.png").size[0] > 1000
    assert neighbours.main([f"embeddings={data['emb']}", "progress=false"]) == 0
    assert "using the index" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["query=NOPE"], "query=NOPE is not a galaxy of the embeddings (41 galaxies, ids like G000, G001, G002); give ids from their id_str column."),
        (["query=G001", "embeddings=/no/such"], "embeddings=/no/such not found; give the folder of parts that python -m gzoo.embed ... out=FOLDER/ wrote."),
        (["query=x.png"], "query=x.png is an image file; give ckpt= (the checkpoint that made the embeddings) to embed it."),
    ],
)
def test_mistakes_are_one_sentence(data, args, message, tmp_path, capsys):
    assert similar.main([f"embeddings={data['emb']}", f"out={tmp_path / 's.csv'}", *args]) == 2
    assert one_error_line(capsys.readouterr().err) == f"[gzoo] error: {message}"
    assert not (tmp_path / "s.csv").exists()


def test_an_index_of_other_embeddings_is_refused(data, tmp_path):
    """Embeddings made again into the same folder (another fingerprint) no longer match the index kept there."""
    folder = tmp_path / "emb"
    shutil.copytree(data["plain_emb"], folder)
    open_index(Embeddings(folder), progress=False)
    manifest = json.loads((folder / "_manifest.json").read_text())
    manifest["fingerprint"] = "0" * 16
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GzooError, match="was built from other embeddings of this checkpoint"):
        similar.similar(folder, "G001")


@pytest.mark.skipif(not hasattr(gzoo.Model, "similar"), reason="gzoo.Model.similar is not there yet")
def test_model_similar_is_the_function(data, ckpt):
    model = gzoo.load(ckpt, device="cpu")
    by_file = model.similar(data["emb"], [str(data["catalog"].parent / "cutouts" / "g7.png")], k=5)
    pd.testing.assert_frame_equal(by_file, similar.similar(data["emb"], "G007", k=5).assign(query=by_file["query"]), atol=1e-5)
