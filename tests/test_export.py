"""Export to ONNX and TorchScript: same outputs as PyTorch, a sidecar with the preprocessing, no silent overwrite.

The checkpoint is the shared tiny run's (tests/conftest.py: trained_run, tree head); every export goes under tmp_path.
"""

import json

import numpy as np
import pytest
import torch

from gzoo import schema
from gzoo.export import export, load_exported, main, sidecar_path
from gzoo.module import load_net

pytest.importorskip("onnxruntime", reason="ONNX export tests need onnx, onnxscript and onnxruntime")


@pytest.fixture(scope="module")
def ckpt(trained_run):
    """The shared run's best.ckpt: test_efficientnet at 32 px with the tree head, as gzoo.train saved it (read only)."""
    return trained_run["ckpt"]


@pytest.mark.parametrize(
    "fmt, suffix",
    [pytest.param("onnx", ".onnx", marks=pytest.mark.slow), ("torchscript", ".pt")],  # onnx: 9 s of torch.export, in the slow suite
)
def test_exported_model_matches_pytorch(ckpt, tmp_path, fmt, suffix):
    out = export(ckpt, format=fmt, out=tmp_path / f"model{suffix}")
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["image_size"] == 32 and meta["crop_fraction"] == 0.5 and meta["head"] == "tree"
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["columns"] == schema.COLUMNS

    reference = load_net(ckpt, "cpu")  # the GalaxyNet that was exported, as PyTorch runs it
    run = load_exported(out)
    for n in (1, 5):  # the batch size is free
        images = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
        with torch.no_grad():
            expected = reference(torch.from_numpy(images)).numpy()
        got = run(images)
        assert got.shape == (n, 37)
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert schema.tree_inconsistency(got)["max_abs"] < 1e-5


def test_refuses_to_overwrite_without_overwrite_true(ckpt, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main([f"ckpt={ckpt}", "format=torchscript", f"out={out}"]) == 0
    first = out.read_bytes()
    assert main([f"ckpt={ckpt}", "format=torchscript", f"out={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err and out.read_bytes() == first
    assert main([f"ckpt={ckpt}", "format=torchscript", f"out={out}", "overwrite=true"]) == 0


def test_user_mistakes_end_in_one_sentence(tmp_path, capsys):
    assert main([f"ckpt={tmp_path / 'missing.ckpt'}"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([f"ckpt={tmp_path / 'x.ckpt'}", "format=onnx", f"out={tmp_path / 'x.pt'}"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err


def test_the_sidecar_states_the_whole_input_and_its_resize_reproduces_gzoos_eval_view_bit_for_bit(ckpt, tmp_path):
    """Another program, reading only the sidecar, makes the pixels gzoo's evaluation view makes (its stated OpenCV
    interpolation, not PIL's resize, which differs: the negative control)."""
    import cv2
    from PIL import Image

    from gzoo.transforms import eval_transform

    meta = json.loads(sidecar_path(export(ckpt, format="torchscript", out=tmp_path / "model.pt")).read_text())
    for key in ("crop_fraction", "crop", "image_size", "resize", "channel_order", "value_scale", "mean", "std", "layout", "columns", "dtype"):
        assert key in meta, key
    assert meta["resize"]["interpolation"] == "cv2.INTER_AREA" and "PIL" in meta["resize"]["note"]
    assert meta["channel_order"] == "RGB" and meta["layout"] == "NCHW" and "/ 255" in meta["value_scale"] and meta["dtype"] == "float32"
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225]) and meta["columns"] == schema.COLUMNS

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:203, :171]
    image = np.clip(np.stack([xx, yy, xx + yy], -1) + rng.normal(0, 40, (203, 171, 3)), 0, 255).astype(np.uint8)  # odd, not square
    size, f = meta["image_size"], meta["crop_fraction"]
    h, w = round(203 * f), round(171 * f)  # the sidecar's crop rule
    top, left = (203 - h) // 2, (171 - w) // 2
    crop = image[top : top + h, left : left + w]
    interpolation = getattr(cv2, meta["resize"]["interpolation"].removeprefix("cv2."))
    theirs = cv2.resize(crop, (size, size), interpolation=interpolation).transpose(2, 0, 1)  # RGB, CHW
    ours = eval_transform(size, f)(image=image)["image"].numpy()
    assert theirs.dtype == ours.dtype == np.uint8 and np.array_equal(theirs, ours)
    pil = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    assert not np.array_equal(pil, ours)  # the resize the sidecar warns about gives other pixels
    x = (theirs[None].astype(np.float32) / 255 - np.array(meta["mean"], np.float32)[:, None, None]) / np.array(meta["std"], np.float32)[:, None, None]
    with torch.no_grad():  # the sidecar's scale and normalisation, then the exported file = gzoo on the uint8 view
        expected = load_net(ckpt, "cpu")(torch.from_numpy(ours[None])).numpy()
    np.testing.assert_allclose(load_exported(tmp_path / "model.pt")(x), expected, atol=1e-5)
