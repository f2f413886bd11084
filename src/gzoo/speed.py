"""Speed knobs that act on the module: channels_last memory layout and torch.compile.

The other knobs are Trainer arguments in conf/trainer/: precision (32-true, 16-mixed,
bf16-mixed), accumulate_grad_batches, gradient_clip_val. ``trainer=gpu`` sets them all.
Neither knob changes the state dict, so checkpoints load the same either way.
"""

from __future__ import annotations

import torch
from torch import nn


def apply_speed(module: nn.Module, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Put the weights in NHWC layout and/or compile the body, in place; returns ``module``."""
    if channels_last:
        # Convolutions pick NHWC when their weights are NHWC, so the input batch needs no conversion.
        module.to(memory_format=torch.channels_last)
    if compile:
        module.body.compile()  # nn.Module.compile: in place, keeps the parameter names of checkpoints
    return module
