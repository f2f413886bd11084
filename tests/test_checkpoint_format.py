"""What a checkpoint is: gzoo writes its format and version into every one; one written before the format was
recorded but in today's layout loads as it is; any other format (older or newer) is one sentence on every path
that loads (load_net, gzoo.load, python -m gzoo.predict, train's resume and init_from).

The checkpoints are the shared tiny run's best.ckpt (tests/conftest.py: trained_run), edited copies under tmp_path.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gzoo
from gzoo.errors import GzooError
from gzoo.module import CHECKPOINT_FORMAT, GalaxyZooModule, load_net, read_checkpoint
from tests.conftest import ROOT, make_cfg, write_kaggle

OLD = "was written before checkpoints carried a format (gzoo 0.1.0 or earlier"


@pytest.fixture(scope="module")
def ckpt(trained_run) -> Path:
    """The shared tiny run's best.ckpt, as gzoo.train wrote it (read only)."""
    return trained_run["ckpt"]


def edited(ckpt: Path, out: Path, edit) -> Path:
    """A copy of ``ckpt`` at ``out``, changed by ``edit(dict)``."""
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    edit(data)
    torch.save(data, out)
    return out


def without_format(data: dict) -> None:
    """A checkpoint as gzoo wrote them before they carried their format (same keys otherwise)."""
    data.pop("gzoo_format", None), data.pop("gzoo_version", None)


def future(data: dict) -> None:
    data.update(gzoo_format=99, gzoo_version="9.9.9")


def old_keys(data: dict) -> None:
    """An older layout: the weights named body.* (no net. prefix) and no format recorded."""
    without_format(data)
    data["state_dict"] = {k.replace("net.body.", "body.", 1): v for k, v in data["state_dict"].items()}


def test_a_new_checkpoint_records_its_format_and_the_gzoo_that_wrote_it(ckpt):
    data = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert data["gzoo_format"] == CHECKPOINT_FORMAT == 2
    assert data["gzoo_version"] == importlib.metadata.version("gzoo")
    assert any(k.startswith("net.body.") for k in data["state_dict"]) and data["hyper_parameters"]["timm_name"] == "test_efficientnet"


def test_todays_layout_without_the_format_fields_loads_and_predicts_the_same(ckpt, tmp_path, capsys):
    bare = edited(ckpt, tmp_path / "bare.ckpt", without_format)
    assert "gzoo_format" not in torch.load(bare, weights_only=False)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = load_net(ckpt)(images), load_net(bare)(images)
    assert torch.equal(got, expected)
    assert read_checkpoint(bare, "resume")["state_dict"].keys() == read_checkpoint(ckpt, "resume")["state_dict"].keys()
    assert GalaxyZooModule.from_checkpoint(bare).net.head == "tree"  # the head it was saved with
    said = capsys.readouterr().out
    assert "records no format (gzoo 0.1.0 wrote it before checkpoints carried one); its layout is format 2's, so it is read as format 2" in said


def test_a_future_format_is_one_sentence_naming_the_file_the_format_and_the_version_that_wrote_it(ckpt, tmp_path):
    path = edited(ckpt, tmp_path / "future.ckpt", future)
    with pytest.raises(GzooError) as e:
        load_net(path)
    said = str(e.value)
    assert str(path) in said and "format 99" in said and "gzoo 9.9.9" in said and f"reads format {CHECKPOINT_FORMAT}" in said
    assert "export it" in said and "retrain" in said and len(said.splitlines()) == 1
    with pytest.raises(GzooError, match=rf"^resume={path} is a checkpoint of format 99 written by gzoo 9\.9\.9"):
        read_checkpoint(path, "resume")


def test_old_style_keys_are_one_sentence_through_gzoo_load(ckpt, tmp_path):
    path = edited(ckpt, tmp_path / "old.ckpt", old_keys)
    with pytest.raises(GzooError) as e:
        gzoo.load(path, device="cpu")
    said = str(e.value)
    assert said.startswith(f"checkpoint {path} {OLD}") and "export it" in said and "retrain" in said and len(said.splitlines()) == 1


@pytest.mark.slow  # a real command: seconds of imports (gzoo.load covers the sentence in the fast suite)
def test_old_style_keys_are_one_sentence_and_status_2_through_python_m_gzoo_predict(ckpt, tmp_path):
    path = edited(ckpt, tmp_path / "old.ckpt", old_keys)
    images = write_kaggle(tmp_path / "gz2", n=2) / "images_training_rev1"
    proc = subprocess.run(
        [sys.executable, "-m", "gzoo.predict", f"ckpt={path}", f"images={images}", f"out={tmp_path / 'sub.csv'}", "num_workers=0", "device=cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and OLD in errors[0] and str(path) in errors[0], proc.stderr
    assert not (tmp_path / "sub.csv").exists()


@pytest.mark.parametrize("option", ["resume", "phase.init_from"])
def test_train_refuses_an_old_checkpoint_to_resume_or_start_from_in_one_sentence(ckpt, tmp_path, option):
    from gzoo.train import train

    path = edited(ckpt, tmp_path / "old.ckpt", old_keys)
    data = write_kaggle(tmp_path / "gz2", n=12)
    extra = [f"resume={path}"] if option == "resume" else ["phase=fulltune", f"phase.init_from={path}"]
    with pytest.raises(GzooError, match=rf"^{option}={path} {OLD.replace('(', '[(]')}"):
        train(make_cfg(tmp_path, data, *extra))
