"""Speed presets, DDP, the SLURM launcher, the Optuna search and the heads sweep compose from the real conf/."""

import subprocess
import sys

import hydra
import lightning as L
import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from gzoo.train import build_module
from tests.conftest import ROOT, compose_train, make_cfg, write_kaggle


def trainer_kwargs(cfg) -> dict:
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def test_default_trainer_is_exact_and_gpu_preset_is_fast():
    cfg = compose_train()
    assert cfg.trainer.precision == "32-true" and cfg.trainer.accumulate_grad_batches == 1
    assert cfg.trainer.gradient_clip_val is None
    assert not cfg.speed.channels_last and not cfg.speed.compile

    gpu = compose_train("trainer=gpu", "speed=gpu", "model=b3")
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "bf16-mixed"
    assert gpu.speed.channels_last and gpu.data.num_workers == 8 and gpu.model.name == "b3"
    assert gpu.trainer.max_epochs == 50  # the rest of trainer/default.yaml is kept


def test_trainer_group_holds_trainer_arguments_only():
    """Every key of every trainer preset is a lightning.Trainer argument (speed knobs on the model or data live in speed/)."""
    import inspect

    allowed = set(inspect.signature(L.Trainer.__init__).parameters)
    for preset in ("default", "gpu", "ddp"):
        keys = set(compose_train(f"trainer={preset}").trainer)
        assert keys <= allowed, (preset, keys - allowed)


def test_channels_last_and_compile_keep_outputs_and_checkpoint_keys(tmp_path):
    torch.manual_seed(0)
    plain = build_module(make_cfg(tmp_path, tmp_path), pretrained=False).eval()
    nhwc = build_module(make_cfg(tmp_path, tmp_path, "speed.channels_last=true"), pretrained=False)
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.net.body.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc.eval()(x), plain(x), atol=1e-5, rtol=1e-4)
    # compiled lazily (running it takes minutes on a CPU); checkpoints keep their parameter names
    compiled = build_module(make_cfg(tmp_path, tmp_path, "speed.compile=true"), pretrained=False)
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("preset", ["default", "gpu", "ddp"])
def test_every_trainer_preset_is_valid_lightning_trainer_arguments(preset):
    # accelerator=cpu: this machine has no GPU; Trainer() checks every other argument.
    cfg = compose_train(f"trainer={preset}", "trainer.accelerator=cpu", "trainer.precision=32-true")
    trainer = L.Trainer(**trainer_kwargs(cfg) | dict(logger=False))  # raises on an argument Lightning does not take
    assert trainer.max_epochs == cfg.trainer.max_epochs and trainer.num_nodes == cfg.trainer.num_nodes
    assert trainer.accumulate_grad_batches == cfg.trainer.accumulate_grad_batches


def test_ddp_preset_takes_devices_and_nodes():
    cfg = compose_train("trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 8 and cfg.trainer.num_nodes == 2
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"  # on top of trainer=gpu


def test_slurm_launcher_gets_one_task_per_gpu_on_each_node():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs hydra-submitit-launcher")
    cfg = compose_train("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu", hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)  # what `-m hydra/launcher=slurm` builds
    assert type(launcher).__name__ == "SlurmLauncher"
    p = launcher.params
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"], p["partition"]) == (2, 4, 4, "gpu")
    # one GPU per job by default, e.g. for model=b0,...,b7
    single = compose_train("hydra/launcher=slurm", hydra_config=True)
    assert (single.hydra.launcher.nodes, single.hydra.launcher.tasks_per_node, single.hydra.launcher.gpus_per_node) == (1, 1, 1)


def test_optuna_search_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper")
    cfg = compose_train("hparams_search=optuna", hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optim.lr", "model.dropout", "data.batch_size", "data.augment.shift", "data.augment.zoom", "data.augment.brightness"}
    cfg.hydra.job.num = 3  # as the sweeper sets it for the fourth trial
    HydraConfig.instance().set_config(cfg)
    assert cfg.run_dir.endswith("optuna/trial_3/b0/finetune")  # each trial its own run folder


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_optuna_search_runs_and_minimises_val_rmse(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper")
    data = write_kaggle(tmp_path / "gz2", n=24)
    out = tmp_path / "outputs"
    cmd = [
        sys.executable, "-m", "gzoo.train", "-m", "hparams_search=optuna",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
        f"paths.output_root={out}", f"data.root={data}", "debug=tiny",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert run.returncode == 0, run.stderr[-3000:]
    (results,) = out.glob("hydra/multirun/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert 0 < best["best_value"] < 1 and set(best["best_params"]) >= {"optim.lr", "model.dropout"}
    assert sorted(p.name for p in (out / "optuna").iterdir()) == ["trial_0", "trial_1"]


def test_heads_experiment_sweeps_both_heads_on_the_same_split_and_seed():
    runs = {head: compose_train("experiment=heads", f"model.head={head}", hydra_config=True) for head in ("sigmoid", "tree")}
    assert runs["tree"].hydra.sweeper.params["model.head"] == "sigmoid,tree"
    assert runs["sigmoid"].run_dir != runs["tree"].run_dir
    for key in ("seed", "data.split_seed", "data.val_fraction", "model.timm_name"):
        assert OmegaConf.select(runs["sigmoid"], key) == OmegaConf.select(runs["tree"], key)
