"""Learning is measured: a small model trained for a few minutes on synthetic galaxies beats the mean.

Slow (about 6 minutes on 2 CPU cores): `make test-slow`. The model is the demo's EfficientNet-B0
from scratch at 64 px (no internet needed); everything trains from the first epoch.
"""

import json

import pytest
from hydra import compose, initialize_config_dir

from gzoo.train import train
from tests.conftest import CONF


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_b0_from_scratch_beats_predicting_the_mean_on_held_out_synthetic_galaxies(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=demo",
                "phase=fulltune",
                "phase.init_from=null",  # from scratch, body trainable
                "data.synth.n_train=2000",  # 1700 train / 300 val
                "data.synth.n_test=0",
                "trainer.max_epochs=8",
                "callbacks.progress_bar=null",
                f"paths.output_root={tmp_path / 'outputs'}",
                f"paths.synth_root={tmp_path / 'synthetic'}",
            ],
        )
    metrics = train(cfg)
    ratio = metrics["val/rmse"] / metrics["val/rmse_baseline"]
    print(json.dumps({**metrics, "ratio": ratio}))  # pytest -s shows the figures
    # 300 held-out galaxies the model never trained on, against each column's training mean.
    assert metrics["val/rmse_baseline"] > 0.1  # the task is not trivial: the votes vary
    assert ratio <= 0.8, f"val/rmse {metrics['val/rmse']:.5f} is {ratio:.3f}x the mean baseline {metrics['val/rmse_baseline']:.5f}"
