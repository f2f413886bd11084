"""Lightning callbacks of gzoo: per-step seeds (exact resume), the weights' moving average, the training labels' counts
in every checkpoint and the validation gallery in TensorBoard."""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch.optim.swa_utils import get_ema_avg_fn

from gzoo import schema
from gzoo.data import seed_of
from gzoo.label_counts import KEY as LABEL_COUNTS

Q1 = schema.QUESTIONS[0]
Q1_SLICE = slice(0, len(Q1.answers))


class StepSeed(L.Callback):
    """Reseed torch before every training batch from (seed, epoch, batch, process), for dropout.

    With the data's randomness drawn from (seed, epoch, index) (see data.EpochSampler),
    every random draw of a batch depends only on where it is in the run, so a run resumed
    from a checkpoint continues exactly as one that never stopped.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(seed_of(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank))


class WeightEMA(WeightAveraging):
    """An exponential moving average of the weights, updated after every optimiser step (optim.ema = its decay).

    Lightning's WeightAveraging: the averaged weights are the ones validated (so val/rmse, the best checkpoint and
    early stopping follow them), the ones a checkpoint's state_dict holds (the training weights are kept beside
    them for resume), and the ones the module holds when training ends; predict, evaluate and export therefore
    read the averaged network. BatchNorm's running statistics are averaged too."""

    def __init__(self, decay: float):
        super().__init__(avg_fn=get_ema_avg_fn(decay))


class EpochHistory(L.Callback):
    """Each training epoch's wall seconds (training and its validation) and val/rmse, for metrics.json.

    An epoch is recorded when its validation ends (before that epoch's checkpoints are written, so they hold
    it) or, in an epoch without validation, when it ends. The list is saved in every checkpoint, so a resumed
    run's history holds the epochs before the stop too.
    """

    def __init__(self):
        self.epochs: list[dict] = []
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def _record(self, trainer: L.Trainer) -> None:
        if self.epochs and self.epochs[-1]["epoch"] == trainer.current_epoch:
            return
        val = trainer.callback_metrics.get("val/rmse")
        self.epochs.append(
            {"epoch": trainer.current_epoch, "seconds": round(time.perf_counter() - self._start, 3), "val/rmse": float(val) if val is not None else None}
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def state_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = [dict(e) for e in state_dict.get("epochs", [])]


class RecordLabelCounts(L.Callback):
    """Writes how many known values each label column had in the training split (gzoo.label_counts.record) into every
    checkpoint, under "gzoo_label_counts": best.ckpt and last.ckpt alike, and those of a resumed run (same split)."""

    def __init__(self, record: dict):
        self.record = record

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[LABEL_COUNTS] = {k: list(v) if isinstance(v, list) else v for k, v in self.record.items()}


class ValidationGallery(L.Callback):
    """Each validation epoch, log to TensorBoard a grid of the first ``n`` validation galaxies,
    captioned with the true and the predicted top answer of Q1 (smooth / features / star).

    The same galaxies every epoch, so the grid shows how the predictions change.
    """

    def __init__(self, n: int = 8, tag: str = "val/gallery"):
        self.n, self.tag = n, tag

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if trainer.sanity_checking or not trainer.is_global_zero or not loggers:
            return
        dataset = trainer.val_dataloaders.dataset  # type: ignore[union-attr]  # set while validating
        items = [dataset[i] for i in range(min(self.n, len(dataset)))]
        if not items or "image" not in items[0]:  # none, or cached features (phase.cache_features) rather than images
            return
        images = torch.stack([item["image"] for item in items])
        preds = pl_module.net(images.to(pl_module.device)).float().cpu().numpy()  # type: ignore[operator]  # a GalaxyZooModule's GalaxyNet
        fig = gallery_figure(items, preds)
        for logger in loggers:
            logger.experiment.add_figure(self.tag, fig, global_step=trainer.global_step, close=False)


def gallery_figure(items: list[dict], preds: np.ndarray) -> Figure:
    """Dataset items (uint8 image, id, target, mask) captioned with their true and predicted Q1 answer."""
    cols = min(len(items), 4)
    rows = -(-len(items) // cols)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows), layout="constrained")
    for ax in fig.subplots(rows, cols, squeeze=False).ravel():
        ax.set_axis_off()
    for ax, item, pred in zip(fig.axes, items, preds):
        ax.imshow(item["image"].permute(1, 2, 0).numpy())
        true = _top_answer(item["target"].numpy()) if item["mask"][Q1_SLICE if len(pred) == schema.NUM_ANSWERS else slice(0, 1)].all() else "?"
        ax.set_title(f"{item['id']}\ntrue: {true}\npred: {_top_answer(pred)}", fontsize=8)
    return fig


def _top_answer(values: np.ndarray) -> str:
    if len(values) != schema.NUM_ANSWERS:  # the run's own labels: the first one's value
        return f"{values[0]:.2f}"
    i = int(np.argmax(values[Q1_SLICE]))
    return f"{Q1.answers[i]} {values[i]:.2f}"
