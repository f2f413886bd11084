"""The optimiser and its schedule, from the run's ``optim`` node (conf/optim/: paper, best).

    paper   Adam at 1.5e-4, the lr x0.8 after 4 epochs without a better val/rmse (the recipe's)
    best    AdamW at 3e-4 with decoupled weight decay, a linear warmup then a cosine decay per step,
            measured to beat paper on real galaxies (README)

``layer_decay < 1`` trains each body block below the top one ``layer_decay`` times slower (timm's layer
groups); on gz2-2k it lost to one lr everywhere, so both recipes keep 1.

Weight decay never applies to biases and normalisation weights (timm's parameter groups).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from omegaconf import OmegaConf
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from gzoo.config import check_values
from gzoo.errors import GzooError

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def check(optim: dict[str, Any]) -> dict[str, Any]:
    """The optim node with every key filled in from OptimOptions' defaults (gzoo/options.py: the paper's recipe),
    each value checked by the schema's ranges and choices (one sentence if wrong)."""
    from gzoo.options import OptimOptions

    defaults = cast(dict, OmegaConf.to_container(OmegaConf.structured(OptimOptions), resolve=True))  # a default that depends on the phase: any other phase's
    unknown = set(optim) - set(defaults)
    if unknown:
        raise GzooError(f"optim.{sorted(unknown)[0]} is not an optimiser setting; the settings are {', '.join(defaults)}.")
    o = {**defaults, **optim}
    check_values(o, OptimOptions, "optim.")
    return o


def param_groups(body: nn.Module, tail: nn.Module, o: dict[str, Any]) -> list[dict]:
    """The trainable parameters in groups: per-block lr scales for the body (layer_decay < 1), no decay for 1-D tensors."""
    wd = o["weight_decay"]
    if o["layer_decay"] < 1:
        body_groups = param_groups_layer_decay(body, weight_decay=wd, layer_decay=o["layer_decay"])
    else:
        body_groups = param_groups_weight_decay(body, weight_decay=wd)
    groups = [g for g in body_groups + param_groups_weight_decay(tail, weight_decay=wd) if any(p.requires_grad for p in g["params"])]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g["lr"] = o["lr"] * g.pop("lr_scale", 1.0)
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int, min_fraction: float = 0.0):
    """lr multiplier per step: linear from 0 to 1 over the warmup, then a cosine down to ``min_fraction``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def configure(body: nn.Module, tail: nn.Module, o: dict[str, Any], total_steps: int, max_epochs: int) -> dict:
    """Lightning's ``configure_optimizers`` answer for the optim node ``o`` (checked)."""
    o = check(o)
    optimizer = OPTIMIZERS[o["optimizer"]](param_groups(body, tail, o), lr=o["lr"])
    if o["schedule"] == "plateau":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=o["lr_factor"], patience=o["lr_patience"]
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/rmse", "interval": "epoch"}}
    if o["schedule"] == "constant":
        return {"optimizer": optimizer}
    if total_steps <= 0 or not math.isfinite(total_steps):
        raise GzooError("optim.schedule=cosine needs a known length: set trainer.max_epochs (or max_steps).")
    warmup = round(o["warmup_epochs"] * total_steps / max(1, max_epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(int(total_steps), warmup, o["min_lr_fraction"]))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
