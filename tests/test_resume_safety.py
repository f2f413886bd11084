"""Resume, rerun and continue never change the science: a resumed run takes its checkpoint's weights
before anything is computed from them, refuses another split or network, keeps its history; an earlier phase is
read only when finished and whole; configs record absolute paths; null groups and failing sweep jobs are said."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import timm
import torch

from gzoo.errors import GzooError, RunInterrupted
from gzoo.io import lock_folder
from gzoo.train import null_groups, train
from tests.conftest import ROOT, make_cfg, write_kaggle

RUN = "outputs/default/tiny/finetune"
SMALL = ["data.val_fraction=0.25", "trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_kaggle(tmp_path_factory.mktemp("gz2"), n=24, size=64)


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, data):
    """One finished 2-epoch run (debug=tiny), shared by the tests that only read it or resume a copy of it."""
    tmp = tmp_path_factory.mktemp("run")
    metrics = train(make_cfg(tmp, data, *SMALL))
    return tmp, metrics


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


class SignalAt(L.Callback):
    """Sends this process a signal (SIGTERM, as SLURM does; or SIGKILL, as the OOM killer does) when the given
    epoch starts: a kill after the epochs before it."""

    def __init__(self, epoch: int, signum: int = signal.SIGTERM):
        self.epoch, self.signum = epoch, signum

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


# ----------------------------------------------------------------------------- a resumed feature-cached finetune


@pytest.fixture(scope="module")
def body_file(tmp_path_factory):
    """A local state dict of timm's tiny test network, other than the weights a seeded build starts from."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "body.pth"
    torch.save(timm.create_model("test_efficientnet", pretrained=False, num_classes=0).state_dict(), path)
    return path


CACHED = ["phase.cache_features=true", "phase.cache_views=2", "data.val_fraction=0.25", "trainer.max_epochs=4", "optim=best"]


def test_a_resumed_feature_cached_finetune_trains_on_its_own_body_and_keeps_its_cache(tmp_path, data, body_file, capsys):
    """Before: the resumed module was built without model.weights, its random body computed a new cache (the good
    one deleted) and the tail trained on noise. Now the checkpoint's weights are in place before the cache is keyed."""
    args = [*CACHED, f"model.weights={body_file}"]
    with pytest.raises(RunInterrupted):
        train(make_cfg(tmp_path, data, *args, "+callbacks.stop._target_=tests.test_resume_safety.SignalAt", "+callbacks.stop.epoch=2"))
    (cache,) = (tmp_path / RUN / "features").glob("features-*.pt")
    capsys.readouterr()
    train(make_cfg(tmp_path, data, *args, "resume=true"))
    assert f"features of the frozen body from {cache}" in capsys.readouterr().out
    assert list((tmp_path / RUN / "features").glob("features-*.pt")) == [cache]
    body = {k.removeprefix("net.body."): v for k, v in load(tmp_path / RUN / "checkpoints/last.ckpt")["state_dict"].items() if k.startswith("net.body.")}
    given = torch.load(body_file)
    assert all(torch.equal(body[k], given[k]) for k in given)  # the frozen body is the one the user gave, after the resume too


def test_a_damaged_feature_cache_is_said_and_computed_again_and_dead_builds_leave_nothing(tmp_path, data, capsys):
    args = ["phase.cache_features=true", "phase.cache_views=2", "data.val_fraction=0.25"]
    train(make_cfg(tmp_path, data, *args))
    (cache,) = (tmp_path / RUN / "features").glob("features-*.pt")
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])  # cut short, as by a full disk or a copy stopped halfway
    dead = cache.with_name(f".{cache.name}.999999999.tmp")  # a killed build's temporary file (no such process)
    dead.write_bytes(b"half a cache")
    capsys.readouterr()
    train(make_cfg(tmp_path, data, *args, "overwrite=true"))
    said = capsys.readouterr().out
    assert f"the feature cache {cache} cannot be used (" in said and "computing it again" in said
    assert cache.read_bytes() == whole and not dead.exists()


@pytest.mark.slow
def test_a_feature_cached_finetune_killed_after_its_second_epoch_resumes_to_the_same_weights(tmp_path, data, body_file):
    """Exact resume of phase.cache_features=true with optim=best (a cosine schedule over the run's length), killed
    by SIGTERM after its second epoch: the final weights are those of a run that never stopped, bit for bit."""
    args = [*CACHED, f"model.weights={body_file}", "trainer.deterministic=true"]
    train(make_cfg(tmp_path / "whole", data, *args))
    whole = load(tmp_path / "whole" / RUN / "checkpoints/last.ckpt")
    with pytest.raises(RunInterrupted):
        train(make_cfg(tmp_path / "parts", data, *args, "+callbacks.stop._target_=tests.test_resume_safety.SignalAt", "+callbacks.stop.epoch=2"))
    assert load(tmp_path / "parts" / RUN / "checkpoints/last.ckpt")["epoch"] == 1  # it stopped after its second epoch
    metrics = train(make_cfg(tmp_path / "parts", data, *args, "resume=true"))
    parts = load(tmp_path / "parts" / RUN / "checkpoints/last.ckpt")
    assert parts["epoch"] == whole["epoch"] == 3
    assert parts["state_dict"].keys() == whole["state_dict"].keys()
    assert all(torch.equal(parts["state_dict"][k], whole["state_dict"][k]) for k in whole["state_dict"])
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_feature_cached_finetune_killed_by_sigkill_after_its_second_epoch_resumes_to_the_same_weights(tmp_path, data, body_file):
    """The same through the command line, killed outright (SIGKILL: no handler, no last words, a stale lock left)."""
    args = [*CACHED, f"model.weights={body_file}", "trainer.deterministic=true"]
    train(make_cfg(tmp_path / "whole", data, *args))
    whole = load(tmp_path / "whole" / RUN / "checkpoints/last.ckpt")["state_dict"]
    cli = ["debug=tiny", f"paths.output_root={tmp_path / 'parts' / 'outputs'}", f"data.root={data}", *args]
    stop = ["+callbacks.stop._target_=tests.test_resume_safety.SignalAt", "+callbacks.stop.epoch=2", f"+callbacks.stop.signum={int(signal.SIGKILL)}"]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the tests' own process (conftest): the same sums, bit for bit
    killed = subprocess.run([sys.executable, "-m", "gzoo.train", *cli, *stop], cwd=ROOT, capture_output=True, text=True, timeout=300, env=one_thread)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load(tmp_path / "parts" / RUN / "checkpoints/last.ckpt")["epoch"] == 1
    train(make_cfg(tmp_path / "parts", data, *args, "resume=true"))
    parts = load(tmp_path / "parts" / RUN / "checkpoints/last.ckpt")["state_dict"]
    assert max(float((parts[k].float() - whole[k].float()).abs().max()) for k in whole) == 0.0


# ----------------------------------------------------------------------------- a resume that would change the run


@pytest.mark.parametrize(
    "change, said",
    [
        ("data.split_seed=7", "was trained with data.split_seed=1234, not 7"),
        ("data.limit=20", "was trained with data.limit=null, not 20"),
        ("data.train_limit=10", "was trained with data.train_limit=null, not 10"),
        ("data.val_fraction=0.5", "was trained with data.val_fraction=0.25, not 0.5"),
        ("model.image_size=48", "holds a network with model.image_size=32, not 48"),
        ("model.hidden=16", "holds a network with model.hidden=64, not 16"),
        ("data.crop_fraction=0.6", "holds a network with data.crop_fraction=0.5, not 0.6"),
    ],
)
def test_a_resume_with_another_split_or_network_is_refused_naming_both_values(tmp_path, two_epochs, data, change, said):
    run, _ = two_epochs
    config = (run / RUN / "config.yaml").read_text()
    with pytest.raises(GzooError) as refused:
        train(make_cfg(run, data, *SMALL, "trainer.max_epochs=3", "resume=true", change))
    assert said in str(refused.value) and str(refused.value).startswith("resume=true: ")
    assert (run / RUN / "config.yaml").read_text() == config  # nothing rewritten
    assert load(run / RUN / "checkpoints/last.ckpt")["epoch"] == 1


@pytest.mark.slow
def test_resume_with_a_changed_split_seed_is_refused_through_the_command(tmp_path, data):
    args = ["debug=tiny", f"paths.output_root={tmp_path}", f"data.root={data}", *SMALL]
    run = lambda *more: subprocess.run([sys.executable, "-m", "gzoo.train", *args, *more], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run().returncode == 0
    refused = run("resume=true", "trainer.max_epochs=3", "data.split_seed=99")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was trained with data.split_seed=1234, not 99; a resumed run keeps the split it started with" in refused.stderr


# ----------------------------------------------------------------------------- the whole history after a resume


def test_metrics_history_after_a_resume_holds_every_epoch(tmp_path, data):
    train(make_cfg(tmp_path, data, *SMALL))
    metrics = train(make_cfg(tmp_path, data, *SMALL, "trainer.max_epochs=3", "resume=true"))
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert all(h["val/rmse"] is not None for h in metrics["history"])
    assert json.loads((tmp_path / RUN / "metrics.json").read_text())["history"] == metrics["history"]


# ----------------------------------------------------------------------------- no circular advice


def test_a_run_stopped_before_its_first_checkpoint_gets_advice_that_leads_somewhere(tmp_path, data):
    (tmp_path / RUN).mkdir(parents=True)
    (tmp_path / RUN / "config.yaml").write_text("a run that was killed in its first epoch\n")
    with pytest.raises(GzooError) as resumed:
        train(make_cfg(tmp_path, data, *SMALL, "resume=true"))
    assert "stopped before its first checkpoint" in str(resumed.value) and "overwrite=true instead of resume=true" in str(resumed.value)
    with pytest.raises(GzooError) as again:
        train(make_cfg(tmp_path, data, *SMALL))
    assert "pass overwrite=true to start it afresh" in str(again.value) and "resume=true" not in str(again.value)
    train(make_cfg(tmp_path, data, *SMALL, "overwrite=true"))  # the advice works
    assert (tmp_path / RUN / "checkpoints/last.ckpt").is_file()


# ----------------------------------------------------------------------------- an earlier phase's checkpoint


def test_an_unusable_checkpoint_is_one_sentence_and_leaves_no_folder(tmp_path, two_epochs, data):
    run, metrics = two_epochs
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(Path(metrics["best_checkpoint"]).read_bytes()[:5000])
    with pytest.raises(GzooError, match=r"^phase.init_from=.*cut.ckpt cannot be read as a checkpoint .*point phase.init_from at a complete checkpoint"):
        train(make_cfg(tmp_path, data, *SMALL, "phase=fulltune", f"phase.init_from={cut}"))
    with pytest.raises(GzooError, match=r"^resume=.*cut.ckpt cannot be read as a checkpoint"):
        train(make_cfg(tmp_path, data, *SMALL, f"resume={cut}"))
    other = tmp_path / "other"  # another model's checkpoint, given to resume=
    train(make_cfg(other, data, *SMALL, "model.hidden=8", "name=other"))
    with pytest.raises(GzooError, match=r"holds a network with model.hidden=8, not 64"):
        train(make_cfg(tmp_path, data, *SMALL, f"resume={other}/outputs/other/tiny/finetune/checkpoints/last.ckpt"))
    assert not (tmp_path / "outputs" / "default").exists()  # no half-made run folder blocks the next run
    train(make_cfg(tmp_path, data, *SMALL))


def test_init_from_with_other_labels_loads_the_body_and_starts_a_new_tail(tmp_path, two_epochs, data, capsys):
    _, metrics = two_epochs
    catalog = tmp_path / "own.csv"
    ids = sorted(int(p.stem) for p in (data / "images_training_rev1").glob("*.jpg"))
    rows = [f"{i},{data / 'images_training_rev1' / f'{i}.jpg'},{(k % 3) / 2}" for k, i in enumerate(ids)]
    catalog.write_text("id_str,file_loc,is_bar\n" + "\n".join(rows) + "\n")
    own = ["data=catalog", f"data.catalog={catalog}", "data.labels=[is_bar]", "phase=fulltune", f"phase.init_from={metrics['best_checkpoint']}"]
    result = train(make_cfg(tmp_path, data, *SMALL, *own))
    assert "was trained with data.labels=gz2, not [is_bar]: its body is loaded" in capsys.readouterr().out
    theirs = load(metrics["best_checkpoint"])["state_dict"]
    ours = load(tmp_path / "outputs/default/tiny/fulltune/checkpoints/last.ckpt")["state_dict"]
    assert ours["net.tail.3.weight"].shape[0] == 1 and theirs["net.tail.3.weight"].shape[0] == 37
    assert result["val/rmse"] == result["val/rmse"]  # a number: it trained


def test_init_from_a_run_that_is_still_running_is_refused(tmp_path, two_epochs, data):
    run, metrics = two_epochs
    with lock_folder(run / RUN):  # the finetune's folder, as its running process holds it
        with pytest.raises(GzooError, match=r"belongs to a run that is still running \(pid \d+ .*wait for it to end"):
            train(make_cfg(tmp_path, data, *SMALL, "phase=fulltune", f"phase.init_from={metrics['best_checkpoint']}"))


# ----------------------------------------------------------------------------- absolute paths in the run's config


def test_the_run_config_records_absolute_paths_so_it_works_from_any_folder(tmp_path, data, monkeypatch):
    monkeypatch.chdir(data.parent)
    train(make_cfg(Path("rel"), Path(data.name), *SMALL))
    config = (data.parent / "rel" / RUN / "config.yaml").read_text()
    assert f"root: {data}\n" in config and f"output_root: {data.parent / 'rel' / 'outputs'}\n" in config
    monkeypatch.chdir(tmp_path)
    from gzoo.evaluate import main as evaluate

    assert evaluate([f"ckpt={data.parent / 'rel' / RUN / 'checkpoints/best.ckpt'}", f"out={tmp_path / 'eval'}", "tta=[1]", "num_workers=0"]) == 0


# ----------------------------------------------------------------------------- groups set to null


@pytest.mark.parametrize("override", ["logger=null", "callbacks=null", "~logger", "~callbacks"])
def test_a_group_set_to_null_or_removed_trains(tmp_path, data, override):
    metrics = train(make_cfg(tmp_path, data, "data.val_fraction=0.25", *null_groups([override])))
    assert metrics["epochs"] == 1 and Path(metrics["best_checkpoint"]).is_file()


def test_null_groups_are_read_as_hydra_removes_a_group():
    assert null_groups(["logger=null", "callbacks=null", "model.weights=null", "~logger"]) == ["~logger", "~callbacks", "model.weights=null", "~logger"]


# ----------------------------------------------------------------------------- a sweep goes on after a failed job


@pytest.mark.slow
def test_a_sweep_goes_on_after_a_job_that_fails_a_check_and_lists_it(tmp_path, data):
    args = ["-m", "debug=tiny", f"paths.output_root={tmp_path}", f"data.root={data}", "data.val_fraction=0.25", "name=a,b", "data.limit=1,24"]
    done = subprocess.run([sys.executable, "-m", "gzoo.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "[gzoo] error: 2 jobs of the sweep stopped" in done.stderr
    assert done.stderr.count("1 galaxies are too few to split") == 4  # said when each job stops, and again in the list
    assert sorted(p.parts[-5] for p in tmp_path.glob("*/tiny/finetune/checkpoints/last.ckpt")) == ["a", "b"]  # the good jobs ran, the later one too
