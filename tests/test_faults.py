"""Run safety: a full disk during a checkpoint save, signals to the whole job, two runs in one folder,
a weights file never dropped, a checkpoint that knows its split, and inputs refused before anything is written."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from gzoo.data import make_loader, read_catalog
from gzoo.errors import GzooError, RunInterrupted
from gzoo.io import LOCK_NAME
from gzoo.train import train
from tests.conftest import ROOT, make_cfg, write_kaggle

RUN = "outputs/default/tiny/finetune"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_kaggle(tmp_path_factory.mktemp("gz2"), n=24, size=64)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# ----------------------------------------------------------------------------- a full disk during a checkpoint save


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_checkpoint_and_names_the_disk(tmp_path, data, monkeypatch):
    real_save, calls = torch.save, []

    def full_disk_after_epoch_0(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:  # epoch 0: best.ckpt and last.ckpt
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk_after_epoch_0)
    checkpoints = tmp_path / RUN / "checkpoints"
    with pytest.raises(GzooError) as stop:
        train(make_cfg(tmp_path, data, "trainer.max_epochs=2", "data.val_fraction=0.25"))
    said = str(stop.value)
    assert said.startswith(f"could not write checkpoint {checkpoints}/") and f"the disk holding {checkpoints} is full (No space left on device)" in said
    assert said.endswith("then continue with the same command plus resume=true.") and len(calls) == 3
    monkeypatch.undo()
    for name in ("best.ckpt", "last.ckpt"):  # the previous checkpoints are whole and load
        assert load(checkpoints / name)["epoch"] == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # no partial file beside them
    assert not (tmp_path / RUN / LOCK_NAME).exists()


def test_a_disk_that_fills_inside_torch_save_is_named_not_a_zip_writer_error(tmp_path, data, monkeypatch):
    """The real torch.save on a file whose write fails with ENOSPC part-way (as on a full filesystem, where
    torch's zip writer turns it into ``RuntimeError: unexpected pos``): the previous checkpoints load, the
    sentence names the disk, and no temporary file is left."""
    from gzoo import io

    real_open, calls = io.atomic_open, []

    class FillsUp:
        def __init__(self, f, room):
            self.f, self.room = f, room

        def write(self, b):
            if len(b) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(b)
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def full_after_epoch_0(path, mode="w", **kwargs):
        with real_open(path, mode, **kwargs) as f:
            calls.append(path)
            yield FillsUp(f, 1000) if str(path).endswith(".ckpt") and len([c for c in calls if str(c).endswith(".ckpt")]) > 2 else f

    monkeypatch.setattr(io, "atomic_open", full_after_epoch_0)
    checkpoints = tmp_path / RUN / "checkpoints"
    with pytest.raises(GzooError) as stop:
        train(make_cfg(tmp_path, data, "trainer.max_epochs=2", "data.val_fraction=0.25"))
    assert f"the disk holding {checkpoints} is full (No space left on device)" in str(stop.value)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file left
    assert all(load(checkpoints / n)["epoch"] == 0 for n in ("best.ckpt", "last.ckpt"))


# ----------------------------------------------------------------------------- signals


def test_a_signal_before_the_first_checkpoint_stops_at_a_batch_and_says_to_rerun(tmp_path, data, monkeypatch):
    from gzoo import module as gm

    real_step, steps = gm.GalaxyZooModule.training_step, []

    def ctrl_c_at_batch_1(self, batch, batch_idx):
        steps.append(batch_idx)
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this batch is computed
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(gm.GalaxyZooModule, "training_step", ctrl_c_at_batch_1)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunInterrupted) as stop:
        train(make_cfg(tmp_path, data, "data.val_fraction=0.25"))
    assert stop.value.status == 130 and steps == [0, 1]  # the batch under way finished; no other began
    assert str(stop.value) == (
        "stopped by SIGINT in epoch 0, before the first checkpoint, so there is nothing to resume from; run the same command again plus overwrite=true."
    )
    assert signal.getsignal(signal.SIGINT) == before and not (tmp_path / RUN / LOCK_NAME).exists()
    monkeypatch.undo()
    train(make_cfg(tmp_path, data, "data.val_fraction=0.25", "overwrite=true"))  # the advice works


class WorkerPid(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return os.getpid()


def test_dataloader_workers_ignore_sigint_and_sigterm_from_others_but_end_on_the_main_process_sigterm():
    batches = iter(make_loader(WorkerPid(), batch_size=1, num_workers=1, persistent_workers=True))
    pid = int(next(batches))
    for sig in ("-INT", "-TERM"):  # from another process, as a signal to the whole job comes
        subprocess.run(["kill", sig, str(pid)], check=True)
    time.sleep(0.5)
    assert int(next(batches)) == pid  # the worker is still there and still serves batches
    (worker,) = batches._workers
    worker.terminate()  # SIGTERM from the main process: how multiprocessing ends daemonic workers at exit
    worker.join(timeout=10)
    assert worker.exitcode == 0  # it ended (a worker that ignored it would hang the main process's exit)


# Exact repeatability on the CPU, with two loader workers: small batches, so a signal lands mid-epoch.
WORKERS = ["trainer.deterministic=true", "trainer.max_epochs=4", "data.val_fraction=0.25", "data.num_workers=2", "data.batch_size=1"]


@pytest.fixture(scope="module")
def uninterrupted_with_workers(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("ref")
    train(make_cfg(tmp, data, *WORKERS))
    return load(tmp / RUN / "checkpoints/last.ckpt")["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_cleanly_and_the_resumed_run_is_bit_identical(tmp_path, data, uninterrupted_with_workers, sig, status):
    """As SLURM, Kubernetes, systemd or `timeout` (SIGTERM) and Ctrl-C (SIGINT) do: every process of the job,
    DataLoader workers included, gets the signal; the run must stop at a batch, say what to do, and resume exactly."""
    out = tmp_path / "outputs"
    args = ["debug=tiny", *WORKERS, f"paths.output_root={out}", f"data.root={data}"]
    last = out / "default/tiny/finetune/checkpoints/last.ckpt"
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the tests' own process (conftest): the same sums, bit for bit
        proc = subprocess.Popen([sys.executable, "-m", "gzoo.train", *args], cwd=ROOT, stdout=so, stderr=se, start_new_session=True, env=one_thread)
        deadline = time.time() + 300
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.05)  # into epoch 1's batches
        workers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.killpg(proc.pid, sig)
        proc.wait(timeout=180)
    stderr = (tmp_path / "stderr").read_text()
    assert len(workers) >= 3, f"expected the main process and two workers in the group, saw {workers}"
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith("[gzoo]") and not line.startswith("[gzoo] warning:")]
    epoch = load(last)["epoch"]
    assert epoch < 3, "the run finished before it could be interrupted"
    (line,) = said
    stopped_in = re.fullmatch(
        rf"\[gzoo\] stopped by {signal.Signals(sig).name} in epoch (\d); {re.escape(str(last))} holds the last complete epoch; "
        r"continue with the same command plus resume=true\.",
        line,
    )
    assert stopped_in and int(stopped_in[1]) in (epoch, epoch + 1), line
    assert not (out / "default/tiny/finetune" / LOCK_NAME).exists()
    train(make_cfg(tmp_path, data, *WORKERS, "resume=true"))
    resumed = load(last)["state_dict"]
    assert resumed.keys() == uninterrupted_with_workers.keys()
    assert all(torch.equal(resumed[k], uninterrupted_with_workers[k]) for k in resumed)


def test_resuming_with_fewer_epochs_than_were_trained_is_one_sentence(tmp_path, data):
    train(make_cfg(tmp_path, data, "trainer.max_epochs=3", "data.val_fraction=0.25"))
    last = tmp_path / RUN / "checkpoints" / "last.ckpt"
    with pytest.raises(GzooError) as stop:
        train(make_cfg(tmp_path, data, "trainer.max_epochs=1", "data.val_fraction=0.25", "resume=true"))
    assert str(stop.value) == f"{last} was saved after epoch 2 (counting from 0), past trainer.max_epochs=1; raise trainer.max_epochs to continue it."
    train(make_cfg(tmp_path, data, "trainer.max_epochs=4", "data.val_fraction=0.25", "resume=true"))  # more epochs: it continues
    assert load(last)["epoch"] == 3


# ----------------------------------------------------------------------------- one run per folder


def test_a_run_folder_is_locked_while_a_run_writes_and_a_stale_lock_is_taken_over(tmp_path, data, monkeypatch):
    run = tmp_path / RUN
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": time.time(), "started_at": "2025-01-01 10:00:00", "command": "gzoo.train name=x"}
        (run / LOCK_NAME).write_text(json.dumps(lock))
        with pytest.raises(GzooError) as stop:
            train(make_cfg(tmp_path, data, "data.val_fraction=0.25"))
        assert str(stop.value) == (
            f"{run} is in use by another run (pid {holder.pid} on {socket.gethostname()}, started 2025-01-01 10:00:00: gzoo.train name=x); "
            f"wait for it to end, or pass name=<another name> to run beside it, or delete {run / LOCK_NAME} if that run is no longer running."
        )
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing of the second run written
    finally:
        holder.kill()  # not waited for: a zombie, which has ended as surely as a reaped process

    seen = {}
    real_fit = L.Trainer.fit

    def spy(self, *a, **k):
        seen["lock"] = json.loads((run / LOCK_NAME).read_text())
        return real_fit(self, *a, **k)

    monkeypatch.setattr(L.Trainer, "fit", spy)
    train(make_cfg(tmp_path, data, "data.val_fraction=0.25"))  # the dead holder's lock is taken over
    holder.wait()
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["host"] == socket.gethostname()
    assert not (run / LOCK_NAME).exists() and (run / "metrics.json").is_file()


def test_a_run_that_stops_before_writing_leaves_no_folder_behind(tmp_path, data):
    (bad := tmp_path / "bad").mkdir()
    (bad / "training_solutions_rev1.csv").write_text("GalaxyID\n")
    with pytest.raises(GzooError, match="wrong header"):
        train(make_cfg(tmp_path, bad))
    assert not (tmp_path / "outputs").exists()  # the lock and the folders made for it are gone


# ----------------------------------------------------------------------------- model.weights is never dropped


def test_model_weights_are_loaded_when_pretrained_is_false(tmp_path, data, monkeypatch):
    import timm

    body = timm.create_model("test_efficientnet", num_classes=0, pretrained=False)
    with torch.no_grad():
        for p in body.parameters():
            p.fill_(0.125)
    torch.save(body.state_dict(), tmp_path / "body.pth")

    class Seen(Exception):
        pass

    def spy(self, module, *a, **k):
        raise Seen(module.net.body.state_dict())

    monkeypatch.setattr(L.Trainer, "fit", spy)
    with pytest.raises(Seen) as seen:
        train(make_cfg(tmp_path, data, "model.pretrained=false", f"model.weights={tmp_path / 'body.pth'}"))
    trained_from = seen.value.args[0]
    assert trained_from.keys() == body.state_dict().keys()
    assert all(torch.equal(trained_from[k], v) for k, v in body.state_dict().items())


# ----------------------------------------------------------------------------- a checkpoint knows its split


def test_evaluate_refuses_a_config_that_does_not_belong_to_the_checkpoint(tmp_path, trained_run):
    from gzoo.evaluate import EvaluateOptions, check_split, evaluate

    ckpt, run_dir = trained_run["ckpt"], trained_run["run_dir"]
    record = load(ckpt)["gzoo_split"]
    assert record["root"] == str(trained_run["data"].resolve()) and record["split_seed"] == 1234 and record["test_fraction"] == 0.2
    cfg = OmegaConf.load(run_dir / "config.yaml")
    check_split(ckpt, cfg, run_dir / "config.yaml")  # its own config passes

    other = copy.deepcopy(cfg)
    other.data.split_seed = 7
    OmegaConf.save(other, tmp_path / "other.yaml")
    with pytest.raises(GzooError) as stop:
        evaluate(EvaluateOptions(ckpt=ckpt, config=tmp_path / "other.yaml", out=tmp_path / "eval", num_workers=0, progress=False))
    assert str(stop.value) == (
        f"{tmp_path / 'other.yaml'} does not belong to checkpoint {ckpt}: the checkpoint was trained with data.split_seed=1234, not 7, "
        "so its split differs and split=val could score galaxies it trained on; pass config=<the config.yaml of the run that wrote it>."
    )
    assert not (tmp_path / "eval").exists()

    elsewhere = tmp_path / "copy"  # the same data in another folder is the same split
    elsewhere.mkdir()
    (elsewhere / "training_solutions_rev1.csv").write_bytes((trained_run["data"] / "training_solutions_rev1.csv").read_bytes())
    moved = copy.deepcopy(cfg)
    moved.data.root = str(elsewhere)
    check_split(ckpt, moved, tmp_path / "moved.yaml")
    (elsewhere / "training_solutions_rev1.csv").write_text(
        read_catalog(trained_run["data"] / "training_solutions_rev1.csv", "mask").iloc[:30].to_csv(index=False)
    )
    with pytest.raises(GzooError, match=r"trained with data.root=.* \(labels file SHA-256 [0-9a-f]{12}\.\.\.\), not "):
        check_split(ckpt, moved, tmp_path / "moved.yaml")


# ----------------------------------------------------------------------------- labels files


def test_a_labels_row_cut_short_is_refused_naming_the_row(tmp_path):
    write_kaggle(tmp_path, n=6, size=32)
    csv = tmp_path / "training_solutions_rev1.csv"
    lines = csv.read_text().splitlines()
    lines[4] = ",".join(lines[4].split(",")[:20])  # row 5: the first 20 of 38 fields
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(GzooError) as stop:
        read_catalog(csv, "mask")
    assert str(stop.value) == (
        f"labels file {csv}, row 5 has 20 fields, expected 38 (the row is cut short); complete it or remove it (an unknown value is an empty field between commas)."
    )
    lines[4] = ",".join(lines[4].split(",")[:1] + [""] * 37)  # every value unknown: still accepted with mask
    csv.write_text("\n".join(lines) + "\n")
    assert read_catalog(csv, "mask").iloc[3, 1:].isna().all()


def test_an_empty_labels_file_and_a_missing_one_say_what_to_set(tmp_path):
    (tmp_path / "labels.csv").write_bytes(b"")
    with pytest.raises(GzooError) as stop:
        read_catalog(tmp_path / "labels.csv")
    assert str(stop.value) == (
        f"labels file {tmp_path / 'labels.csv'} is empty (0 bytes, no header); point data.labels_csv at the labels file, or restore this one."
    )
    with pytest.raises(GzooError) as stop:
        read_catalog(tmp_path / "training_solutions.csv")
    assert str(stop.value) == (
        f"labels file {tmp_path / 'training_solutions.csv'} not found; set data.labels_csv to the labels file's name in {tmp_path}, "
        "or data.root (or $GZOO_DATA) to the folder holding it."
    )


# ----------------------------------------------------------------------------- options checked before anything runs


@pytest.mark.parametrize(
    "override, said",
    [
        (
            "data.val_fraction=0",
            "data.val_fraction=0.0 must be a number between 0 and 1 (e.g. 0.15): the best checkpoint, early stopping and the plateau schedule "
            "follow val/rmse, so a run needs validation galaxies.",
        ),
        ("data.batch_size=-4", "data.batch_size=-4 must be >= 1."),
        ("model.image_size=0", "model.image_size=0 must be >= 1."),
        ("optim.lr=0", "optim.lr=0.0 must be > 0."),
        ("phase.cache_views=9", "phase.cache_views=9 must be in [1, 8]."),
        ("model.head=forest", "model.head=forest is not one of sigmoid, tree."),
        ("trainer.limit_val_batches=0", "trainer.limit_val_batches=0 must be null, a positive integer or a fraction in (0, 1]"),
    ],
)
def test_a_bad_option_is_refused_before_anything_is_read_or_written(tmp_path, override, said):
    with pytest.raises(GzooError) as stop:
        train(make_cfg(tmp_path, tmp_path / "no-data-here", override))  # the data would be refused next: the options come first
    assert str(stop.value).startswith(said)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "override, said",
    [
        ("data.batch_size=abc", "Error merging override data.batch_size=abc Value 'abc' of type 'str' could not be converted to Integer"),
        ("data.num_workers=1.5", "Error merging override data.num_workers=1.5 Value '1.5' of type 'float' could not be converted to Integer"),
        ("model.pretrained=maybe", "Error merging override model.pretrained=maybe Value 'maybe' is not a valid bool"),
        ("data.no_such_key=1", "Could not override 'data.no_such_key'."),
    ],
)
def test_a_wrong_type_or_unknown_key_is_one_sentence_from_the_schema(tmp_path, override, said, capsys):
    """The schema (gzoo/options.py) types every option, so composition refuses a wrong type: the command line says so in one line."""
    from gzoo.train import check_overrides

    with pytest.raises(SystemExit) as stop:
        check_overrides(["debug=tiny", f"paths.output_root={tmp_path / 'outputs'}", override])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"[gzoo] error: {said}") and line.endswith("python -m gzoo.train --help lists the groups and keys."), line
    assert not (tmp_path / "outputs").exists()


# ----------------------------------------------------------------------------- an unwritable output folder, a GPU that is not there


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody may write into: read-only permissions, or (for root, whom permissions do not stop) sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
        return
    folder = Path("/sys/gzoo-test-output")
    try:
        folder.mkdir()
        folder.rmdir()
        pytest.skip("no unwritable folder to try (root, and /sys is writable)")
    except OSError:
        yield folder


def test_an_unwritable_output_folder_is_one_sentence(tmp_path, data, unwritable, capsys):
    from gzoo.train import check_overrides

    with pytest.raises(GzooError, match=r"could not write the run folder .* is not writable \(.*\); set paths.output_root to a folder you can write to\.$"):
        train(make_cfg(tmp_path, data, f"paths.output_root={unwritable}"))
    with pytest.raises(SystemExit) as stop:  # the command line: before Hydra writes its own records there
        check_overrides(["debug=tiny", f"paths.output_root={unwritable}"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("[gzoo] error: could not write ") and line.endswith("set paths.output_root to a folder you can write to.")


def test_trainer_gpu_without_a_gpu_is_refused_before_the_data_scan(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GzooError) as stop:
        train(make_cfg(tmp_path, tmp_path / "no-data-here", "trainer=gpu", "trainer.accelerator=gpu"))  # debug=tiny sets cpu
    assert str(stop.value) == (
        "trainer.accelerator=gpu (trainer=gpu or trainer=ddp) but this machine has no usable CUDA GPU; "
        "run with trainer=default (the CPU here, a GPU where there is one) or on a machine with a GPU."
    )


def test_every_torch_file_gzoo_writes_names_a_full_disk(tmp_path, monkeypatch):
    """atomic_torch_save (the feature cache, converted weights, checkpoints): the write's ENOSPC, not torch's
    RuntimeError, ends in one sentence with the caller's advice; nothing is left under the name or beside it."""
    from gzoo import io

    real_open = io.atomic_open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def full(path, mode="w", **kwargs):
        with real_open(path, mode, **kwargs) as f:
            yield Full(f)

    monkeypatch.setattr(io, "atomic_open", full)
    target = tmp_path / "features.pt"
    with pytest.raises(GzooError) as stop:
        io.atomic_torch_save({"x": torch.zeros(1000)}, target, "the feature cache", "free space there")
    assert str(stop.value) == f"could not write the feature cache {target}: the disk holding {tmp_path} is full (No space left on device); free space there."
    with pytest.raises(OSError):  # without advice the OSError itself
        io.atomic_torch_save({"x": torch.zeros(1000)}, target)
    assert list(tmp_path.iterdir()) == []
