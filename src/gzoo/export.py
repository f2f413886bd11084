"""Export a trained checkpoint for a survey pipeline: ONNX or TorchScript, with a JSON sidecar.

    python -m gzoo.export ckpt=outputs/default/b0/fulltune/checkpoints/best.ckpt format=onnx
    python -m gzoo.export ckpt=... format=torchscript out=b0.pt overwrite=true

The exported network takes a float32 batch (N, 3, S, S) of normalised images (the central
crop resized to S x S, RGB / 255, then (x - mean) / std per channel) and returns the 37 vote
fractions (N, 37) in Kaggle column order. ``<out>.json`` beside it records everything another
program needs to make that input as gzoo does (:func:`preprocessing`): the crop, S, the resize's
OpenCV interpolation (cv2.INTER_AREA; PIL's resize gives other pixels), the channel order (RGB),
the value scale (/ 255), mean, std, the layout (NCHW), the columns and the head.
:func:`load_exported` runs either file from numpy.
The two files appear together or not at all: a failed export (a full disk) leaves any earlier
pair as it was, and a second export to the same out while one runs is refused.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gzoo.config import REQUIRED, option, run_tool
from gzoo.errors import GzooError
from gzoo.io import atomic_write_together, output_lock, write_failure
from gzoo.log import say
from gzoo.module import gzoo_version, load_net
from gzoo.net import GalaxyNet

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


@dataclass
class ExportOptions:
    ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train")
    format: str = option("onnx", "onnx (run with onnxruntime) or torchscript (torch.jit; deprecated by PyTorch, prefer onnx)", choices=tuple(SUFFIX))
    out: Path | None = option(None, "the file to write (default: the checkpoint's path with .onnx or .pt)")
    overwrite: bool = option(False, "replace an existing file")


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON record of an exported file lives: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export(ckpt: str | Path, format: str = "onnx", out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the checkpoint's network as ONNX or TorchScript plus its sidecar; returns the file's path.

    Before the work, ``out``'s folder is made and tried and ``.<out's name>.lock`` beside it is taken (a second
    export to the same ``out`` is refused); the model and its sidecar are made in memory, then written to
    temporary files beside their targets and renamed into place together (gzoo.io.atomic_write_together):
    on a full disk both earlier files are left as they were and one sentence says why.
    """
    if format not in SUFFIX:
        raise GzooError(f"format must be one of {', '.join(SUFFIX)}, got {format!r}.")
    out = Path(out) if out else Path(ckpt).with_suffix(SUFFIX[format])
    if out.suffix != SUFFIX[format]:
        raise GzooError(f"out={out} must end in {SUFFIX[format]} for format={format}.")
    with output_lock(out, "out", overwrite, also=[sidecar_path(out)]):
        network = load_net(ckpt)
        example = torch.zeros(2, 3, network.image_size, network.image_size)  # float: the exported file takes normalised images
        with torch.no_grad():
            model = _onnx_bytes(network, example) if format == "onnx" else _torchscript_bytes(network, example)
        meta = {
            "format": format,
            **preprocessing(network),
            "output": f"float32 (N, {len(network.labels)}): vote fractions in the order of columns",
            "columns": list(network.labels),
            "head": network.head,
            "timm_name": network.timm_name,
            "checkpoint": str(ckpt),
            "gzoo_version": gzoo_version(),
        }
        try:
            atomic_write_together({out: model, sidecar_path(out): (json.dumps(meta, indent=2) + "\n").encode()})
        except OSError as e:
            said = write_failure(OSError(e.errno, e.strerror), out, "the exported model")  # the target's name, not the temporary file's
            raise GzooError(
                f"{said}; neither it nor {sidecar_path(out).name} was changed (nothing half-written is left); "
                "free space there or choose another out=, then run the same command again."
            ) from None
    return out


#: The OpenCV interpolation of gzoo's evaluation view (gzoo.transforms.CentralCropResize); a test checks that
#: resizing with it reproduces gzoo.transforms.eval_transform bit for bit.
RESIZE_INTERPOLATION = "cv2.INTER_AREA"


def preprocessing(network: GalaxyNet) -> dict:
    """The sidecar's account of the input, step by step, for a program without gzoo: decode to RGB uint8 (H, W, 3),
    crop, resize, scale, normalise, lay out."""
    size, fraction = network.image_size, network.crop_fraction
    return {
        "input": "float32 (N, 3, image_size, image_size): central crop, resized, RGB / 255, (x - mean) / std",
        "crop_fraction": fraction,
        "crop": (
            f"the central round(H * {fraction}) x round(W * {fraction}) pixels of the decoded (H, W) image, "
            "from row (H - round(H * crop_fraction)) // 2 and column (W - round(W * crop_fraction)) // 2"
        ),
        "image_size": size,
        "resize": {
            "to": [size, size],
            "interpolation": RESIZE_INTERPOLATION,
            "call": f"cv2.resize(crop, ({size}, {size}), interpolation={RESIZE_INTERPOLATION}) on the uint8 RGB crop",
            "note": "PIL's resize (and torchvision's) differs: other pixels, other predictions",
        },
        "dtype_before_scale": "uint8",
        "channel_order": "RGB",
        "value_scale": "x / 255 (float32, 0 ... 1)",
        "mean": list(network.mean),
        "std": list(network.std),
        "normalise": "(x / 255 - mean[c]) / std[c] per channel c, in RGB order",
        "layout": "NCHW",
        "dtype": "float32",
    }


def _torchscript_bytes(network: GalaxyNet, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "TorchScript is deprecated": the user asked for it
        torch.jit.save(torch.jit.trace(network, example), buffer)
    return buffer.getvalue()


def _onnx_bytes(network: GalaxyNet, example: torch.Tensor) -> bytes:
    """The network as one self-contained ONNX file's bytes (fine below 2 GB; b7 is about 260 MB)."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs both)
        import onnxscript  # noqa: F401
    except ImportError:
        raise GzooError("exporting to ONNX needs the onnx and onnxscript packages: pip install onnx onnxscript onnxruntime.") from None
    program = torch.onnx.export(
        network,
        (example,),
        None,  # not written here: gzoo.io writes the bytes beside the sidecar, atomically
        input_names=["image"],
        output_names=["fractions"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},  # GalaxyNet.forward(x)
        dynamo=True,
        verbose=False,
    )
    return program.model_proto.SerializeToString()  # type: ignore[union-attr]  # dynamo=True always returns an ONNXProgram


class ExportedModel:
    """An exported file as a function: numpy float32 (N, 3, S, S) -> numpy float32 (N, 37).

    ``meta`` holds the sidecar's record (image_size, crop_fraction, mean, std, columns, head).
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise GzooError(f"exported model {path} not found.")
        if not sidecar_path(path).is_file():
            raise GzooError(f"{sidecar_path(path)} not found; it records the input size and normalisation, so export again with gzoo.export.")
        self.path = path
        self.meta = json.loads(sidecar_path(path).read_text())
        self._session: Any = None  # an onnxruntime session, or
        self._net: Any = None  # a torch.jit module
        if path.suffix == SUFFIX["onnx"]:
            try:
                import onnxruntime
            except ImportError:
                raise GzooError(f"running {path} needs onnxruntime: pip install onnxruntime.") from None
            self._session = onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())
        elif path.suffix == SUFFIX["torchscript"]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self._net = torch.jit.load(str(path), map_location="cpu").eval()
        else:
            raise GzooError(f"{path}: expected a .onnx or .pt file written by gzoo.export.")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        size = self.meta["image_size"]
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise GzooError(f"{self.path} takes images of shape (N, 3, {size}, {size}), got {images.shape}.")
        if self._session is not None:
            return self._session.run(None, {"image": images})[0]
        with torch.no_grad():
            return self._net(torch.from_numpy(images)).numpy()


def load_exported(path: str | Path) -> ExportedModel:
    """Load a file written by :func:`export` (.onnx with onnxruntime, .pt with torch.jit)."""
    return ExportedModel(path)


def _export_and_say(o: ExportOptions) -> None:
    out = export(o.ckpt, o.format, o.out, o.overwrite)
    say(f"wrote {out} and {sidecar_path(out)}")


def main(argv: list[str] | None = None) -> int:
    return run_tool(_export_and_say, ExportOptions, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
