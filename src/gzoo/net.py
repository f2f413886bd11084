"""GalaxyNet: the plain network, used as it is for training, prediction, evaluation, export and the benchmark.

    input   uint8 (B, 3, S, S) as the data pipeline makes it, normalised here on the device
            (after the training pipeline's per-image brightness), or float32 already normalised
    body    timm.create_model(name, num_classes=0): global-average-pooled features
    tail    dropout 0.5 -> dense 64 + ReLU -> dense 37
    head    sigmoid (the paper's 37 independent sigmoids) or the decision tree (see heads.py)
    spread  sample_from_features: the tail and head again with fixed dropout masks (dropout_masks), on the features
            of one pass of the body: the answers' spread (gzoo.uncertainty)

From Python, use GalaxyNet to predict or to get features; GalaxyZooModule (module.py) wraps
it for training with Lightning (loss, metrics, freezing, optimiser).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import timm
import torch
from torch import nn

from gzoo import schema
from gzoo.errors import GzooError
from gzoo.heads import HEADS
from gzoo.transforms import normalise_batch
from gzoo.weights import PACKAGED, hub_id, no_weights_message, packaged_weights, read_state_dict, require_hub_weights

# ----------------------------------------------------------------------------- the body


def backbone_norm(timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std the body was trained with (timm's pretrained config is the truth); None for an
    ``hf_hub:`` model, whose config comes with its weights from the hub."""
    if hub := hub_id(timm_name):
        if "/" not in hub:
            raise GzooError(f"model.timm_name={timm_name!r}: an hf_hub: name is hf_hub:<owner>/<repository>.")
        return None
    if not timm.is_model(timm_name.split(".")[0]):
        raise GzooError(f"model.timm_name={timm_name!r} is not a timm model; see timm.list_models('*efficientnet*').")
    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError as e:  # e.g. a tag that does not exist for this architecture
        raise GzooError(f"model.timm_name={timm_name!r}: {e}") from None
    if cfg is None:
        raise GzooError(f"model.timm_name={timm_name!r} is not a timm model; see timm.list_pretrained('*efficientnet*').")
    return tuple(cfg.mean), tuple(cfg.std)


def create_body(timm_name: str, pretrained: bool, weights: str | None = None) -> nn.Module:
    """The timm model without its classifier, pretrained as asked, never silently random."""
    backbone_norm(timm_name)  # the name check, with its one sentence
    if hub_id(timm_name):  # its config and weights live on the hub
        require_hub_weights(timm_name)
    if pretrained and not weights and timm_name.split(".")[0] in PACKAGED:
        weights = str(packaged_weights(timm_name))  # ImageNet weights from an installed package: no hub needed
    if weights:
        body: Any = timm.create_model(timm_name, num_classes=0, pretrained=False)  # a timm model: pretrained_cfg
        path = Path(weights)
        state = read_state_dict(path, "model.weights")
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
    require_hub_weights(timm_name)
    try:
        return timm.create_model(timm_name, num_classes=0, pretrained=True)
    except Exception as e:
        raise GzooError(no_weights_message(timm_name, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None


# ----------------------------------------------------------------------------- the network


class GalaxyNet(nn.Module):
    """Body, tail and output head, normalising uint8 images on its device.

    ``mean``/``std`` default to the body's own (timm's pretrained config). ``image_size`` and
    ``crop_fraction`` are what the network expects to see (the evaluation view: the central
    crop resized to image_size); they travel with it to prediction and export.
    """

    body: Any  # a timm model: nn.Module's types know nothing of its pretrained_cfg and num_features
    pixel_mean: torch.Tensor  # buffers
    pixel_std: torch.Tensor

    def __init__(
        self,
        timm_name: str,
        pretrained: bool = True,
        weights: str | None = None,
        image_size: int = 224,
        crop_fraction: float = 0.5,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        dropout: float = 0.5,
        hidden: int = 64,
        head: str = "sigmoid",
        labels: Sequence[str] | None = None,
    ):
        super().__init__()
        if head not in HEADS:
            raise GzooError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}.")
        self.labels = list(labels) if labels is not None else list(schema.COLUMNS)  # the output columns, in order
        if head == "tree" and not schema.is_gz2(self.labels):
            raise GzooError("model.head=tree follows the Galaxy Zoo 2 decision tree, so it needs data.labels=gz2; use model.head=sigmoid for your own labels.")
        norm = backbone_norm(timm_name) if mean is None or std is None else (mean, std)
        self.timm_name, self.image_size, self.crop_fraction = timm_name, image_size, crop_fraction
        self.head = head  # the output head in use (a tree run may start with sigmoid; see GalaxyZooModule)
        self.body = create_body(timm_name, pretrained, weights)
        mean, std = norm or (self.body.pretrained_cfg["mean"], self.body.pretrained_cfg["std"])  # hf_hub: from its config
        self.mean, self.std = tuple(mean), tuple(std)
        self.tail = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.body.num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, len(self.labels)))
        # For uint8 batches; not saved in checkpoints: they follow from mean and std.
        self.register_buffer("pixel_mean", torch.tensor(self.mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std, dtype=torch.float32), persistent=False)
        self.calibration: dict | None = None  # the intervals' calibration a checkpoint holds (gzoo.uncertainty; set by loading one)
        self.label_counts: dict | None = None  # the known training values per label a checkpoint holds (gzoo.label_counts; None: unknown)

    def features(self, x: torch.Tensor, brightness: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) images -> (B, F) pooled body features (uint8 images are normalised first)."""
        if x.dtype == torch.uint8:
            x = normalise_batch(x, self.pixel_mean, self.pixel_std, brightness)
        elif brightness is not None:
            raise GzooError("brightness applies to uint8 batches only; a float batch is already normalised.")
        return self.body(x)

    def forward(self, x: torch.Tensor, brightness: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, S, S) images -> (B, labels) vote fractions (the 37 answers, or data.labels' columns)."""
        return self.from_features(self.features(x, brightness))

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) pooled body features -> (B, 37) vote fractions: the tail and the head."""
        return HEADS[self.head](self.tail(features).float())

    @property
    def dropout_p(self) -> float:
        """The rate of the tail's dropout (model.dropout)."""
        return float(cast(nn.Dropout, self.tail[0]).p)

    def dropout_masks(self, samples: int, seed: int = 0) -> torch.Tensor:
        """(samples, F) masks of the tail's dropout, scaled by 1 / (1 - p) as training scales them. They are fixed draws (a CPU
        generator seeded by ``seed``), the same for every galaxy and batch: a galaxy's sampled answers do not depend on
        what it is batched with, and a rerun gives the same numbers."""
        p = self.dropout_p
        keep = torch.rand(samples, self.body.num_features, generator=torch.Generator().manual_seed(seed)) >= p
        return keep.float() / (1 - p)

    def sample_from_features(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(B, F) pooled body features and (K, F) dropout masks -> (K, B, labels): the tail and head once per mask, the mask
        in place of the tail's dropout (Monte Carlo dropout on one pass of the body)."""
        rest = self.tail[1:]  # after the dropout
        masks = masks.to(features.device, features.dtype)
        return torch.stack([HEADS[self.head](rest(features * m).float()) for m in masks])

    @torch.no_grad()
    def start_at(self, mean: Sequence[float] | np.ndarray, head: str | None = None, eps: float = 1e-3) -> GalaxyNet:
        """Set the last layer's bias so that the network starts near predicting ``mean`` (each column's
        training mean), instead of 0.5 everywhere: logit(mean) for the sigmoid head; for the tree head,
        log of each answer's share of its question (the softmax of which is that share)."""
        mean = np.clip(np.asarray(mean, dtype=np.float64), eps, 1 - eps)
        head = head or self.head
        if head == "sigmoid":
            bias = np.log(mean / (1 - mean))
        else:
            bias = np.zeros_like(mean)
            for _, sl in schema.question_slices():
                bias[sl] = np.log(mean[sl] / mean[sl].sum())
        last = cast(nn.Linear, self.tail[-1])
        last.bias.copy_(torch.as_tensor(bias, dtype=last.bias.dtype))
        return self

    def set_speed(self, channels_last: bool = False, compile: bool = False) -> GalaxyNet:
        """NHWC weights (convolutions then pick NHWC; no input conversion needed) and/or a compiled body, in place.

        Neither changes the state dict, so checkpoints load the same either way.
        """
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.body.compile()  # nn.Module.compile: in place, keeps the parameter names of checkpoints
        return self
