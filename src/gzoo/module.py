"""GalaxyZooModule: the LightningModule that trains a GalaxyNet (net.py).

It adds what training needs around the plain network: the masked loss, the masked RMSE
(metrics.py) per epoch, freezing the body for the finetune phase, the switch from sigmoid to
the tree head, and the optimiser with its schedule.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from gzoo.device_augment import warp_on_device
from gzoo.errors import GzooError, NonFiniteLossError
from gzoo.metrics import MaskedRMSE, masked_mse
from gzoo.net import GalaxyNet, resolve_device


class GalaxyZooModule(L.LightningModule):
    """Predicts the 37 Galaxy Zoo 2 vote fractions from an image.

    The keyword arguments are the keys of the run config's ``model`` node (``name`` is the
    variant, e.g. b0), plus ``freeze_body`` (the phase) and ``crop_fraction`` (the data's).
    ``__init__`` takes plain values only and saves them, so a checkpoint rebuilds the same
    network (:meth:`from_checkpoint`, which never downloads).
    """

    def __init__(
        self,
        timm_name: str = "tf_efficientnet_b0.in1k",
        image_size: int = 224,
        pretrained: bool = True,
        weights: str | None = None,
        dropout: float = 0.5,
        hidden: int = 64,
        head: str = "sigmoid",
        tree_after_epochs: int = 0,
        lr: float = 1.5e-4,
        lr_factor: float = 0.8,
        lr_patience: int = 4,
        freeze_body: bool = False,
        crop_fraction: float = 0.5,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        name: str | None = None,
    ):
        super().__init__()
        if tree_after_epochs < 0:
            raise GzooError(f"model.tree_after_epochs must be >= 0, got {tree_after_epochs}.")
        self.save_hyperparameters(logger=False)  # the run logs the whole resolved config instead
        self.net = GalaxyNet(timm_name, pretrained, weights, image_size, crop_fraction, mean, std, dropout, hidden, head)
        self.hparams.mean, self.hparams.std = self.net.mean, self.net.std  # resolved: the checkpoint needs no timm lookup
        if freeze_body:
            self.net.body.requires_grad_(False).eval()
        self.train_rmse, self.val_rmse, self.test_rmse = MaskedRMSE(), MaskedRMSE(), MaskedRMSE()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> GalaxyZooModule:
        """Load a trained module; the weights come from the file, so nothing is downloaded."""
        path = Path(path)
        if not path.is_file():
            raise GzooError(f"checkpoint {path} not found.")
        try:
            return cls.load_from_checkpoint(path, map_location=map_location, pretrained=False, weights=None)
        except Exception as e:  # not a checkpoint, or not one of ours
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise GzooError(f"checkpoint {path} cannot be loaded as a gzoo model ({reason}).") from None

    def train(self, mode: bool = True) -> GalaxyZooModule:
        """A frozen body stays in eval mode, so its BatchNorm statistics do not drift."""
        super().train(mode)
        if self.hparams.freeze_body:
            self.net.body.eval()
        return self

    def forward(self, x: torch.Tensor, brightness: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, brightness)

    def on_train_epoch_start(self) -> None:
        early = self.current_epoch < self.hparams.tree_after_epochs
        self.net.head = "sigmoid" if early else self.hparams.head

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["active_head"] = self.net.head  # a loaded model uses the head it was saved with

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.net.head = checkpoint.get("active_head", self.hparams.head)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """data.augment_on=device: a training batch's frames are warped here, on the device (device_augment.py)."""
        return warp_on_device(batch, self.net.image_size, self.net.crop_fraction)

    def _step(self, batch: dict, metric: MaskedRMSE) -> torch.Tensor:
        pred = self.net(batch["image"], batch.get("brightness"))
        loss = masked_mse(pred, batch["target"], batch["mask"])
        metric.update(pred.detach(), batch["target"], batch["mask"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_rmse)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights or a checkpoint
            raise NonFiniteLossError(f"the training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["image"]))
        self.log("train/rmse", self.train_rmse, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._step(batch, self.val_rmse)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["image"]))
        self.log("val/rmse", self.val_rmse, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.test_rmse)
        self.log("test/rmse", self.test_rmse, on_step=False, on_epoch=True)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.net(batch["image"])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/rmse", "interval": "epoch"}}


def load_net(ckpt: str | Path, device: str = "cpu") -> GalaxyNet:
    """The trained network of a checkpoint, in eval mode on ``device`` (auto, cpu, cuda...); never downloads."""
    dev = resolve_device(device)
    return GalaxyZooModule.from_checkpoint(ckpt, map_location=dev).net.to(dev).eval()
