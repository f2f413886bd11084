"""GalaxyZooModule: the LightningModule that trains a GalaxyNet (net.py).

It adds what training needs around the plain network: the masked loss, the masked RMSE
(metrics.py) per epoch, freezing the body for the finetune phase, the switch from sigmoid to
the tree head, and the optimiser with its schedule.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch

from gzoo import schema
from gzoo.device import resolve_device
from gzoo.device_augment import warp_on_device
from gzoo.errors import GzooError, NonFiniteLossError
from gzoo.fits import options_record
from gzoo.label_counts import of_checkpoint as label_counts_of
from gzoo.log import say
from gzoo.metrics import MaskedRMSE, masked_mse, tree_cross_entropy
from gzoo.net import GalaxyNet
from gzoo.optim import check as check_optim
from gzoo.optim import configure as configure_optim
from gzoo.options import DataOptions, ModelOptions

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict


class GalaxyZooModule(L.LightningModule):
    """Predicts the 37 Galaxy Zoo 2 vote fractions from an image.

    The keyword arguments are the keys of the run config's ``model`` node (``name`` is the
    variant, e.g. b0), plus ``optim`` (the ``optim`` node, see optim.py; the recipe's when None),
    ``freeze_body`` and ``freeze_bn_stats`` (the phase's), ``crop_fraction`` and ``fits`` (the data's; gzoo.fits.FitsOptions'
    fields, the GZ2 preset when None: the checkpoint records them, gzoo.fits.options_of_checkpoint reads them).
    ``__init__`` takes plain values only and saves them, so a checkpoint rebuilds the same
    network (:meth:`from_checkpoint`, which never downloads).
    """

    hparams: AttributeDict  # what save_hyperparameters() makes (Lightning's property says AttributeDict | MutableMapping)

    def __init__(
        self,
        timm_name: str = ModelOptions.timm_name,
        image_size: int = ModelOptions.image_size,
        pretrained: bool = ModelOptions.pretrained,
        weights: str | None = ModelOptions.weights,
        dropout: float = ModelOptions.dropout,
        hidden: int = ModelOptions.hidden,
        head: str = ModelOptions.head,
        tree_after_epochs: int = ModelOptions.tree_after_epochs,
        labels: list[str] | None = None,
        optim: dict | None = None,
        freeze_body: bool = False,
        freeze_bn_stats: bool = False,
        crop_fraction: float = DataOptions.crop_fraction,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        name: str | None = None,
        fits: dict | None = None,
    ):
        super().__init__()
        if tree_after_epochs < 0:
            raise GzooError(f"model.tree_after_epochs must be >= 0, got {tree_after_epochs}.")
        optim = check_optim(dict(optim or {}))
        if optim["loss"] == "soft_ce" and (head != "tree" or tree_after_epochs > 0 or not schema.is_gz2(schema.label_columns(labels))):
            raise GzooError(
                "optim.loss=soft_ce treats each question's answers as a distribution, so it needs the 37 Kaggle answers and "
                f"model.head=tree from the first epoch (here head={head}, tree_after_epochs={tree_after_epochs})."
            )
        self.save_hyperparameters(logger=False)
        self.hparams.optim = optim  # the run logs the whole resolved config instead
        self.hparams.fits = options_record(fits)  # how FITS cutouts became images (data.fits): prediction makes them the same way
        self.net = GalaxyNet(timm_name, pretrained, weights, image_size, crop_fraction, mean, std, dropout, hidden, head, labels)
        self.hparams.mean, self.hparams.std = self.net.mean, self.net.std  # resolved: the checkpoint needs no timm lookup
        if freeze_body:
            self.net.body.requires_grad_(False)
        self._hold_frozen_modes()
        self.train_rmse, self.val_rmse, self.test_rmse = MaskedRMSE(), MaskedRMSE(), MaskedRMSE()

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu", option: str | None = None) -> GalaxyZooModule:
        """Load a trained module; the weights come from the file, so nothing is downloaded.

        The file is read and its format checked by :func:`read_checkpoint` (``option`` names it in an error,
        e.g. ckpt; None says "checkpoint PATH"); the module is built from its hyper-parameters, as Lightning's
        ``load_from_checkpoint`` builds it, without that second read of the file."""
        ckpt = read_checkpoint(path, option, map_location)
        init = inspect.signature(cls.__init__).parameters
        try:
            module = cls(**{k: v for k, v in ckpt["hyper_parameters"].items() if k in init} | {"pretrained": False, "weights": None})
            module.on_load_checkpoint(ckpt)
            module.load_state_dict(ckpt["state_dict"])
        except GzooError:
            raise
        except Exception as e:  # a gzoo checkpoint whose weights do not fit the network its hyper-parameters describe
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GzooError(f"{_named(path, option)} cannot be loaded as a gzoo model ({reason[:300]}).") from None
        return module

    def train(self, mode: bool = True) -> GalaxyZooModule:
        """A frozen body stays in eval mode, so its BatchNorm statistics do not drift. With
        ``freeze_bn_stats`` the body trains but its BatchNorm layers keep normalising with their
        running statistics (their scale and shift still learn): the features the finetuned tail was
        fitted to stay what they were, instead of jumping to each batch's galaxy statistics."""
        super().train(mode)
        self._hold_frozen_modes()
        return self

    def _hold_frozen_modes(self) -> None:
        # Lightning never calls train() when fit starts (it records and restores each layer's mode
        # around validation), so this runs at construction, in train() and at every training epoch.
        if self.hparams.freeze_body:
            self.net.body.eval()
        elif self.hparams.get("freeze_bn_stats", False):
            for layer in self.net.body.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def forward(self, x: torch.Tensor, brightness: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, brightness)

    def on_train_epoch_start(self) -> None:
        self._hold_frozen_modes()
        early = self.current_epoch < self.hparams.tree_after_epochs
        self.net.head = "sigmoid" if early else self.hparams.head

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gzoo_format"] = CHECKPOINT_FORMAT  # what the file holds; read_checkpoint reads by it
        checkpoint["gzoo_version"] = gzoo_version()  # who wrote it, for the sentence that refuses another format
        checkpoint["active_head"] = self.net.head  # a loaded model uses the head it was saved with

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.net.head = checkpoint.get("active_head", self.hparams.head)
        # The intervals' calibration belongs to these weights: read, never saved again (a checkpoint of weights trained
        # further gets its own at the end of its run; see gzoo.train.calibrate).
        self.net.calibration = checkpoint.get("gzoo_calibration")
        self.net.label_counts = label_counts_of(checkpoint)  # the known training values per answer (None: made before gzoo recorded them)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """data.augment_on=device: a training batch's frames are warped here, on the device (device_augment.py)."""
        return warp_on_device(batch, self.net.image_size, self.net.crop_fraction)

    def _step(self, batch: dict, metric: MaskedRMSE) -> torch.Tensor:
        if "features" in batch:  # phase.cache_features: the frozen body's output, computed once (features.py)
            pred = self.net.from_features(batch["features"])
        else:
            pred = self.net(batch["image"], batch.get("brightness"))
        if self.hparams.optim["loss"] == "soft_ce":
            loss = tree_cross_entropy(pred, batch["target"], batch["mask"])
        else:
            loss = masked_mse(pred, batch["target"], batch["mask"])
        metric.update(pred.detach(), batch["target"], batch["mask"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_rmse)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights or a checkpoint
            raise NonFiniteLossError(f"the training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})")
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["target"]))
        self.log("train/rmse", self.train_rmse, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._step(batch, self.val_rmse)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["target"]))
        self.log("val/rmse", self.val_rmse, on_step=False, on_epoch=True, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, self.test_rmse)
        self.log("test/rmse", self.test_rmse, on_step=False, on_epoch=True)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.net(batch["image"])

    def start_at(self, mean) -> None:
        """Start the output layer at the training mean (see GalaxyNet.start_at), for the head of epoch 0."""
        self.net.start_at(mean, "sigmoid" if self.hparams.tree_after_epochs > 0 else self.hparams.head)

    def configure_optimizers(self):
        trainer = self._trainer  # None outside a Trainer (the cosine schedule then refuses: it needs the run's length)
        steps, epochs = (trainer.estimated_stepping_batches, trainer.max_epochs or 1) if trainer is not None else (0, 1)
        return configure_optim(self.net.body, self.net.tail, self.hparams.optim, steps, epochs)


#: What makes two checkpoints the same network: the hyper-parameters a resumed run must share with its checkpoint,
#: each with the run option that sets it.
NETWORK_KEYS = {"timm_name": "model.timm_name", "image_size": "model.image_size", "hidden": "model.hidden", "head": "model.head", "labels": "data.labels"}
NETWORK_KEYS |= {"crop_fraction": "data.crop_fraction"}


#: The layout of the checkpoints gzoo writes; read_checkpoint loads this one only. Format 2: Lightning's checkpoint of a
#: GalaxyZooModule, its weights named ``net.body.*`` (the timm body) and ``net.tail.*``, its hyper_parameters the
#: constructor's arguments (timm_name, image_size, hidden, head, labels, crop_fraction, mean, std, ...), plus
#: "gzoo_split" (gzoo.data.split.RecordSplit), "active_head", "gzoo_format" and "gzoo_version"; hyper_parameters["fits"]
#: records how FITS cutouts became images (gzoo.fits.FitsOptions; absent before gzoo recorded it: read as the GZ2 preset).
#: best.ckpt may hold "gzoo_calibration" (gzoo.uncertainty.calibration: the scales of the answers' intervals, fitted on the
#: validation split at the end of training; absent in a checkpoint made before, or without a validation split: then
#: gzoo.predict writes spreads without intervals). Every checkpoint may hold "gzoo_label_counts" (gzoo.label_counts: how many
#: known values each label column had in the training split, {"columns", "known", "train"}; absent in a checkpoint made
#: before gzoo recorded it: the counts are unknown, and predict, the gallery and evaluate say nothing of them). Change the layout, and this
#: number goes up, with a rule in checkpoint_format for the formats it can still read.
CHECKPOINT_FORMAT = 2


def gzoo_version() -> str:
    """The installed gzoo's version, written into every checkpoint ("unknown" when gzoo runs uninstalled)."""
    try:
        return importlib.metadata.version("gzoo")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def checkpoint_format(ckpt: dict, named: str = "the checkpoint") -> int:
    """The format of a loaded checkpoint dict, when this gzoo reads it (:data:`CHECKPOINT_FORMAT`); otherwise a
    GzooError: one sentence naming the file (``named``), the format found and what to do.

    A checkpoint without "gzoo_format" is read as format 2 when it is one (written by gzoo 0.1.0 before checkpoints
    carried their format: weights ``net.body.*``, hyper_parameters with timm_name); any other is older."""
    found = ckpt.get("gzoo_format")
    if found is None and any(k.startswith("net.body.") for k in ckpt["state_dict"]) and "timm_name" in ckpt["hyper_parameters"]:
        say(f"{named} records no format (gzoo 0.1.0 wrote it before checkpoints carried one); its layout is format 2's, so it is read as format 2")
        found = 2  # today's layout, saved before the format was recorded: the same keys, so it loads as it is
    if found == CHECKPOINT_FORMAT:
        return found
    here = f"this gzoo ({gzoo_version()}) reads format {CHECKPOINT_FORMAT}"
    if found is None:
        raise GzooError(
            f"{named} was written before checkpoints carried a format (gzoo 0.1.0 or earlier; its weights are not named net.body.*), "
            f"and {here}: load it with the gzoo version that wrote it and export it (gzoo.export), or retrain."
        )
    wrote = ckpt.get("gzoo_version", "unknown")
    raise GzooError(
        f"{named} is a checkpoint of format {found} written by gzoo {wrote}, and {here}: "
        f"load it with gzoo {wrote} (the version that wrote it) and export it (gzoo.export), or retrain."
    )


def read_checkpoint(path: str | Path, option: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """A gzoo checkpoint file as a dict (its "state_dict" and "hyper_parameters" present, of :data:`CHECKPOINT_FORMAT`),
    or a GzooError that names ``option`` (e.g. ``phase.init_from``; None: "checkpoint PATH") and the file: missing,
    cut short, not a gzoo checkpoint, or of another format (:func:`checkpoint_format`)."""
    path = Path(path)
    named = _named(path, option)
    if not path.is_file():
        raise GzooError(f"{named}: no such checkpoint file." if option else f"{named} not found.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated zip, a file of another kind: torch raises many kinds
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        point = f"point {option} at a complete checkpoint" if option else "use a complete checkpoint"
        raise GzooError(f"{named} cannot be read as a checkpoint ({reason}); it may be cut short by a kill or a full disk: {point}.") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise GzooError(f"{named} is not a checkpoint written by gzoo.train (no state_dict and hyper_parameters).")
    checkpoint_format(ckpt, named)
    return ckpt


def _named(path: str | Path, option: str | None) -> str:
    return f"{option}={path}" if option else f"checkpoint {path}"


def network_of(hparams: dict) -> dict:
    """The :data:`NETWORK_KEYS` of a module's hyper-parameters; labels None means the 37 Kaggle answers."""
    return {key: hparams.get(key) for key in NETWORK_KEYS}


def load_net(ckpt: str | Path, device: str = "cpu") -> GalaxyNet:
    """The trained network of a checkpoint, in eval mode on ``device`` (auto, cpu, cuda...); never downloads."""
    dev = resolve_device(device)
    return GalaxyZooModule.from_checkpoint(ckpt, map_location=dev).net.to(dev).eval()
