"""GalaxyZooModule: a timm EfficientNet body, the recipe's small tail, the masked loss and RMSE.

Body:  timm.create_model(name, num_classes=0) -> global-average-pooled features
Input: uint8 batches from the data pipeline, normalised on the device (or float, normalised)
Tail:  dropout 0.5 -> dense 64 + ReLU -> dense 37 -> head (sigmoid, or the decision-tree head; see heads.py)
Loss:  mean squared error over the known cells (unknown cells have mask 0)
RMSE:  sqrt(sum of squared errors / number of known cells) over the whole epoch,
       one number as Kaggle scores it, never a mean of per-batch values.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import lightning as L
import timm
import torch
from torch import nn
from torchmetrics import Metric

from gzoo import schema
from gzoo.errors import GzooError, NonFiniteLossError
from gzoo.heads import HEADS
from gzoo.transforms import normalise_batch


class MaskedRMSE(Metric):
    """RMSE over every known value seen since the last reset (summed across processes)."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("sum_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
        err = (pred.double() - target.double()) ** 2 * mask.double()
        self.sum_sq += err.sum()
        self.count += mask.double().sum()

    def compute(self) -> torch.Tensor:
        return torch.sqrt(self.sum_sq / self.count.clamp_min(1))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the cells where mask is 1."""
    return ((pred - target) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def create_body(timm_name: str, pretrained: bool, weights: str | None = None) -> nn.Module:
    """The timm model without its classifier, pretrained as asked, never silently random."""
    if not timm.is_model(timm_name.split(".")[0]):
        raise GzooError(f"model.timm_name={timm_name!r} is not a timm model; see timm.list_models('*efficientnet*').")
    if weights:
        body = timm.create_model(timm_name, num_classes=0, pretrained=False)
        path = Path(weights)
        if not path.is_file():
            raise GzooError(f"model.weights={path} not found; point it at a timm state dict (.pth or .safetensors).")
        try:
            state = timm.models.load_state_dict(str(path))
        except Exception as e:
            raise GzooError(f"model.weights={path} is not a readable state dict ({e}).") from None
        classifier = body.pretrained_cfg.get("classifier", "classifier")
        state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
        try:
            body.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
            raise GzooError(f"model.weights={path} does not fit {timm_name} ({first}).") from None
        return body
    if not pretrained:
        return timm.create_model(timm_name, num_classes=0, pretrained=False)
    if not _weights_in_cache(timm_name) and not hub_reachable():
        raise GzooError(_no_weights_message(timm_name, "the Hugging Face hub cannot be reached and they are not in the local cache"))
    try:
        return timm.create_model(timm_name, num_classes=0, pretrained=True)
    except Exception as e:
        raise GzooError(_no_weights_message(timm_name, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None


def _no_weights_message(timm_name: str, reason: str) -> str:
    return (
        f"could not fetch the pretrained weights of {timm_name} ({reason}); "
        "pass model.pretrained=false to train from scratch, model.weights=PATH to load a local timm state dict, "
        "or run with a pre-filled Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1)."
    )


def _weights_in_cache(timm_name: str) -> bool:
    """Whether the Hugging Face cache already holds this model's weights."""
    from huggingface_hub import try_to_load_from_cache

    hub_id = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
    if not hub_id:
        return False
    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check that the hub answers, so an offline machine fails in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


class GalaxyZooModule(L.LightningModule):
    """Predicts the 37 Galaxy Zoo 2 vote fractions from an image.

    ``__init__`` takes plain values only and saves them, so ``load_from_checkpoint``
    rebuilds the same network (use :meth:`from_checkpoint`, which never downloads).
    """

    def __init__(
        self,
        timm_name: str = "tf_efficientnet_b0.in1k",
        pretrained: bool = True,
        weights: str | None = None,
        image_size: int = 224,
        mean: tuple[float, ...] = (0.485, 0.456, 0.406),
        std: tuple[float, ...] = (0.229, 0.224, 0.225),
        crop_fraction: float = 0.5,
        dropout: float = 0.5,
        hidden: int = 64,
        lr: float = 1.5e-4,
        lr_factor: float = 0.8,
        lr_patience: int = 4,
        freeze_body: bool = False,
        head: str = "sigmoid",
        tree_after_epochs: int = 0,
    ):
        super().__init__()
        if head not in HEADS:
            raise GzooError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}.")
        if tree_after_epochs < 0:
            raise GzooError(f"model.tree_after_epochs must be >= 0, got {tree_after_epochs}.")
        self.save_hyperparameters(logger=False)  # the run logs the whole resolved config instead
        # The head in use: sigmoid for the first tree_after_epochs epochs of a tree run (see
        # on_train_epoch_start); checkpoints record it, so a loaded model uses the head it was saved with.
        self.active_head = head
        self.body = create_body(timm_name, pretrained, weights)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.body.num_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, schema.NUM_ANSWERS),
        )
        if freeze_body:
            self.body.requires_grad_(False).eval()
        # For uint8 batches (see forward); not saved in checkpoints: they follow from mean and std.
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.train_rmse, self.val_rmse, self.test_rmse = MaskedRMSE(), MaskedRMSE(), MaskedRMSE()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "GalaxyZooModule":
        """Load a trained module; the weights come from the file, so nothing is downloaded."""
        path = Path(path)
        if not path.is_file():
            raise GzooError(f"checkpoint {path} not found.")
        return cls.load_from_checkpoint(path, map_location=map_location, pretrained=False, weights=None)

    def train(self, mode: bool = True) -> "GalaxyZooModule":
        """A frozen body stays in eval mode, so its BatchNorm statistics do not drift."""
        super().train(mode)
        if self.hparams.freeze_body:
            self.body.eval()
        return self

    def forward(self, x: torch.Tensor, brightness: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) images -> (B, 37) vote fractions.

        ``x`` is uint8 as the data pipeline makes it (normalised here, on the model's device,
        after multiplying by the training pipeline's per-image ``brightness`` (B,) if given)
        or float32 already normalised with ``mean`` and ``std`` (as exported models take it).
        """
        if x.dtype == torch.uint8:
            x = normalise_batch(x, self.pixel_mean, self.pixel_std, brightness)
        elif brightness is not None:
            raise GzooError("brightness applies to uint8 batches only; a float batch is already normalised.")
        return HEADS[self.active_head](self.head(self.body(x)).float())

    def on_train_epoch_start(self) -> None:
        early = self.current_epoch < self.hparams.tree_after_epochs
        self.active_head = "sigmoid" if early else self.hparams.head

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["active_head"] = self.active_head

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.active_head = checkpoint.get("active_head", self.hparams.head)

    def _step(self, batch: dict, metric: MaskedRMSE) -> torch.Tensor:
        pred = self(batch["image"], batch.get("brightness"))
        loss = masked_mse(pred, batch["target"], batch["mask"])
        metric.update(pred.detach(), batch["target"], batch["mask"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_rmse)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights or a checkpoint
            raise NonFiniteLossError(
                f"the training loss became {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx})"
            )
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
        return self(batch["image"])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/rmse", "interval": "epoch"}}
