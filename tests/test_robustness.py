"""Nothing lost, nothing silent: resume after SIGKILL/SIGTERM, determinism, NaN loss, bad images."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from gzoo import module as gm
from gzoo.errors import GzooError
from gzoo.predict import PredictOptions, predict
from gzoo.train import train
from tests.conftest import ROOT, make_cfg, write_kaggle

# Exact repeatability on the CPU: deterministic kernels, no worker processes.
EXACT = ["trainer.deterministic=true", "trainer.max_epochs=4", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_kaggle(tmp_path_factory.mktemp("gz2"), n=64)


def weights(ckpt):
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt(tmp_path, data, sig):
    """Start a training run as a user would, send ``sig`` once epoch 0's last.ckpt exists; return (proc, its epoch)."""
    out = tmp_path / "outputs"
    args = ["debug=tiny", *EXACT, f"paths.output_root={out}", f"data.root={data}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as the in-process reference run (tests/conftest.py)
    proc = subprocess.Popen([sys.executable, "-m", "gzoo.train", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = out / "default/tiny/finetune/checkpoints/last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    return proc.returncode, stderr, epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("ref")
    metrics = train(make_cfg(tmp, data, *EXACT))
    return metrics, weights(tmp / "outputs/default/tiny/finetune/checkpoints/last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_same_weights_and_metrics(tmp_path, data, uninterrupted, sig):
    returncode, stderr, epoch = interrupt(tmp_path, data, sig)
    assert epoch < 3, "the run finished before it could be interrupted"
    if sig == signal.SIGTERM:
        assert returncode == 143 and "stopped by SIGTERM" in stderr and "resume=true" in stderr
        assert "Traceback" not in stderr
    else:
        assert returncode == -signal.SIGKILL
    metrics = train(make_cfg(tmp_path, data, *EXACT, "resume=true"))
    ref_metrics, ref_weights = uninterrupted
    assert same_weights(weights(tmp_path / "outputs/default/tiny/finetune/checkpoints/last.ckpt"), ref_weights)
    assert metrics["val/rmse"] == ref_metrics["val/rmse"]


def test_same_seed_gives_identical_val_rmse_and_weights(tmp_path, data):
    short = [*EXACT, "trainer.max_epochs=2", "data.limit=32"]  # two epochs: the second's draws depend on the first's end
    first = train(make_cfg(tmp_path, data, *short, "name=first"))
    again = train(make_cfg(tmp_path, data, *short, "name=again"))
    assert again["val/rmse"] == first["val/rmse"]
    assert same_weights(*(weights(tmp_path / f"outputs/{n}/tiny/finetune/checkpoints/last.ckpt") for n in ("first", "again")))
    other_seed = train(make_cfg(tmp_path, data, *short, "seed=7", "name=other"))
    assert other_seed["val/rmse"] != again["val/rmse"]


def test_resume_without_a_checkpoint_says_so(tmp_path, data):
    with pytest.raises(GzooError, match=r"resume=true but .* holds no run to continue; run the same command without resume=true to start one\."):
        train(make_cfg(tmp_path, data, "resume=true"))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    real, calls = gm.masked_mse, []

    def nan_after_epoch_0(pred, target, mask):
        calls.append(1)
        loss = real(pred, target, mask)
        return loss * float("nan") if len(calls) > 8 else loss  # 6 train + 2 val batches in epoch 0

    monkeypatch.setattr(gm, "masked_mse", nan_after_epoch_0)
    with pytest.raises(
        GzooError, match=r"the training loss became nan at step 6 \(epoch 1, batch 0\); the run stopped and .*last.ckpt holds the last good weights"
    ):
        train(make_cfg(tmp_path, data, "trainer.max_epochs=3", "data.val_fraction=0.25"))
    last = torch.load(tmp_path / "outputs/default/tiny/finetune/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["state_dict"].values())


def bad_image_folder(root):
    """A data set in which six files are odd: three unreadable, three readable but unusual."""
    write_kaggle(root, n=24)
    images = root / "images_training_rev1"
    ids = sorted(int(p.stem) for p in images.glob("*.jpg"))
    truncated, random_bytes, empty, png, grey, small = (images / f"{i}.jpg" for i in ids[:6])
    truncated.write_bytes(truncated.read_bytes()[:2000])
    random_bytes.write_bytes(np.random.default_rng(0).bytes(5000))
    empty.write_bytes(b"")
    Image.open(png).save(png, format="PNG")  # a PNG under a .jpg name
    Image.open(grey).convert("L").save(grey, format="JPEG")
    Image.open(small).resize((300, 300)).save(small, format="JPEG")
    return [truncated, random_bytes, empty], [png, grey, small]


def test_bad_images_in_training_error_by_default_and_are_listed_when_skipped(tmp_path):
    unreadable, odd = bad_image_folder(tmp_path / "gz2")
    with pytest.raises(GzooError, match=r"image .*\.jpg cannot be read \(.*\) \(and 2 more\); .*data.on_bad_image=skip"):
        train(make_cfg(tmp_path, tmp_path / "gz2"))
    assert not (tmp_path / "outputs/default").exists()

    train(make_cfg(tmp_path, tmp_path / "gz2", "data.on_bad_image=skip", "data.val_fraction=0.25"))
    listed = (tmp_path / "outputs/default/tiny/finetune/skipped_images.csv").read_text().splitlines()
    assert listed[0] == "path,reason" and sorted(line.split(",")[0] for line in listed[1:]) == sorted(map(str, unreadable))


def test_odd_but_readable_images_become_rgb_crops_of_the_right_size(tmp_path):
    from gzoo.data import GalaxyZooDataModule

    _, odd = bad_image_folder(tmp_path / "gz2")
    dm = GalaxyZooDataModule(root=str(tmp_path / "gz2"), image_size=32, num_workers=0, on_bad_image="skip", progress=False)
    dm.setup()
    everything = {int(i): (part, k) for part in ("train", "val") for k, i in enumerate(dm.ids(part))}
    for path in odd:  # PNG named .jpg, greyscale, 300x300
        part, k = everything[int(path.stem)]
        image = dm.dataset(part)[k]["image"]
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_bad_images_in_prediction_error_by_default_and_are_listed_when_skipped(tmp_path):
    import pandas as pd

    unreadable, odd = bad_image_folder(tmp_path / "gz2")
    train(make_cfg(tmp_path, write_kaggle(tmp_path / "good", n=16), "data.val_fraction=0.25"))
    ckpt = tmp_path / "outputs/default/tiny/finetune/checkpoints/best.ckpt"
    images = tmp_path / "gz2" / "images_training_rev1"
    with pytest.raises(GzooError, match=r"\.jpg"):
        predict(PredictOptions(ckpt=ckpt, images=images, out=tmp_path / "sub.csv", num_workers=0, progress=False))
    assert not (tmp_path / "sub.csv").exists()

    predict(PredictOptions(ckpt=ckpt, images=images, out=tmp_path / "sub.csv", num_workers=0, progress=False, on_bad_image="skip"))
    sub = pd.read_csv(tmp_path / "sub.csv")
    ids = set(sub.GalaxyID)
    assert {int(p.stem) for p in odd} <= ids  # PNG-named-.jpg, greyscale and 300x300 are predicted
    assert not {int(p.stem) for p in unreadable} & ids and len(sub) == 24 - 3
    assert sub.iloc[:, 1:].to_numpy().min() >= 0 and sub.iloc[:, 1:].to_numpy().max() <= 1
    listed = (tmp_path / "sub.csv.skipped.txt").read_text()
    assert all(p.name in listed for p in unreadable)
