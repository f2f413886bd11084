"""End to end: the real config, shrunk, through gzoo.train.train()."""

import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from gzoo import schema
from gzoo.data import read_catalog, split_ids
from gzoo.errors import GzooError
from gzoo.images import load_image
from gzoo.module import load_net
from gzoo.train import train
from gzoo.transforms import eval_transform
from tests.conftest import ROOT, make_cfg, write_kaggle


@pytest.fixture(scope="module")
def masked_data(tmp_path_factory):
    return write_kaggle(tmp_path_factory.mktemp("gz2"), n=48, unknown=0.15)


def numpy_val_rmse(ckpt, data_root, cfg):
    """sqrt(mean((p - a)^2)) over the known values of the whole validation part, computed outside Lightning."""
    net = load_net(ckpt)
    cat = read_catalog(data_root / "training_solutions_rev1.csv", "mask").set_index("GalaxyID")
    val_ids = split_ids(cat.index.to_numpy(), cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)["val"]
    tf = eval_transform(32, 0.5)
    images = [tf(image=load_image(data_root / "images_training_rev1" / f"{i}.jpg"))["image"] for i in val_ids]
    with torch.no_grad():
        preds = net(torch.stack(images)).numpy().astype(np.float64)
    truth = cat.loc[val_ids, schema.COLUMNS].to_numpy()
    known = ~np.isnan(truth)
    return float(np.sqrt(((preds - truth)[known] ** 2).mean()))


def test_finetune_then_fulltune(tmp_path, masked_data, monkeypatch):
    cfg = make_cfg(tmp_path, masked_data, "data.missing_labels=mask", "data.val_fraction=0.25", "trainer.max_epochs=2")
    metrics = train(cfg)
    run = tmp_path / "outputs/default/tiny/finetune"
    assert (run / "checkpoints/best.ckpt").is_file() and (run / "checkpoints/last.ckpt").is_file()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    # the logged val/rmse of the best epoch is the plain RMSE over the known values of the validation set
    assert metrics["val/rmse"] == pytest.approx(numpy_val_rmse(run / "checkpoints/best.ckpt", masked_data, cfg), abs=1e-6)
    assert 0 < metrics["val/rmse_baseline"] < 1

    # fulltune: the weights at the start of fit are those of the finetune checkpoint, and all are trainable
    seen = {}
    real_fit = L.Trainer.fit

    def spy_fit(self, model, *a, **k):
        seen["state"] = {k_: v.clone() for k_, v in model.state_dict().items()}
        seen["frozen"] = [n for n, p in model.named_parameters() if not p.requires_grad]
        return real_fit(self, model, *a, **k)

    monkeypatch.setattr(L.Trainer, "fit", spy_fit)
    train(make_cfg(tmp_path, masked_data, "data.missing_labels=mask", "data.val_fraction=0.25", "phase=fulltune"))
    finetuned = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert seen["state"].keys() == finetuned.keys()
    assert all(torch.equal(seen["state"][k], v) for k, v in finetuned.items())
    assert seen["frozen"] == []
    assert (tmp_path / "outputs/default/tiny/fulltune/checkpoints/best.ckpt").is_file()


def test_fulltune_without_finetune_says_which_command_makes_it(tmp_path, kaggle_dir):
    with pytest.raises(
        GzooError, match=r"finetune/checkpoints/best.ckpt, which does not exist; make it first with `python -m gzoo.train phase=finetune model=tiny"
    ):
        train(make_cfg(tmp_path, kaggle_dir, "phase=fulltune"))


def test_an_earlier_run_is_not_overwritten_unless_asked(tmp_path, kaggle_dir):
    train(make_cfg(tmp_path, kaggle_dir))
    best = tmp_path / "outputs/default/tiny/finetune/checkpoints/best.ckpt"
    stamp = best.stat().st_mtime_ns
    with pytest.raises(GzooError, match="already holds a run; pass resume=true to continue it, overwrite=true to replace it"):
        train(make_cfg(tmp_path, kaggle_dir))
    assert best.stat().st_mtime_ns == stamp
    train(make_cfg(tmp_path, kaggle_dir, "overwrite=true"))
    assert best.stat().st_mtime_ns != stamp and not list(best.parent.glob("best-v*.ckpt"))


def test_held_out_test_part_is_scored_with_the_best_checkpoint(tmp_path, kaggle_dir):
    metrics = train(make_cfg(tmp_path, kaggle_dir, "data.test_fraction=0.2"))
    assert 0 < metrics["test/rmse"] < 1 and 0 < metrics["test/rmse_baseline"] < 1


def test_bad_data_writes_nothing(tmp_path, kaggle_dir):
    (kaggle_dir / "images_training_rev1" / "100007.jpg").unlink()
    with pytest.raises(GzooError, match="no image"):
        train(make_cfg(tmp_path, kaggle_dir))
    assert not (tmp_path / "outputs/default").exists()


def test_command_line_user_error_is_one_sentence_without_traceback(tmp_path, kaggle_dir):
    csv = kaggle_dir / "training_solutions_rev1.csv"
    csv.write_text(csv.read_text().replace("Class1.1", "Class1_1", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "gzoo.train", "debug=tiny", f"data.root={kaggle_dir}", f"paths.output_root={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[gzoo] error:")]
    assert errors == [
        "[gzoo] error: labels file "
        + str(csv)
        + " has the wrong header: column 2 is 'Class1_1', expected 'Class1.1' (expected GalaxyID then Class1.1 ... Class11.6 in Kaggle order)."
    ]
    # The [gzoo] messages also reach Hydra's log file of the launch (through Python logging), with their level.
    (log,) = tmp_path.glob("hydra/*/train.log")
    text = log.read_text()
    assert "[gzoo][INFO] - finetune of test_efficientnet" in text and "[gzoo][ERROR] - error: labels file" in text


@pytest.mark.parametrize(
    "override, said",
    [
        ("foo=1", "Could not override 'foo'. Key 'foo' not in 'RunOptions'"),
        ("model=b9", "Could not find 'model/b9' Available options in 'model': b0, b1, b2, b3, b4, b5, b6, b7"),
        ("data.batch_size=[1", "no viable alternative at input '[1'"),
    ],
)
def test_a_bad_override_is_one_sentence_and_status_2_before_anything_runs(override, said, capsys):
    from gzoo.train import check_overrides

    with pytest.raises(SystemExit) as stop:
        check_overrides([override])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("[gzoo] error: ") and said in line and line.endswith("python -m gzoo.train --help lists the groups and keys.")
    check_overrides(["debug=tiny", "hydra.run.dir=/tmp/x", "experiment=paper_b0"])  # good ones pass (negative control)


def test_a_body_from_random_weights_learns_its_batchnorm_statistics_in_fulltune(tmp_path, kaggle_dir, capsys):
    """phase.freeze_bn_stats keeps a trained body's statistics; from scratch (no pretrained weights, no
    model.weights, no init_from) there are none to keep, so BatchNorm trains as usual and the log says so."""
    from gzoo.train import build_module

    scratch = make_cfg(tmp_path, kaggle_dir, "phase=fulltune", "phase.init_from=null", "model.pretrained=false")
    assert scratch.phase.freeze_bn_stats
    module = build_module(scratch, pretrained=True).train()
    bn = [m for m in module.net.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.training for m in bn)
    assert "its BatchNorm layers learn their statistics" in capsys.readouterr().out
    trained = make_cfg(tmp_path, kaggle_dir, "phase=fulltune")  # from the finetune checkpoint: the statistics stay
    module = build_module(trained, pretrained=False).train()
    assert not any(m.training for m in module.net.body.modules() if isinstance(m, torch.nn.BatchNorm2d))
