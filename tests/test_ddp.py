"""DDP on 2 CPU processes (gloo): val/rmse over every galaxy exactly once, as on one process."""

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gzoo.train import build_datamodule, build_module
from tests.conftest import make_cfg, write_kaggle


def numpy_rmse(module, dataset, repeat_first: int = 0) -> float:
    """RMSE over the dataset computed here, optionally with its first galaxies counted twice."""
    items = [dataset[i] for i in [*range(len(dataset)), *range(repeat_first)]]
    with torch.no_grad():
        pred = module.eval()(torch.stack([it["image"] for it in items])).numpy()
    target = np.stack([it["target"].numpy() for it in items])
    return float(np.sqrt(np.mean((pred - target) ** 2)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_val_rmse_equals_single_process(tmp_path):
    # 46 galaxies -> 7 in validation: 4 + 3 over 2 processes, in batches of 3 -> 2 and 1 batches.
    # A padding sampler would add a repeat to even out the shares.
    cfg = make_cfg(
        tmp_path,
        write_kaggle(tmp_path / "gz2", n=46),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn",  # "ddp" would re-launch pytest itself for the second process
        "trainer.precision=32-true",
        "trainer.limit_train_batches=2",
        "data.batch_size=3",
    )
    dm = build_datamodule(cfg)
    dm.setup()
    assert len(dm.ids("val")) == 7
    torch.manual_seed(0)
    module = build_module(cfg, pretrained=False)

    # Train an epoch on 2 processes; its closing validation gives val/rmse, and the trained
    # weights come back to this process.
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True) | quiet)
    trainer.fit(module, datamodule=dm)
    ddp = float(trainer.callback_metrics["val/rmse"])

    # The same weights in a fresh module (ddp_spawn also brings back the processes' metric states).
    same = build_module(cfg, pretrained=False)
    same.load_state_dict(module.state_dict())
    (single,) = L.Trainer(accelerator="cpu", devices=1, **quiet).validate(same, datamodule=dm, verbose=False)
    exact = numpy_rmse(same, dm.dataset("val"))
    assert single["val/rmse"] == pytest.approx(exact, rel=1e-5)
    assert ddp == pytest.approx(exact, rel=1e-5)
    # A repeated galaxy (what a padding sampler adds) would move the number by more than that.
    assert numpy_rmse(same, dm.dataset("val"), repeat_first=1) != pytest.approx(exact, rel=1e-3)
