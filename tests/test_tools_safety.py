"""The tools' safety: an output that cannot be written, a signal, two writers of one
output, an export that fails half-way, the Python API's sources, and an image too small to crop.

Every test here fails on the code before the fixes (run it with PYTHONPATH=<the old src>). The checkpoint is
the shared tiny run's (tests/conftest.py: trained_run); every output goes under tmp_path.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import gzoo
from gzoo import config, export, inference, predict, schema, survey
from gzoo.errors import GzooError
from gzoo.inference import predict_images
from gzoo.predict import PredictOptions
from tests.conftest import one_error_line, write_kaggle


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    return trained_run["ckpt"]


@pytest.fixture(scope="module")
def model(ckpt):
    return gzoo.load(ckpt, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three small galaxies, 100000.jpg 100007.jpg 100014.jpg."""
    return write_kaggle(tmp_path_factory.mktemp("src"), n=3, seed=4, size=64) / "images_training_rev1"


def args(ckpt, images, out, *more) -> list[str]:
    return [f"ckpt={ckpt}", f"images={images}", f"out={out}", "num_workers=0", "progress=false", "device=cpu", *more]


def one_error_line_of(capsys) -> str:
    return one_error_line(capsys.readouterr().err)


@pytest.fixture
def spy_predictions(monkeypatch) -> list:
    """Records each call of part_table (the work), calling the real one."""
    calls, real = [], survey.part_table

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(survey, "part_table", spy)
    return calls


@pytest.fixture
def sigterm_guard():
    """A SIGTERM handler of the test's own, so a tool that sets none fails the test instead of killing pytest."""

    def guard(signum, frame):
        raise AssertionError("SIGTERM reached the test's own handler: the tool set none")

    before = signal.signal(signal.SIGTERM, guard)
    yield guard
    signal.signal(signal.SIGTERM, before)


# ----------------------------------------------------------------------------- the tools' one front door


def test_an_out_that_cannot_be_written_is_one_sentence_before_any_prediction(ckpt, images, tmp_path, spy_predictions, capsys):
    (tmp_path / "afile").write_text("a file where a folder should be\n")
    assert predict.main(args(ckpt, images, tmp_path / "afile" / "sub.csv")) == 2
    line = one_error_line_of(capsys)
    assert line == (f"[gzoo] error: could not write {tmp_path / 'afile' / 'sub.csv'}: {tmp_path / 'afile'} is a file, not a folder; choose another out=.")
    assert spy_predictions == []  # said before the work, not after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@contextlib.contextmanager
def full_disk(monkeypatch, folder: Path, room: int = 1000):
    """Writes of files in ``folder`` fail with ENOSPC once ``room`` bytes are written, as on a filling disk
    (through Python's open, which gzoo.io uses; torch.jit.save to a path is routed through it too)."""
    real_open, real_jit_save = builtins.open, torch.jit.save
    left = [room]

    class Filling:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if len(data) > left[0]:
                self.f.write(data[: left[0]])
                left[0] = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            left[0] -= len(data)
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def filling_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        inside = isinstance(file, (str, os.PathLike)) and Path(file).absolute().parent == folder.absolute()
        return Filling(f) if inside and any(c in mode for c in "wax") and "lock" not in Path(file).name else f  # the lock (tried first) fits

    def jit_save(m, f, *a, **k):
        if isinstance(f, (str, os.PathLike)):  # the C++ writer, as Python's would write the same bytes
            with filling_open(f, "wb") as g:
                return real_jit_save(m, g, *a, **k)
        return real_jit_save(m, f, *a, **k)

    monkeypatch.setattr(builtins, "open", filling_open)
    monkeypatch.setattr(torch.jit, "save", jit_save)
    try:
        yield
    finally:  # the disk has room again after the block, whether it ended in an error or not
        monkeypatch.setattr(builtins, "open", real_open)
        monkeypatch.setattr(torch.jit, "save", real_jit_save)


def test_a_disk_that_fills_while_the_table_is_written_is_one_sentence(ckpt, images, tmp_path, monkeypatch, capsys, spy_predictions):
    out, real_merge = tmp_path / "sub.csv", survey.Parts.merge

    def merge_on_a_full_disk(parts, table):  # the disk fills once the parts are written, while the table is
        with full_disk(monkeypatch, tmp_path):
            return real_merge(parts, table)

    monkeypatch.setattr(survey.Parts, "merge", merge_on_a_full_disk)
    status = predict.main(args(ckpt, images, out))
    monkeypatch.setattr(survey.Parts, "merge", real_merge)
    assert status == 2
    parts = tmp_path / ".sub.csv.parts"
    assert one_error_line_of(capsys) == (
        f"[gzoo] error: could not write the merged table {out}: the disk holding {tmp_path} is full (No space left on device); "
        f"the parts are kept in {parts}: free space there and run the same command again."
    )
    assert [p.name for p in tmp_path.iterdir()] == [parts.name]  # no partial table, no temporary file, no lock
    # Once there is room, the same command merges the part it kept, without predicting again.
    assert predict.main(args(ckpt, images, out)) == 0, capsys.readouterr().err
    assert len(pd.read_csv(out)) == 3 and spy_predictions == [1] and [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_every_tools_front_door_turns_disks_and_signals_into_one_sentence(tmp_path, sigterm_guard, capsys):
    @dataclass
    class Options:
        what: str = config.option("ok", "what goes wrong")

    def tool(o: Options) -> None:
        if o.what == "readonly":
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out.csv"))
        if o.what == "notdir":
            (tmp_path / "afile").write_text("")
            open(tmp_path / "afile" / "x.csv", "w")
        if o.what == "ctrl-c":
            raise KeyboardInterrupt
        if o.what == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        if o.what == "bug":
            raise OSError("not the user's doing")

    assert config.run_tool(tool, Options, ["what=readonly"]) == 2
    assert one_error_line_of(capsys) == (
        f"[gzoo] error: could not write {tmp_path / 'out.csv'}: {tmp_path} is not writable (Read-only file system); "
        "free space there or write to another folder, then run the same command again."
    )
    assert config.run_tool(tool, Options, ["what=notdir"]) == 2
    assert f"{tmp_path / 'afile'} is a file, not a folder" in one_error_line_of(capsys)
    assert config.run_tool(tool, Options, ["what=ctrl-c"]) == 130
    assert one_error_line_of(capsys).startswith("[gzoo] error: stopped by SIGINT (Ctrl-C) before it finished;")
    started = time.monotonic()
    assert config.run_tool(tool, Options, ["what=sigterm"]) == 143
    assert time.monotonic() - started < 4 and one_error_line_of(capsys).startswith("[gzoo] error: stopped by SIGTERM before it finished;")
    assert signal.getsignal(signal.SIGTERM) is sigterm_guard  # the tool's handler only while it runs
    with pytest.raises(OSError, match="not the user's doing"):  # a bug keeps its traceback
        config.run_tool(tool, Options, ["what=bug"])


def test_sigterm_during_prediction_leaves_nothing_and_exits_143(ckpt, images, tmp_path, monkeypatch, sigterm_guard, capsys):
    real = inference.predict_loader

    def terminated(*a, **k):
        batches = real(*a, **k)
        yield next(batches)
        os.kill(os.getpid(), signal.SIGTERM)  # as SLURM or `timeout` sends it
        yield from batches

    monkeypatch.setattr(inference, "predict_loader", terminated)
    assert predict.main(args(ckpt, images, tmp_path / "sub.csv", "batch_size=1")) == 143
    said = capsys.readouterr().err.strip().splitlines()  # one line, no traceback: the run was stopped, not mistaken
    assert len(said) == 1 and said[0].startswith("[gzoo] stopped by SIGTERM after writing 0 of the 1 parts to do"), said
    assert [p.name for p in tmp_path.iterdir()] == [".sub.csv.parts"]  # no table, no temporary file, no lock
    assert [p.name for p in (tmp_path / ".sub.csv.parts").iterdir()] == ["_manifest.json"]  # no half-written part


# ----------------------------------------------------------------------------- one writer per output


def test_a_second_run_into_the_same_out_is_refused_while_the_first_runs(ckpt, images, tmp_path, monkeypatch, capsys):
    out, seen = tmp_path / "sub.csv", {}
    real = survey.part_table

    def second_run_meanwhile(*a, **k):
        if not seen:
            seen["status"] = None  # once: the second run's own predictions (if it were let through) come here too
            seen["status"] = predict.main(args(ckpt, images, out))  # a second command, same out, while the first computes
            seen["err"] = capsys.readouterr().err
        return real(*a, **k)

    monkeypatch.setattr(survey, "part_table", second_run_meanwhile)
    assert predict.main(args(ckpt, images, out)) == 0
    assert seen["status"] == 2 and "Traceback" not in seen["err"]
    share = tmp_path / ".sub.csv.parts" / "share-0-of-1"
    assert seen["err"].startswith(f"[gzoo] error: {share} is in use by another run (pid {os.getpid()} on {socket.gethostname()}, started ")
    assert len(pd.read_csv(out)) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]  # the first run's table, its lock gone


def test_another_process_writing_out_is_named_and_a_dead_ones_lock_is_taken_over(ckpt, images, tmp_path, spy_predictions):
    out, lock = tmp_path / "sub.csv", tmp_path / ".sub.csv.lock"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": holder.pid, "host": socket.gethostname(), "started": time.time(), "started_at": "2025-01-01 10:00:00", "command": "gzoo.predict"}
        lock.write_text(json.dumps(record))
        with pytest.raises(GzooError) as stop:
            predict.predict(PredictOptions(ckpt=ckpt, images=images, out=out, num_workers=0, progress=False, device="cpu"))
        assert str(stop.value) == (
            f"{out} is in use by another run (pid {holder.pid} on {socket.gethostname()}, started 2025-01-01 10:00:00: gzoo.predict); "
            f"wait for it to end or choose another out=, or delete {lock} if that run is no longer running."
        )
        assert spy_predictions == [] and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    predict.predict(PredictOptions(ckpt=ckpt, images=images, out=out, num_workers=0, progress=False, device="cpu"))  # the dead run's lock
    assert len(pd.read_csv(out)) == 3 and not lock.exists()


# ----------------------------------------------------------------------------- export writes both files or neither


def earlier_pair(tmp_path: Path) -> tuple[Path, Path]:
    out, side = tmp_path / "model.pt", tmp_path / "model.pt.json"
    out.write_bytes(b"the earlier model")
    side.write_text('{"earlier": "sidecar"}\n')
    return out, side


def test_a_full_disk_during_an_export_overwrite_keeps_the_earlier_pair(ckpt, tmp_path, monkeypatch, capsys):
    out, side = earlier_pair(tmp_path)
    with full_disk(monkeypatch, tmp_path):
        status = export.main([f"ckpt={ckpt}", "format=torchscript", f"out={out}", "overwrite=true"])
    assert status == 2
    assert one_error_line_of(capsys) == (
        f"[gzoo] error: could not write the exported model {out}: the disk holding {tmp_path} is full (No space left on device); "
        "neither it nor model.pt.json was changed (nothing half-written is left); free space there or choose another out=, then run the same command again."
    )
    assert out.read_bytes() == b"the earlier model" and side.read_text() == '{"earlier": "sidecar"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]  # no temporary file, no lock
    # With room again, both are replaced and go together.
    assert export.main([f"ckpt={ckpt}", "format=torchscript", f"out={out}", "overwrite=true"]) == 0
    assert json.loads(side.read_text())["format"] == "torchscript"
    assert export.load_exported(out)(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 37)


def test_a_failed_rename_of_the_sidecar_puts_the_earlier_model_back(ckpt, tmp_path, monkeypatch):
    out, side = earlier_pair(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst) == side:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(GzooError, match=r"could not write the exported model .*model\.pt \(Input/output error\); neither it nor model\.pt\.json was changed"):
        export.export(ckpt, "torchscript", out, overwrite=True)
    assert out.read_bytes() == b"the earlier model" and side.read_text() == '{"earlier": "sidecar"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]


# ----------------------------------------------------------------------------- the Python API's sources


def test_a_blank_id_in_a_dataframe_is_refused_naming_the_row(model, images):
    files = [str(p) for p in sorted(images.iterdir())[:2]]
    for blank in ("", "  ", None):
        with pytest.raises(GzooError, match=r"^the DataFrame, row 1: the id column 'id_str' is empty; fill it in or drop the row\.$"):
            model.predict(pd.DataFrame({"id_str": ["a", blank], "file_loc": files}), num_workers=0, progress=False)


def test_a_list_of_arrays_is_predicted_with_ids_0_to_n(model, images):
    from gzoo.images import load_image

    arrays = [load_image(p) for p in sorted(images.iterdir())]
    table = model.predict(arrays, num_workers=0, progress=False)
    assert list(table.columns) == ["index", *schema.COLUMNS] and table["index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(table[schema.COLUMNS].to_numpy(), predict_images(model.net, sorted(images.iterdir())), atol=1e-6)
    with pytest.raises(GzooError, match=r"^array 1 of the list has shape \(64, 64\) and dtype uint8; give RGB images as uint8 arrays of shape \(H, W, 3\)"):
        model.predict([arrays[0], arrays[1][..., 0]], num_workers=0, progress=False)


def test_relative_paths_are_read_from_root_and_a_catalogue_from_its_own_folder(model, images, tmp_path, monkeypatch):
    data = tmp_path / "survey"
    shutil.copytree(images, data / "imgs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    names = ["imgs/100007.jpg", "imgs/100000.jpg"]
    expected = predict_images(model.net, [data / n for n in names])

    frame = pd.DataFrame({"id_str": ["b", "a"], "file_loc": names})
    with pytest.raises(GzooError, match=f"image file imgs/100007.jpg \\(column 'file_loc'\\) not found; .*read from {elsewhere}"):
        model.predict(frame, num_workers=0, progress=False)
    table = model.predict(frame, root=data, num_workers=0, progress=False)
    assert table["id_str"].tolist() == ["b", "a"]
    np.testing.assert_allclose(table[schema.COLUMNS].to_numpy(), expected, atol=1e-6)

    # A catalogue file, as training reads data.catalog: relative paths from its folder, integer ids as integers.
    pd.DataFrame({"id_str": ["7", "1"], "file_loc": names}).to_csv(data / "catalog.csv", index=False)
    table = model.predict(data / "catalog.csv", num_workers=0, progress=False)
    assert table["id_str"].tolist() == [7, 1]
    np.testing.assert_allclose(table[schema.COLUMNS].to_numpy(), expected, atol=1e-6)
    pd.DataFrame({"id_str": ["7", ""], "file_loc": names}).to_csv(data / "blank.csv", index=False)
    with pytest.raises(GzooError, match=f"^catalogue {data / 'blank.csv'}, row 3: the id column 'id_str' is empty; fill it in or drop the row\\.$"):
        model.predict(data / "blank.csv", num_workers=0, progress=False)


def test_one_file_under_two_ids_is_refused_naming_both_rows(model, images, tmp_path, monkeypatch):
    monkeypatch.chdir(images.parent)
    file = images / "100000.jpg"
    for names in ([str(file), str(file)], [str(file), f"{images.name}/100000.jpg"]):  # the same name twice; absolute and relative
        frame = pd.DataFrame({"id_str": ["a", "b"], "file_loc": names})
        with pytest.raises(GzooError, match=rf"^the DataFrame, rows 0 and 1 \('a' and 'b'\) are both the image {file.resolve()}; each image must appear once"):
            model.predict(frame, num_workers=0, progress=False)


# ----------------------------------------------------------------------------- an image too small to crop is a bad image


@pytest.fixture
def with_thin_image(images, tmp_path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    Image.fromarray(np.full((424, 1, 3), 128, np.uint8)).save(folder / "5.png")  # 1 px wide, 424 px high
    return folder


def test_an_image_one_pixel_wide_is_a_bad_image_named_or_skipped(ckpt, with_thin_image, tmp_path):
    out = predict.predict(
        predict_options := PredictOptions(
            ckpt=ckpt, images=with_thin_image, out=tmp_path / "sub.csv", num_workers=0, progress=False, device="cpu", on_bad_image="skip"
        )
    )
    assert pd.read_csv(out)[schema.ID_COLUMN].tolist() == [100000, 100007, 100014]
    (listed,) = (tmp_path / "sub.csv.skipped.txt").read_text().splitlines()
    assert Path(listed.split("\t")[0]).name == "5.png"
    predict_options.on_bad_image, predict_options.out = "error", tmp_path / "strict.csv"
    with pytest.raises(GzooError, match=r"^image .*/5\.png cannot be read \(.*\); replace or remove it, or pass on_bad_image=skip"):
        predict.predict(predict_options)
    assert not (tmp_path / "strict.csv").exists()


def test_an_array_too_small_to_crop_is_a_bad_image(model, images):
    from gzoo.images import load_image

    arrays = [load_image(images / "100000.jpg"), np.zeros((424, 1, 3), np.uint8)]
    table = model.predict(arrays, on_bad_image="skip", num_workers=0, progress=False)
    assert table["index"].tolist() == [0]
    with pytest.raises(GzooError, match=r"^image array 1 cannot be read"):
        model.predict(arrays, num_workers=0, progress=False)
