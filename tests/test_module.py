"""GalaxyZooModule and its GalaxyNet: tail, masked loss and RMSE in training, freezing, pretrained weights.

The metric itself (MaskedRMSE, masked_mse) is tested in test_metrics.py."""

import copy

import lightning as L
import pytest
import timm
import torch
from torch.utils.data import DataLoader

from gzoo import weights
from gzoo.errors import GzooError
from gzoo.metrics import masked_mse, tree_cross_entropy
from gzoo.module import GalaxyZooModule

TINY = dict(timm_name="test_efficientnet", pretrained=False, image_size=32)


def fake_batches(n=24, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = [
        {"image": torch.randn(3, 32, 32, generator=g), "target": torch.rand(37, generator=g), "mask": (torch.rand(37, generator=g) > 0.2).float(), "id": i}
        for i in range(n)
    ]
    return DataLoader(items, batch_size=bs)


def test_outputs_are_37_fractions():
    m = GalaxyZooModule(**TINY).eval()
    out = m(torch.randn(5, 3, 32, 32))
    assert out.shape == (5, 37) and out.min() >= 0 and out.max() <= 1
    assert [type(x).__name__ for x in m.net.tail] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert m.net.tail[1].out_features == 64 and m.net.tail[0].p == 0.5
    assert m.net.head == "sigmoid"


class BodyModeSpy(L.Callback):
    """Records, at every training forward pass of the body, whether any body module is in train mode."""

    def __init__(self):
        self.body_training = []

    def on_fit_start(self, trainer, pl_module):
        def record(body, args):
            if trainer.training:
                self.body_training.append(any(m.training for m in body.modules()))

        pl_module.net.body.register_forward_pre_hook(record)


def fit_few_steps(m):
    spy = BodyModeSpy()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[spy]
    )
    trainer.fit(m, fake_batches(), fake_batches(8))
    return trainer, spy


def test_frozen_body_keeps_weights_and_batchnorm_statistics_while_the_tail_learns():
    m = GalaxyZooModule(**TINY, freeze_body=True)
    body_before = copy.deepcopy(m.net.body.state_dict())  # parameters and BatchNorm running stats
    tail_before = copy.deepcopy(m.net.tail.state_dict())
    m.train()  # as any caller may do; the frozen body must stay in eval mode
    trainer, spy = fit_few_steps(m)
    assert trainer.global_step == 6
    assert spy.body_training and not any(spy.body_training)  # BatchNorm in eval mode on every step
    assert any(k.endswith("running_mean") for k in body_before)
    for k, v in m.net.body.state_dict().items():
        assert torch.equal(v, body_before[k]), f"body {k} changed"
    assert any(not torch.equal(v, tail_before[k]) for k, v in m.net.tail.state_dict().items())
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in m.net.tail.parameters()}


def test_unfrozen_body_trains():
    m = GalaxyZooModule(**TINY, freeze_body=False)
    before = copy.deepcopy(m.net.body.state_dict())
    trainer, spy = fit_few_steps(m)
    assert all(spy.body_training)
    assert any(not torch.equal(v, before[k]) for k, v in m.net.body.state_dict().items() if "running" not in k)
    assert len([p for g in trainer.optimizers[0].param_groups for p in g["params"]]) == len(list(m.parameters()))


def test_frozen_batchnorm_statistics_stay_while_the_whole_body_trains():
    """phase.freeze_bn_stats (fulltune's default): no BatchNorm layer ever sees a training step in
    train mode, so the running statistics stay those the finetuned tail was fitted to; every weight,
    BatchNorm's scale and shift included, trains."""
    m = GalaxyZooModule(**TINY, freeze_bn_stats=True)
    before = copy.deepcopy(m.net.body.state_dict())
    seen = []
    for layer in m.net.body.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.register_forward_pre_hook(lambda mod, args: seen.append(mod.training) if mod.weight.requires_grad and torch.is_grad_enabled() else None)
    trainer, spy = fit_few_steps(m)
    assert seen and not any(seen)  # BatchNorm normalised with its running statistics on every training step
    assert all(spy.body_training)  # the rest of the body (dropout, drop-path) is in train mode
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(m.net.body.state_dict()[k], before[k]) for k in stats)
    bn_scale = [k for k in before if k.endswith("bn1.weight")]
    assert bn_scale and any(not torch.equal(m.net.body.state_dict()[k], before[k]) for k in bn_scale)
    assert len([p for g in trainer.optimizers[0].param_groups for p in g["params"]]) == len(list(m.parameters()))


def test_lr_is_cut_by_0_8_after_4_epochs_without_improvement():
    m = GalaxyZooModule(**TINY)
    m.trainer = None
    sched = m.configure_optimizers()["lr_scheduler"]
    s = sched["scheduler"]
    assert sched["monitor"] == "val/rmse"
    for rmse in (0.5, 0.6, 0.6, 0.6, 0.6):
        s.step(rmse)
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-4)
    s.step(0.6)  # the 5th epoch without a better value
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(1.5e-4 * 0.8)


def test_unfetchable_weights_stop_with_one_sentence_and_never_fall_back(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "weights_in_cache", lambda name: False)
    created = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: created.append(k) or pytest.fail("must not build a model"))
    with pytest.raises(GzooError, match=r"could not fetch the pretrained weights of tf_efficientnet_b0.in1k .*model.pretrained=false.*model.weights=PATH") as e:
        GalaxyZooModule(timm_name="tf_efficientnet_b0.in1k", pretrained=True)
    assert "\n" not in str(e.value) and not created


def test_local_weights_file_is_loaded_and_its_classifier_ignored(tmp_path):
    source = timm.create_model("test_efficientnet", pretrained=False)  # with its 1000-class classifier
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    m = GalaxyZooModule(timm_name="test_efficientnet", pretrained=True, weights=str(path))
    for k, v in m.net.body.state_dict().items():
        assert torch.equal(v, source.state_dict()[k])
    with pytest.raises(GzooError, match="model.weights=.*not found"):
        GalaxyZooModule(timm_name="test_efficientnet", weights=str(tmp_path / "nope.pth"))


def test_checkpoint_round_trip(tmp_path):
    m = GalaxyZooModule(**TINY, dropout=0.3)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(m, fake_batches(), fake_batches(8))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = GalaxyZooModule.from_checkpoint(tmp_path / "m.ckpt").eval()
    assert loaded.hparams.dropout == 0.3 and loaded.hparams.pretrained is False
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), m.eval()(x))


def test_uint8_batches_are_normalised_with_the_models_mean_and_std():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    m = GalaxyZooModule(**TINY, mean=mean, std=std).eval()
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    by_hand = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(m(x), m(by_hand), atol=1e-6)
    # Without normalisation the predictions differ: the check above can fail.
    assert not torch.allclose(m(x.float()), m(by_hand), atol=1e-3)
    # mean and std come from the hyperparameters, so checkpoints hold no extra tensors.
    assert {"net.pixel_mean", "net.pixel_std"} <= {name for name, _ in m.named_buffers()}
    assert not [k for k in m.state_dict() if k.endswith(("pixel_mean", "pixel_std"))]
    assert m.hparams.mean == mean and m.hparams.std == std


def test_training_brightness_is_applied_on_the_device_before_normalising():
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    m = GalaxyZooModule(**TINY, mean=mean, std=std).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    b = torch.tensor([0.9, 1.2])
    brighter = (x.float() * b.view(2, 1, 1, 1)).clamp(max=255)
    by_hand = (brighter / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(m(x, b), m(by_hand), atol=1e-6)
    assert (m(x) - m(by_hand)).abs().max() > 1e-5  # the factor changes the predictions (by far more than 1e-6)
    # A training batch's "brightness" reaches the model: the loss is the one of the brightened images.
    batch = {"image": x, "brightness": b, "target": torch.rand(2, 37), "mask": torch.ones(2, 37, dtype=torch.bool)}
    expected = masked_mse(m(by_hand), batch["target"], batch["mask"])
    assert torch.allclose(m._step(batch, m.train_rmse), expected, atol=1e-6)
    with pytest.raises(GzooError, match="uint8 batches only"):
        m(by_hand, b)


def test_soft_ce_loss_needs_the_tree_head_and_trains_with_it():
    with pytest.raises(GzooError, match=r"optim.loss=soft_ce .* needs the 37 Kaggle answers and model.head=tree from the first epoch \(here head=sigmoid"):
        GalaxyZooModule(**TINY, optim={"loss": "soft_ce"})
    with pytest.raises(GzooError, match=r"tree_after_epochs=2"):
        GalaxyZooModule(**TINY, head="tree", tree_after_epochs=2, optim={"loss": "soft_ce"})
    m = GalaxyZooModule(**TINY, head="tree", optim={"loss": "soft_ce"})
    batch = next(iter(fake_batches(8, 8)))
    expected = tree_cross_entropy(m.eval()(batch["image"]), batch["target"], batch["mask"])
    assert m._step(batch, m.val_rmse).item() == pytest.approx(expected.item(), rel=1e-6)  # the step's loss is the soft-label one
    assert abs(expected.item() - masked_mse(m(batch["image"]), batch["target"], batch["mask"]).item()) > 0.1
    before = copy.deepcopy(m.net.tail.state_dict())
    trainer, _ = fit_few_steps(m)
    assert trainer.global_step == 6 and any(not torch.equal(v, before[k]) for k, v in m.net.tail.state_dict().items())
