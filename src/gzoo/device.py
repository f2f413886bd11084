"""Where a network runs and in which precision: ``device=`` and ``precision=`` of training and every tool."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from gzoo.errors import GzooError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


def resolve_device(device: str) -> torch.device:
    """``auto`` = the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GzooError(f"device={device!r} is not a torch device; use auto, cpu or cuda.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GzooError(f"device={device} was asked for, but no GPU is visible; use device=auto or device=cpu.")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Lightning's precision names; ``auto`` = bf16-mixed on a GPU that has it, else exact 32-bit."""
    if precision not in PRECISIONS:
        raise GzooError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision (as Lightning's Trainer applies it in training)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(resolve_precision(precision, device))
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
