"""Survey scale (gzoo.survey): catalogues read in chunks, parts whole or absent, resume, shards, processes, carried columns.

The checkpoint is the shared tiny run's; the galaxies are small images this module makes, one file each,
listed in catalogues under new ids. A kill is a real SIGKILL of the command in the slow tests, and in the
fast ones what a SIGKILL leaves behind (a temporary file of the part being written, a dead run's lock).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import gzoo
from gzoo import schema, survey
from gzoo.errors import GzooError
from gzoo.survey import EmbedOptions, SurveyOptions

N = 120  # galaxies in the fast tests' catalogue
PART = 25  # -> 5 parts, the last of 20


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run["ckpt"]


def write_galaxies(folder: Path, n: int, seed: int = 0, size: int = 40) -> list[Path]:
    """``n`` distinct small RGB images (a blob on noise), as PNG files named g<k>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    files = []
    for k in range(n):
        cx, cy, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(3, 9)]
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))[..., None] * rng.uniform(80, 255, 3)
        image = np.clip(blob + rng.normal(20, 8, (size, size, 3)), 0, 255).astype(np.uint8)
        files.append(folder / f"g{k}.png")
        Image.fromarray(image).save(files[-1])
    return files


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """A Parquet catalogue of N galaxies: id_str, file_loc (relative to the catalogue), ra, dec and a column not carried."""
    root = tmp_path_factory.mktemp("survey")
    files = write_galaxies(root / "cutouts", N)
    table = pd.DataFrame(
        {
            "id_str": [f"J{k:05d}" for k in range(N)],
            "file_loc": [str(f.relative_to(root)) for f in files],
            "ra": np.linspace(150.0, 151.0, N),
            "dec": np.linspace(2.0, 2.5, N),
            "note": ["x"] * N,
        }
    )
    table.to_parquet(root / "catalog.parquet", index=False)
    return root / "catalog.parquet"


def options(ckpt: Path, images, out, cls=SurveyOptions, **kwargs) -> SurveyOptions:
    return cls(ckpt=Path(ckpt), images=images, out=str(out), **{"progress": False, "num_workers": 0, "device": "cpu", "part_size": PART, **kwargs})


@pytest.fixture(scope="module")
def whole(ckpt, catalog, tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted, unsharded run's table: the reference."""
    out = tmp_path_factory.mktemp("whole") / "parts/"
    survey.run(options(ckpt, catalog, f"{out}/", carry=["ra", "dec"]))
    return pd.read_parquet(out)


def parts_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if survey.PART.fullmatch(p.name))


def test_a_catalogue_becomes_a_parquet_dataset_of_parts_with_its_columns_carried(whole, catalog, tmp_path, ckpt):
    assert list(whole.columns) == ["id_str", "ra", "dec", *schema.COLUMNS]  # the id, the carried columns, the answers
    source = pd.read_parquet(catalog)
    assert whole["id_str"].tolist() == source["id_str"].tolist()  # every galaxy once, in the catalogue's order
    np.testing.assert_array_equal(whole[["ra", "dec"]].to_numpy(), source[["ra", "dec"]].to_numpy())
    values = whole[schema.COLUMNS].to_numpy()
    assert values.dtype == np.float32 and np.isfinite(values).all()
    assert values.std(axis=0).max() > 1e-4  # the galaxies differ, so do their answers
    # The same galaxies through the Python API, in memory: the same numbers (one implementation).
    api = gzoo.load(ckpt, device="cpu").predict(catalog, carry=["ra", "dec"], num_workers=0, progress=False)
    pd.testing.assert_frame_equal(api, whole)


def test_a_killed_run_is_finished_by_rerunning_it_and_equals_an_uninterrupted_one(whole, catalog, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, writes = survey.Parts.write, []

    def killed_during_the_third_part(parts, k, table, chunk, skipped):
        if len(writes) == 2:  # what SIGKILL leaves: the part being written as a temporary file, and the run's lock
            (parts.folder / f".{survey.part_name(k)}.999999.tmp").write_bytes(b"half a part")
            raise SystemExit(-9)
        writes.append(k)
        return real(parts, k, table, chunk, skipped)

    monkeypatch.setattr(survey.Parts, "write", killed_during_the_third_part)
    with pytest.raises(SystemExit):
        survey.run(options(ckpt, catalog, f"{out}/", carry=["ra", "dec"]))
    (out / ".share-0-of-1.lock").write_text(json.dumps({"pid": 999999, "host": os.uname().nodename, "started": 0, "command": "killed"}))
    assert parts_of(out) == ["part-000000.parquet", "part-000001.parquet"]
    monkeypatch.setattr(survey.Parts, "write", real)

    done = []
    monkeypatch.setattr(survey, "part_table", lambda *a, **k: done.append(a[1].index) or real_part_table(*a, **k))
    survey.run(options(ckpt, catalog, f"{out}/", carry=["ra", "dec"]))
    assert done == [2, 3, 4]  # only the parts left
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole)  # bit for bit
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", *parts_of(out)]  # no temporary file, no lock


real_part_table = survey.part_table


def test_a_rerun_with_another_checkpoint_or_options_into_the_same_output_is_refused(catalog, ckpt, tmp_path):
    out = tmp_path / "out"
    survey.run(options(ckpt, catalog, f"{out}/", part_size=60))
    other = tmp_path / "other.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    key = next(k for k in state["state_dict"] if k.endswith("tail.1.weight"))
    state["state_dict"][key] = state["state_dict"][key] + 0.01
    torch.save(state, other)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(GzooError, match=r"holds parts made another way \(the checkpoint \(its SHA-256\): .* there, .* now\); rerun with the same"):
        survey.run(options(other, catalog, f"{out}/", part_size=60))
    with pytest.raises(GzooError, match=r"holds parts made another way \(tta: 1 there, 8 now\)"):
        survey.run(options(ckpt, catalog, f"{out}/", part_size=60, tta=8))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing mixed, nothing lost
    survey.run(options(other, catalog, f"{out}/", part_size=60, overwrite=True))  # asked for: started again
    assert json.loads((out / "_manifest.json").read_text())["made_by"]["checkpoint_sha256"] == survey.file_sha256(other)


def test_shards_take_disjoint_parts_whose_union_is_the_whole(whole, catalog, ckpt, tmp_path):
    out, seen = tmp_path / "out", []
    for i in range(3):
        before = set(parts_of(out)) if out.exists() else set()
        survey.run(options(ckpt, catalog, f"{out}/", carry=["ra", "dec"], shard=f"{i}/3"))
        seen.append(set(parts_of(out)) - before)
    assert seen == [{"part-000000.parquet", "part-000003.parquet"}, {"part-000001.parquet", "part-000004.parquet"}, {"part-000002.parquet"}]
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole)


def test_a_slurm_array_task_is_a_shard(monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "10")
    assert survey.shard_of("auto") == (2, 4)
    assert survey.shard_of("1/3") == (1, 3)  # given: SLURM's is not read
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert survey.shard_of("auto") == (0, 1)


def test_out_file_merges_the_parts_when_the_last_shard_ends(whole, catalog, ckpt, tmp_path):
    out = tmp_path / "table.csv"
    survey.run(options(ckpt, catalog, out, carry=["ra", "dec"], shard="1/2"))
    assert not out.exists() and (tmp_path / ".table.csv.parts").is_dir()  # shard 0's parts are not there yet
    survey.run(options(ckpt, catalog, out, carry=["ra", "dec"], shard="0/2"))
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # merged; the parts folder is gone
    merged = pd.read_csv(out)
    assert merged["id_str"].tolist() == whole["id_str"].tolist()
    np.testing.assert_allclose(merged[schema.COLUMNS].to_numpy(), whole[schema.COLUMNS].to_numpy(), atol=5e-7)  # 6 decimals
    with pytest.raises(GzooError, match="already exists; pass overwrite=true"):
        survey.run(options(ckpt, catalog, out, carry=["ra", "dec"]))


def test_embeddings_and_predictions_from_one_pass(whole, catalog, ckpt, tmp_path):
    out = tmp_path / "emb.parquet"
    survey.run(options(ckpt, catalog, out, EmbedOptions, outputs="both", embedding_dtype="float16", embedding_layout="list"))
    table = pd.read_parquet(out)
    assert list(table.columns) == ["id_str", *schema.COLUMNS, "embedding"]
    pd.testing.assert_frame_equal(table[["id_str", *schema.COLUMNS]], whole[["id_str", *schema.COLUMNS]])  # the same answers
    width = pq.read_schema(out).field("embedding").type.list_size
    features = np.stack(table["embedding"].to_list())
    assert features.dtype == np.float16 and features.shape == (N, width)
    model = gzoo.load(ckpt, device="cpu")
    plain = model.embed(catalog, num_workers=0, progress=False)  # float32 columns feature_0 ...
    assert list(plain.columns[1:]) == [f"feature_{j}" for j in range(width)] and plain[plain.columns[1]].dtype == np.float32
    np.testing.assert_allclose(features, plain.iloc[:, 1:].to_numpy(), rtol=2e-3, atol=2e-3)  # float16 of the same numbers
    with pytest.raises(GzooError, match="embedding_layout=list writes one fixed-width column, which a CSV cannot hold"):
        survey.run(options(ckpt, catalog, tmp_path / "emb.csv", EmbedOptions, embedding_layout="list"))


def test_a_csv_catalogue_is_read_in_chunks_with_the_columns_types(whole, catalog, ckpt, tmp_path, monkeypatch):
    table = pd.read_parquet(catalog)
    table["file_loc"] = [str(catalog.parent / f) for f in table["file_loc"]]  # absolute paths: the CSV lives elsewhere
    table.to_csv(tmp_path / "catalog.csv", index=False)
    monkeypatch.setattr("gzoo.data.chunks.READ_ROWS", 7)  # record batches that cut across the parts
    monkeypatch.setattr(survey, "open_source", survey.open_source)
    survey.run(options(ckpt, tmp_path / "catalog.csv", f"{tmp_path / 'out'}/", carry=["ra", "dec"]))
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [25, 25, 25, 25, 20]
    got = pd.read_parquet(tmp_path / "out")
    assert got["ra"].dtype == np.float64  # a number column stays a number
    pd.testing.assert_frame_equal(got, whole)


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"id_str": ["a", "a"]}, r"rows 2 and 3 are both galaxy 'a'; each galaxy must appear once"),
        ({"file_loc": ["cutouts/g0.png", "./cutouts/g0.png"]}, r"rows 2 and 3 both name the image .*cutouts/g0.png; each image must appear once"),
        ({"id_str": ["a", " "]}, r"row 3: the id column 'id_str' is empty"),
    ],
)
def test_a_catalogues_mistakes_are_found_before_any_work(catalog, ckpt, tmp_path, rows, message):
    table = pd.read_parquet(catalog).head(2).assign(**rows)
    table.to_csv(catalog.parent / "bad.csv", index=False)
    with pytest.raises(GzooError, match=message):
        survey.run(options(ckpt, catalog.parent / "bad.csv", f"{tmp_path / 'out'}/"))
    assert not (tmp_path / "out").exists()


def test_a_folder_is_read_with_its_subfolders(ckpt, tmp_path):
    write_galaxies(tmp_path / "a", 3, seed=1)
    (tmp_path / "a" / "g0.png").rename(tmp_path / "a" / "100.png")
    sub = tmp_path / "a" / "deeper"
    write_galaxies(sub, 2, seed=2)
    (sub / "g0.png").rename(sub / "5.png")
    (sub / "g1.png").rename(sub / "g9.png")
    table = gzoo.load(ckpt, device="cpu").predict(tmp_path / "a", num_workers=0, progress=False)
    assert table["id_str"].tolist() == ["5", "100", "g1", "g2", "g9"]  # found in the subfolder too, sorted by id
    (tmp_path / "empty").mkdir()
    with pytest.raises(GzooError, match=r"empty holds no image files; images= must be a folder of image files"):
        survey.run(options(ckpt, tmp_path / "empty", tmp_path / "t.csv"))
    (sub / "g9.png").rename(sub / "g1.png")
    with pytest.raises(GzooError, match=r"a/g1.png and .*deeper/g1.png are both galaxy 'g1'"):
        gzoo.load(ckpt, device="cpu").predict(tmp_path / "a", num_workers=0, progress=False)


def test_unreadable_images_are_listed_per_part_and_in_one_summary(catalog, ckpt, tmp_path, capsys):
    table = pd.read_parquet(catalog).head(60)
    table["file_loc"] = [str(catalog.parent / f) for f in table["file_loc"]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    table.loc[[3, 40], "file_loc"] = [str(broken), str(tmp_path / "missing.png")]
    table.to_parquet(tmp_path / "c.parquet", index=False)
    with pytest.raises(GzooError, match=r"image .*broken.png cannot be read"):
        survey.run(options(ckpt, tmp_path / "c.parquet", f"{tmp_path / 'stop'}/"))
    survey.run(options(ckpt, tmp_path / "c.parquet", f"{tmp_path / 'out'}/", on_bad_image="skip"))
    got = pd.read_parquet(tmp_path / "out")
    assert len(got) == 58 and "J00003" not in set(got["id_str"]) and "J00040" not in set(got["id_str"])
    listed = (tmp_path / "out" / "_skipped.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in listed] == ["broken.png", "missing.png"]
    assert "left out 2 unreadable images (on_bad_image=skip): broken.png, missing.png" in capsys.readouterr().err


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gzoo.predict", *args, "num_workers=0", "progress=false", "device=cpu"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sigkilled_command_is_finished_by_rerunning_it(whole, catalog, ckpt, tmp_path):
    out = tmp_path / "out"
    args = command(f"ckpt={ckpt}", f"images={catalog}", f"out={out}/", "carry=[ra,dec]", "part_size=5", "batch_size=1")
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while (not out.exists() or len(parts_of(out)) < 3) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert 3 <= len(parts_of(out)) < 24  # killed part way
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr
    assert "parts were done already" in rerun.stdout
    survey.run(options(ckpt, catalog, f"{tmp_path / 'whole'}/", carry=["ra", "dec"], part_size=5, batch_size=1))  # uninterrupted, same options
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(tmp_path / "whole"))  # bit for bit


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_through_lightning_ddp_make_the_same_table(whole, catalog, ckpt, tmp_path):
    out = tmp_path / "table.parquet"
    done = subprocess.run(
        command(f"ckpt={ckpt}", f"images={catalog}", f"out={out}", "carry=[ra,dec]", f"part_size={PART}", "devices=2"),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    assert "shard 0/1, rank 0/2" in done.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole)


def test_a_catalogue_of_per_band_fits_frames_is_predicted_as_the_api_predicts_it(ckpt, tmp_path):
    pytest.importorskip("astropy")
    from gzoo.synth.survey import BLUE, RED, galaxy_frames, write_cutout

    rows = []
    for k, galaxy in enumerate([BLUE, RED, BLUE, RED]):
        g, r, i = write_cutout(tmp_path / "frames", f"gal{k}", galaxy_frames(galaxy, side=48, seed=k))
        rows.append({"id_str": f"S{k}", "file_g": g.name, "file_r": r.name, "file_i": i.name, "petroR90_r": 8.0 + k, "ra": 10.0 + k})
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "frames" / "catalog.csv", index=False)  # no file_loc: the per-band columns are the images
    survey.run(options(ckpt, tmp_path / "frames" / "catalog.csv", f"{tmp_path / 'out'}/", carry=["ra"], part_size=3))
    got = pd.read_parquet(tmp_path / "out")
    assert got["id_str"].tolist() == ["S0", "S1", "S2", "S3"] and got["ra"].tolist() == [10.0, 11.0, 12.0, 13.0]
    frame = table.assign(**{c: [str(tmp_path / "frames" / f) for f in table[c]] for c in ("file_g", "file_r", "file_i")})
    api = gzoo.load(ckpt, device="cpu").predict(frame, carry=["ra"], num_workers=0, progress=False)
    pd.testing.assert_frame_equal(api, got)  # the same items, composites and numbers
    assert np.abs(got[schema.COLUMNS].to_numpy()[0] - got[schema.COLUMNS].to_numpy()[1]).max() > 1e-6  # a blue and a red galaxy differ
    table.drop(columns="file_r").to_csv(tmp_path / "frames" / "some.csv", index=False)
    with pytest.raises(GzooError, match=r"no column 'file_loc'"):  # without every band's column, the file column is needed
        survey.run(options(ckpt, tmp_path / "frames" / "some.csv", f"{tmp_path / 'x'}/"))
