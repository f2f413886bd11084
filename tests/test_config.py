"""The real configs (src/gzoo/conf) compose for every variant and agree with timm; the paper's recipe is pinned."""

import subprocess
import sys

import pytest
import timm
from omegaconf import OmegaConf

from tests.conftest import CONF, ROOT, compose_train

VARIANTS = [f"b{i}" for i in range(8)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_composes_and_matches_timm_native_size(variant):
    cfg = compose_train(f"model={variant}")
    timm_cfg = timm.models.get_pretrained_cfg(cfg.model.timm_name)  # raises for a tag timm does not have
    assert timm_cfg is not None and timm_cfg.hf_hub_id, cfg.model.timm_name
    assert cfg.model.image_size == timm_cfg.input_size[-1] == timm_cfg.input_size[-2]
    assert cfg.data.image_size == cfg.model.image_size  # one home for the size
    assert cfg.model.timm_name.startswith(f"tf_efficientnet_{variant}.")
    OmegaConf.resolve(cfg)  # every interpolation resolves


#: The seed report's recipe (reference/gz2.md), key by key.
RECIPE = {
    "model.timm_name": "tf_efficientnet_b0.in1k", "model.image_size": 224, "model.pretrained": True, "model.weights": None,
    "model.dropout": 0.5, "model.hidden": 64, "model.head": "sigmoid", "model.tree_after_epochs": 0,
    "optim.optimizer": "adam", "optim.lr": 1.5e-4, "optim.schedule": "plateau", "optim.lr_factor": 0.8, "optim.lr_patience": 4,
    "optim.weight_decay": 0.0, "optim.layer_decay": 1.0,
    "data.batch_size": 70, "data.val_fraction": 0.15, "data.test_fraction": 0.0, "data.crop_fraction": 0.5,
    "data.augment.rotate": 180, "data.augment.shift": 0.1, "data.augment.zoom": [0.8, 1.2], "data.augment.hflip": 0.5,
    "data.augment.vflip": 0.5, "data.augment.brightness": [0.9, 1.2], "data.augment.extra": [],
    "trainer.max_epochs": 50, "trainer.precision": "32-true", "callbacks.early_stopping.patience": 10,
}  # fmt: skip


def test_paper_b0_pins_the_whole_recipe_in_its_own_file():
    """Every value of the recipe is written in experiment/paper_b0.yaml, so a later change of a default cannot move it."""
    pinned = OmegaConf.load(CONF / "experiment" / "paper_b0.yaml")
    for key, value in RECIPE.items():
        assert OmegaConf.select(pinned, key, default="<not pinned>") == value, key
    cfg = compose_train("experiment=paper_b0")
    assert {key: OmegaConf.select(cfg, key) for key in RECIPE} == RECIPE


def test_fulltune_starts_from_the_finetune_checkpoint_of_the_same_variant(tmp_path):
    cfg = compose_train("model=b3", "phase=fulltune", f"paths.output_root={tmp_path}", "name=exp")
    assert cfg.phase.freeze_body is False
    assert cfg.phase.init_from == f"{tmp_path}/exp/b3/finetune/checkpoints/best.ckpt"
    assert compose_train("phase=finetune").phase.freeze_body is True


def test_experiment_recipe_composes():
    cfg = compose_train("experiment=paper_b0")
    assert cfg.name == "paper_b0" and cfg.model.name == "b0"


def test_train_help_lists_groups_and_every_field_of_the_schema_with_its_value_and_comment():
    from gzoo.config import fields
    from gzoo.options import RunOptions
    from gzoo.train import help_text

    text = help_text(["--help", "model=b3"])
    groups, keys = text.split("# --- run")
    assert "model: b0, b1, b2, b3*, b4, b5, b6, b7, lite0, lite1, lite2, tiny\n" in groups and "debug: tiny\n" in groups and "speed: cpu*, gpu\n" in groups
    assert ": _" not in groups and ", _" not in groups  # no private file offered as a choice
    assert "optim: best, paper*\n" in groups
    # every field of the schema, with its value as composed for the chosen groups (model=b3: 300 px) and its comment
    for key, f, _ in fields(RunOptions):
        assert f"\n  {key}=" in keys and f.metadata["help"] in keys, key
    assert "  data.batch_size=70    # galaxies per batch, as in the paper\n" in keys and "  model.image_size=300    # " in keys
    assert "  optim.lr=0.00015    # 1.5e-4: the paper's fine-tuning rate; 1e-3 for a feature-cached finetune (phase.cache_features)\n" in keys


@pytest.mark.slow  # a real command: seconds of imports
def test_train_help_as_a_real_command():
    proc = subprocess.run([sys.executable, "-m", "gzoo.train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert "model: b0*, b1" in proc.stdout and "# --- data.*" in proc.stdout


def test_the_library_classes_defaults_are_the_configs():
    """GalaxyZooDataModule and GalaxyZooModule take the keys of the data and model nodes; where their
    Python signatures give a default (for use from Python), it is the config's, so the two cannot drift."""
    import inspect

    from gzoo.data import GalaxyZooDataModule
    from gzoo.module import GalaxyZooModule

    cfg = compose_train()
    for cls, node in ((GalaxyZooDataModule, cfg.data), (GalaxyZooModule, cfg.model)):
        params = inspect.signature(cls.__init__).parameters
        values = OmegaConf.to_container(node, resolve=False)
        values.pop("start_at_mean", None)  # an instruction to train() (the bias start), not a network setting
        values.pop("synth", None)  # how data=synthetic makes its set (gzoo.synth), not read by the data module
        assert set(values) - {"root", "name", "image_size"} <= set(params), cls  # every config key is an argument
        for key, value in values.items():
            default = params[key].default
            if default is inspect.Parameter.empty or key in ("root", "image_size", "name"):  # given by the run: the data folder, the variant
                continue
            assert default == value or (isinstance(value, (list, dict)) and default is None), (cls.__name__, key, default, value)
