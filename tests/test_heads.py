"""The decision-tree head: consistent by construction, differentiable, switched on after K epochs."""

import pytest
import torch

from gzoo import schema
from gzoo.errors import GzooError
from gzoo.heads import tree_head
from gzoo.module import GalaxyZooModule
from gzoo.train import train
from tests.conftest import make_cfg, write_kaggle

TINY = dict(timm_name="test_efficientnet", pretrained=False, image_size=32)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_tree_head_obeys_every_sum_of_the_table_and_stays_in_0_1(scale):
    raw = torch.randn(500, schema.NUM_ANSWERS, generator=torch.Generator().manual_seed(0)) * scale
    out = tree_head(raw)
    assert out.shape == (500, 37) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    report = schema.tree_inconsistency(out.numpy())
    assert report["max_abs"] < 1e-5, report["per_question"]
    # the sigmoid head on the same inputs is far from consistent, so the check above can fail
    assert schema.tree_inconsistency(torch.sigmoid(raw).numpy())["max_abs"] > 0.1


def test_every_raw_output_gets_a_gradient():
    raw = (torch.randn(8, schema.NUM_ANSWERS, generator=torch.Generator().manual_seed(1)) * 3).requires_grad_()
    weights = torch.rand(8, schema.NUM_ANSWERS, generator=torch.Generator().manual_seed(2))
    (tree_head(raw) * weights).sum().backward()  # a weighted sum: each root group alone always sums to 1
    assert torch.isfinite(raw.grad).all()
    assert (raw.grad != 0).all()


def test_module_rejects_an_unknown_head():
    with pytest.raises(GzooError, match="model.head"):
        GalaxyZooModule(**TINY, head="softmax")


def test_tree_head_switches_on_after_tree_after_epochs(tmp_path):
    # One checkpoint per epoch records the head that epoch used.
    cfg = make_cfg(
        tmp_path,
        write_kaggle(tmp_path / "gz2", n=24),
        "model.head=tree",
        "model.tree_after_epochs=1",
        "model.start_at_mean=false",  # sigmoids near 0.5: far from the tree (started at the mean, they are nearly on it)
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.filename='e{epoch}'",
        "+callbacks.model_checkpoint.save_top_k=-1",
    )
    train(cfg)
    ckpts = tmp_path / "outputs" / "default" / "tiny" / "finetune" / "checkpoints"
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    inconsistency = {}
    for epoch in (0, 1):
        module = GalaxyZooModule.from_checkpoint(ckpts / f"e{epoch}.ckpt").eval()
        assert module.hparams.head == "tree"
        assert module.net.head == ("sigmoid" if epoch == 0 else "tree")
        with torch.no_grad():
            inconsistency[epoch] = schema.tree_inconsistency(module(images).numpy())["max_abs"]
    assert inconsistency[0] > 1e-2 and inconsistency[1] < 1e-5
