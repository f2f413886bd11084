"""The real conf/ composes for every variant and agrees with timm."""

import pytest
import timm
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF

VARIANTS = [f"b{i}" for i in range(8)]


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_composes_and_matches_timm_native_size(variant):
    cfg = compose_train(f"model={variant}")
    timm_cfg = timm.models.get_pretrained_cfg(cfg.model.timm_name)  # raises for a tag timm does not have
    assert timm_cfg is not None and timm_cfg.hf_hub_id, cfg.model.timm_name
    assert cfg.model.image_size == timm_cfg.input_size[-1] == timm_cfg.input_size[-2]
    assert cfg.data.image_size == cfg.model.image_size  # one home for the size
    assert cfg.model.timm_name.startswith(f"tf_efficientnet_{variant}.")
    OmegaConf.resolve(cfg)  # every interpolation resolves


def test_recipe_defaults_are_the_papers():
    cfg = compose_train()
    assert (cfg.model.dropout, cfg.model.hidden, cfg.model.lr, cfg.model.lr_factor, cfg.model.lr_patience) == (0.5, 64, 1.5e-4, 0.8, 4)
    assert (cfg.data.batch_size, cfg.data.val_fraction, cfg.data.crop_fraction) == (70, 0.15, 0.5)
    assert cfg.model.pretrained is True
    assert cfg.callbacks.early_stopping.patience == 10 and cfg.trainer.max_epochs == 50


def test_fulltune_starts_from_the_finetune_checkpoint_of_the_same_variant(tmp_path):
    cfg = compose_train("model=b3", "phase=fulltune", f"paths.output_root={tmp_path}", "name=exp")
    assert cfg.phase.freeze_body is False
    assert cfg.phase.init_from == f"{tmp_path}/exp/b3/finetune/checkpoints/best.ckpt"
    assert compose_train("phase=finetune").phase.freeze_body is True


def test_experiment_recipe_composes():
    cfg = compose_train("experiment=paper_b0")
    assert cfg.name == "paper_b0" and cfg.model.name == "b0"
