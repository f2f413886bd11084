"""The recipe's start and finish: the tail starts at the training mean, the frozen body's features are
cached, the optimiser groups (paper, best), the honest warnings and the 8-view TTA score at the end."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gzoo import optim as go
from gzoo.data import GalaxyZooDataModule
from gzoo.errors import GzooError
from gzoo.feature_cache import VIEW_ORDER, feature_datamodule
from gzoo.inference import dihedral_views, predict_loader
from gzoo.metrics import rmse
from gzoo.module import GalaxyZooModule, load_net
from gzoo.net import GalaxyNet
from gzoo.train import train
from tests.conftest import make_cfg, write_kaggle

QUICK = ["tta8_at_end=false", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_kaggle(tmp_path_factory.mktemp("gz2"), n=48)


# ----------------------------------------------------------------------------- the tail starts at the mean


def test_epoch_0_starts_at_the_baseline(tmp_path, data):
    """With the bias start, one epoch of a tiny run ends at or below predict-the-mean; without it, far above."""
    started = train(make_cfg(tmp_path, data, *QUICK, "optim.lr=3e-3", "name=mean"))
    assert started["history"][0]["val/rmse"] <= started["val/rmse_baseline"]
    default = train(make_cfg(tmp_path, data, *QUICK, "optim.lr=3e-3", "model.start_at_mean=false", "name=half"))
    assert default["history"][0]["val/rmse"] > 2 * default["val/rmse_baseline"]  # negative control: 0.5 everywhere


@pytest.mark.parametrize("head", ["sigmoid", "tree"])
def test_start_at_predicts_the_mean_with_a_silent_hidden_layer(head):
    rng = np.random.default_rng(0)
    from tests.conftest import random_fractions

    mean = random_fractions(200, rng).mean(axis=0)
    net = GalaxyNet("test_efficientnet", pretrained=False, image_size=32, head=head).start_at(mean).eval()
    torch.nn.init.zeros_(net.tail[-1].weight)  # isolate the bias: the output is then the head of the bias alone
    pred = net.from_features(torch.zeros(1, net.body.num_features))[0].detach().double().numpy()
    assert np.abs(pred - mean).max() < (1e-6 if head == "sigmoid" else 0.05)  # the tree head's product of shares is near the mean
    assert np.abs(GalaxyNet("test_efficientnet", pretrained=False, image_size=32).tail[-1].bias.detach().numpy()).max() < 1  # default: ~0.5 out


# ----------------------------------------------------------------------------- the feature cache


@pytest.fixture
def tiny(data):
    dm = GalaxyZooDataModule(data, image_size=32, val_fraction=0.25, batch_size=8, num_workers=0, progress=False)
    dm.setup()
    return GalaxyNet("test_efficientnet", pretrained=False, image_size=32).eval(), dm


def test_the_cache_takes_the_dihedral_views_in_its_order():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    every = dihedral_views(x)  # TTA-8's views; view v: v % 4 quarter turns of x, or of its mirror for v >= 4
    expected = torch.stack([torch.rot90(m, k, dims=(-2, -1)) for m in (x, x.flip(-1)) for k in range(4)], dim=1)
    assert torch.equal(every, expected)
    assert torch.equal(dihedral_views(x, VIEW_ORDER), every[:, list(VIEW_ORDER)])  # the cache's views: the same pixels
    assert torch.equal(dihedral_views(x, VIEW_ORDER[:1])[:, 0], x) and len(set(VIEW_ORDER)) == 8
    assert not torch.equal(dihedral_views(x, VIEW_ORDER[:2]), every[:, :2])  # negative control: the order matters


def test_cached_features_are_the_bodys_features_of_each_view(tmp_path, tiny):
    net, dm = tiny
    fdm = feature_datamodule(net, dm, 3, tmp_path)
    i = 5
    image = dm.dataset("train", views=(0.0,))[i]["image"]  # (1, 3, S, S): the evaluation view
    with torch.no_grad():
        expected = net.features(dihedral_views(image, VIEW_ORDER[:3])[0]).half()
    close = lambda a, b: torch.allclose(a.float(), b.float(), rtol=2e-3, atol=1e-5)  # float16, and other batch shapes
    assert close(fdm.train_set.features[i], expected)
    assert not close(fdm.train_set.features[i + 1], expected)  # negative control: another galaxy
    val_image = dm.dataset("val")[0]["image"][None]
    with torch.no_grad():
        assert close(fdm.val_set[0]["features"], net.features(val_image)[0])
    drawn = [fdm.train_set[(i, epoch)]["features"] for epoch in range(40)]
    views = {int((expected.float() - f).abs().sum(1).argmin()) for f in drawn}
    assert views == {0, 1, 2}  # each epoch draws one of the cached views


def test_the_cache_is_reused_and_rebuilt_when_its_inputs_change(tmp_path, tiny, data, capsys):
    net, dm = tiny
    feature_datamodule(net, dm, 2, tmp_path)
    (first,) = tmp_path.glob("features-*.pt")
    capsys.readouterr()
    feature_datamodule(net, dm, 2, tmp_path)
    assert "features of the frozen body from" in capsys.readouterr().out and list(tmp_path.glob("features-*.pt")) == [first]
    feature_datamodule(net, dm, 4, tmp_path)  # other views
    (second,) = tmp_path.glob("features-*.pt")
    with torch.no_grad():
        net.body.conv_stem.weight.mul_(2)  # other weights
    feature_datamodule(net, dm, 4, tmp_path)
    (third,) = tmp_path.glob("features-*.pt")
    image = dm.paths[dm.ids("train")[0]]
    image.write_bytes(image.read_bytes())  # the same bytes, a new modification time: a changed file
    feature_datamodule(net, dm, 4, tmp_path)
    (fourth,) = tmp_path.glob("features-*.pt")
    assert len({first, second, third, fourth}) == 4


def test_a_cached_finetune_is_an_ordinary_checkpoint_scored_the_same_on_images(tmp_path, data, capsys):
    metrics = train(make_cfg(tmp_path, data, *QUICK, "phase.cache_features=true", "phase.cache_views=2", "trainer.max_epochs=3", "optim.lr=3e-3"))
    run = tmp_path / "outputs/default/tiny/finetune"
    assert len(list((run / "features").glob("features-*.pt"))) == 1
    assert len(metrics["history"]) == 3 and metrics["val/rmse"] < metrics["val/rmse_baseline"]
    # the best checkpoint, loaded as prediction loads it, scores the validation images as the cached run scored them
    dm = GalaxyZooDataModule(data, image_size=32, val_fraction=0.25, batch_size=8, num_workers=0, progress=False)
    net = load_net(metrics["best_checkpoint"])
    pred = np.concatenate([b["pred"] for b in predict_loader(net, dm.loader("val", views=(0.0,)))])
    assert rmse(pred, dm.labels("val")) == pytest.approx(metrics["val/rmse"], abs=2e-4)  # float16 features
    capsys.readouterr()
    fulltune = train(make_cfg(tmp_path, data, *QUICK, "phase=fulltune", "optim=best", "trainer.max_epochs=2"))  # AdamW, warmup + cosine
    assert math.isfinite(fulltune["val/rmse"]) and len(fulltune["history"]) == 2
    assert "frozen body was never trained" not in capsys.readouterr().err  # negative control of the warning below


def test_cache_features_needs_a_frozen_body(tmp_path, data):
    with pytest.raises(GzooError, match=r"phase.cache_features=true needs a frozen body \(phase.freeze_body=true\)"):
        train(make_cfg(tmp_path, data, "phase.cache_features=true", "phase.freeze_body=false"))
    with pytest.raises(GzooError, match=r"phase.cache_views=9 must be in \[1, 8\]\."):
        train(make_cfg(tmp_path, data, "phase.cache_features=true", "phase.cache_views=9", "name=v"))


# ----------------------------------------------------------------------------- optim=paper, optim=best


def test_optim_check_refuses_unknown_keys_and_bad_values():
    from gzoo.options import OptimOptions

    assert go.check({}) == dataclasses.asdict(OptimOptions()) | {"lr": 1.5e-4}  # the paper's recipe, from the schema (lr: any phase but a cached finetune)
    with pytest.raises(GzooError, match="optim.momentum is not an optimiser setting"):
        go.check({"momentum": 0.9})
    with pytest.raises(GzooError, match="optim.optimizer=sgd is not one of adam, adamw"):
        go.check({"optimizer": "sgd"})
    with pytest.raises(GzooError, match=r"optim.layer_decay=1.5 must be in \(0, 1\]"):
        go.check({"layer_decay": 1.5})


def test_warmup_then_cosine():
    f = go.warmup_cosine(total_steps=110, warmup_steps=10, min_fraction=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5) and f(110) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_layer_decay_slows_the_body_from_the_top_down_and_biases_never_decay(tmp_path):
    from omegaconf import OmegaConf

    best = OmegaConf.to_container(make_cfg(tmp_path, tmp_path, "optim=best").optim)  # the measured winner: one lr everywhere
    assert (best["optimizer"], best["lr"], best["schedule"], best["warmup_epochs"], best["layer_decay"]) == ("adamw", 3e-4, "cosine", 0.5, 1.0)
    o = OmegaConf.to_container(make_cfg(tmp_path, tmp_path, "optim=best", "optim.layer_decay=0.75").optim)
    m = GalaxyZooModule(timm_name="test_efficientnet", image_size=32, pretrained=False, optim=o)
    groups = go.param_groups(m.net.body, m.net.tail, go.check(o))
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(lr_of) == sum(p.numel() > 0 for p in m.parameters())  # every parameter once
    stem, head, tail = m.net.body.conv_stem.weight, m.net.body.conv_head.weight, m.net.tail[1].weight
    assert lr_of[id(stem)][0] < lr_of[id(head)][0] == lr_of[id(tail)][0] == o["lr"]
    assert lr_of[id(m.net.tail[1].bias)][1] == 0 and lr_of[id(tail)][1] == o["weight_decay"]
    frozen = GalaxyZooModule(timm_name="test_efficientnet", image_size=32, pretrained=False, optim=o, freeze_body=True)
    assert sum(len(g["params"]) for g in go.param_groups(frozen.net.body, frozen.net.tail, go.check(o))) == 4  # the tail only


# ----------------------------------------------------------------------------- honest words, and TTA at the end


def test_a_random_frozen_body_and_a_run_worse_than_the_mean_are_said(tmp_path, data, capsys):
    metrics = train(make_cfg(tmp_path, data, "model.start_at_mean=false", "data.val_fraction=0.25"))
    err = capsys.readouterr().err
    assert "warning: the frozen body was never trained (model.pretrained=false, no model.weights)" in err
    assert f"warning: the best val/rmse {metrics['val/rmse']:.5f} is not below predicting the training mean" in err
    assert "val/rmse_tta8" in metrics and math.isfinite(metrics["val/rmse_tta8"])
    saved = json.loads((Path(metrics["best_checkpoint"]).parent.parent / "metrics.json").read_text())
    assert saved["val/rmse_tta8"] == metrics["val/rmse_tta8"]


# ----------------------------------------------------------------------------- defaults of a feature-cached finetune, weight averaging


def test_a_feature_cached_finetune_has_its_own_rate_epochs_and_patience_unless_given():
    from tests.conftest import compose_train

    cached = compose_train("phase.cache_features=true")
    assert (cached.optim.lr, cached.trainer.max_epochs, cached.callbacks.early_stopping.patience, cached.phase.cache_views) == (1e-3, 300, 30, 8)
    plain = compose_train()  # negative control: any other phase keeps the paper's
    assert (plain.optim.lr, plain.trainer.max_epochs, plain.callbacks.early_stopping.patience) == (1.5e-4, 50, 10)
    assert compose_train("phase.cache_features=true", "optim.lr=5e-4").optim.lr == 5e-4  # a value given wins
    assert compose_train("phase=fulltune", "phase.cache_features=false").optim.lr == 1.5e-4
    pinned = compose_train("experiment=paper_b0", "phase.cache_features=true")  # the paper's recipe stays pinned
    assert (pinned.optim.lr, pinned.trainer.max_epochs, pinned.callbacks.early_stopping.patience) == (1.5e-4, 50, 10)
    assert go.check({})["lr"] == 1.5e-4  # an optim node without lr: the paper's


@pytest.mark.slow
def test_with_optim_ema_the_averaged_weights_are_scored_and_saved(tmp_path, data):
    metrics = train(
        make_cfg(tmp_path, data, *QUICK, "phase.cache_features=true", "phase.cache_views=2", "trainer.max_epochs=3", "optim.lr=3e-2", "optim.ema=0.99")
    )
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    saved, trained = ckpt["state_dict"], ckpt["current_model_state"]  # Lightning keeps the training weights beside, for resume
    assert not torch.equal(saved["net.tail.3.weight"], trained["net.tail.3.weight"])  # the averaged weights are not the last step's
    assert torch.allclose(saved["net.body.conv_stem.weight"], trained["net.body.conv_stem.weight"], atol=1e-6)  # the frozen body: its own average
    dm = GalaxyZooDataModule(data, image_size=32, val_fraction=0.25, batch_size=8, num_workers=0, progress=False)
    net = load_net(metrics["best_checkpoint"])  # what predict and evaluate read: the averaged network
    pred = np.concatenate([b["pred"] for b in predict_loader(net, dm.loader("val", views=(0.0,)))])
    assert rmse(pred, dm.labels("val")) == pytest.approx(metrics["val/rmse"], abs=2e-4)  # and what val/rmse scored
    net.load_state_dict({k[len("net.") :]: v for k, v in trained.items() if k.startswith("net.")})
    last = np.concatenate([b["pred"] for b in predict_loader(net, dm.loader("val", views=(0.0,)))])
    assert rmse(last, dm.labels("val")) != pytest.approx(metrics["val/rmse"], abs=2e-4)  # negative control: the training weights score otherwise
