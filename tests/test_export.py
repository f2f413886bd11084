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


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
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
