"""Training entry point: ``python -m gzoo.train phase=finetune`` (then ``phase=fulltune``).

The data module, the module and the Trainer are built here in plain code from the composed
config (conf/, shipped inside the package), so a run can be followed with go-to-definition;
only swappable parts (callbacks, loggers, extra augmentations) come from ``_target_`` entries.

Order of work: check every option -> lock the run folder -> validate the data -> check the
output folder -> build the model -> fit -> score the best checkpoint -> write metrics.json.
Nothing but the lock is written to the run folder before the data is known to be good (see
runsafety.py for the lock, the signals and the checkpoint writer).
"""

from __future__ import annotations

import errno
import json
import shutil
import sys
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gzoo import schema
from gzoo.callbacks import EpochHistory, StepSeed
from gzoo.data import GalaxyZooDataModule
from gzoo.errors import GzooError, NonFiniteLossError, RunInterrupted
from gzoo.features import feature_datamodule
from gzoo.io import atomic_open, atomic_write_text, write_failure
from gzoo.log import error, logger, say, warn
from gzoo.metrics import baseline_rmse, rmse
from gzoo.module import GalaxyZooModule, load_net
from gzoo.net import PRECISIONS
from gzoo.predict import predict_loader
from gzoo.runsafety import AtomicCheckpointIO, RecordSplit, RunGuard, StopOnSignal, check_run_options, check_writable

CONF = Path(__file__).parent / "conf"


def build_datamodule(cfg: DictConfig) -> GalaxyZooDataModule:
    """The run's data module, from its ``data`` node and seed."""
    return GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed)


def build_module(cfg: DictConfig, pretrained: bool) -> GalaxyZooModule:
    """The run's module from its ``model`` node, the phase and the crop; ``pretrained=False`` when
    the weights will come from a checkpoint (nothing is downloaded then)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("start_at_mean", None)  # an instruction to train(), not part of the network
    if not pretrained:
        model.update(pretrained=False, weights=None)
    optim = OmegaConf.to_container(cfg.optim, resolve=True) if "optim" in cfg else None
    labels = schema.label_columns(cfg.data.get("labels", "gz2"))
    # BatchNorm keeps running statistics only a trained body has; one from random weights must learn them.
    trained = bool(cfg.model.get("pretrained") or cfg.model.get("weights") or cfg.phase.get("init_from"))
    freeze_bn_stats = bool(cfg.phase.get("freeze_bn_stats", False))
    if freeze_bn_stats and not trained and not cfg.phase.freeze_body:
        say("the body starts from random weights, so its BatchNorm layers learn their statistics (phase.freeze_bn_stats keeps a trained body's)")
        freeze_bn_stats = False
    module = GalaxyZooModule(
        **model,
        labels=None if schema.is_gz2(labels) else labels,
        optim=optim,
        freeze_body=cfg.phase.freeze_body,
        freeze_bn_stats=freeze_bn_stats,
        crop_fraction=cfg.data.crop_fraction,
    )
    module.net.set_speed(**cfg.speed)
    return module


def load_init_weights(module: GalaxyZooModule, path: Path) -> None:
    """Copy the weights of an earlier phase's checkpoint into ``module``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    theirs = ckpt.get("hyper_parameters", {}).get("timm_name")
    if theirs != module.hparams.timm_name:
        raise GzooError(f"phase.init_from={path} holds a {theirs} model, but this run builds {module.hparams.timm_name}.")
    module.load_state_dict(ckpt["state_dict"])


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``resume=true`` -> the run's last.ckpt, ``resume=PATH`` -> that file."""
    resume = cfg.get("resume", False)
    if resume is False or resume is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if resume is True else Path(resume)
    if not path.is_file():
        raise GzooError(f"resume={resume} but {path} does not exist; run without resume to start afresh.")
    epoch, most = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("epoch", 0), cfg.trainer.get("max_epochs")
    if most is not None and most >= 0 and epoch > most:  # Lightning's own refusal, as a traceback
        raise GzooError(f"{path} was saved after epoch {epoch} (counting from 0), past trainer.max_epochs={most}; raise trainer.max_epochs to continue it.")
    return path


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier run unless ``overwrite=true`` (which deletes its results)."""
    earlier = [run_dir / n for n in ("checkpoints", "tensorboard", "metrics.json", "skipped_images.csv") if (run_dir / n).exists()]
    if earlier and not overwrite:
        raise GzooError(f"{run_dir} already holds a run; pass resume=true to continue it, overwrite=true to replace it, or name=<new name> to keep both.")
    for p in earlier:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one phase as configured; returns the final metrics (also written to metrics.json).

    Every option is checked before anything is read or written; the run folder is then locked until
    the run ends, and SIGINT/SIGTERM stop it at a batch boundary with a RunInterrupted (runsafety.py).
    """
    check_run_options(cfg)
    with RunGuard(Path(cfg.run_dir), lock=rank_zero_only.rank == 0) as guard:  # one process (rank zero) writes files
        return _train(cfg, guard)


def _train(cfg: DictConfig, guard: RunGuard) -> dict[str, float]:
    run_dir = Path(cfg.run_dir)
    say(f"{cfg.phase.name} of {cfg.model.timm_name}: outputs go to {run_dir}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    if cfg.data.get("synth"):  # data=synthetic: make the set once, then read it like Kaggle's files
        from gzoo.synth import generate

        generate(Path(cfg.data.root), **OmegaConf.to_container(cfg.data.synth, resolve=True))

    dm = build_datamodule(cfg)
    dm.setup()  # validates catalogue and images; raises GzooError before anything is written
    say(f"data: {len(dm.ids('train'))} train / {len(dm.ids('val'))} val / {len(dm.ids('test'))} test galaxies from {dm.root}")

    init_from = Path(cfg.phase.init_from) if cfg.phase.init_from else None
    if init_from is not None and not init_from.is_file():
        raise GzooError(
            f"phase={cfg.phase.name} starts from {init_from}, which does not exist; make it first with "
            f"`python -m gzoo.train phase=finetune model={cfg.model.name} name={cfg.name}` (same data options), "
            "or point phase.init_from at a checkpoint."
        )

    resume_from = resume_checkpoint(cfg, run_dir)

    # Weights: from a checkpoint if resuming or continuing an earlier phase, else pretrained (or from scratch) as asked.
    # model.weights=PATH is loaded whatever model.pretrained says: a file the user named is never dropped.
    module = build_module(cfg, pretrained=init_from is None and resume_from is None)
    if init_from is not None and resume_from is None:
        load_init_weights(module, init_from)
        say(f"weights from {init_from}")
    elif resume_from is None and cfg.model.get("start_at_mean", False):
        module.start_at(dm.train_mean())  # the first epoch starts from predicting the training mean, not 0.5
    if cfg.phase.freeze_body and init_from is None and not (cfg.model.pretrained or cfg.model.weights):
        warn(
            "the frozen body was never trained (model.pretrained=false, no model.weights): this finetune fits the tail to random "
            "features; use a pretrained body (model=lite0 has ImageNet weights offline) or train everything (phase.freeze_body=false)."
        )
    cache = cfg.phase.get("cache_features", False)
    if cache and not cfg.phase.freeze_body:
        raise GzooError("phase.cache_features=true needs a frozen body (phase.freeze_body=true): the features of a body that trains change every step.")

    writer = rank_zero_only.rank == 0  # under DDP every process runs this function; one writes files
    if resume_from is None and writer:
        prepare_run_dir(run_dir, cfg.overwrite)
    elif resume_from is not None:
        say(f"resuming from {resume_from}")
    if writer:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if dm.skipped and writer:
        with atomic_open(run_dir / "skipped_images.csv", newline="") as f:
            pd.DataFrame(dm.skipped, columns=["path", "reason"]).to_csv(f, index=False)
        say(f"left out {len(dm.skipped)} unreadable images (data.on_bad_image=skip); list in {run_dir / 'skipped_images.csv'}")
    history = EpochHistory()
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if c is not None] + [StepSeed(cfg.seed), history]
    callbacks += [StopOnSignal(guard), RecordSplit(cfg.data)]  # a signal stops at a batch boundary; checkpoints record their split
    loggers = [hydra.utils.instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks),
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],  # a checkpoint is renamed into place only once complete
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    fit_data = dm
    if cache:
        if trainer.world_size > 1:
            raise GzooError("phase.cache_features=true runs on one device; drop it for a multi-device run (each device would compute every feature).")
        module.to(trainer.strategy.root_device)
        fit_data = feature_datamodule(module.net, dm, cfg.phase.cache_views, run_dir / "features", str(cfg.trainer.precision))
    try:
        trainer.fit(module, datamodule=fit_data, ckpt_path=resume_from)
    except SIGTERMException:  # Lightning's own SIGTERM stop (the one under DDP): the same sentence as StopOnSignal's
        raise guard.interrupted(trainer.current_epoch) from None
    except NonFiniteLossError as e:
        raise GzooError(
            f"{e}; the run stopped and {last if last.is_file() else 'no checkpoint was written yet, so nothing'} "
            "holds the last good weights; lower optim.lr or check the inputs."
        ) from None
    guard.fit_done()  # a signal in fit's last moments stops the run here; later ones stop it at once

    ckpt = trainer.checkpoint_callback
    metrics = {
        "val/rmse": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else float("nan"),
        "val/rmse_baseline": baseline_rmse(dm.train_mean(), dm.labels("val")),
        "epochs": trainer.current_epoch,
    }
    if len(dm.ids("test")):
        (result,) = trainer.test(module, datamodule=dm, ckpt_path="best" if ckpt else None, verbose=False)
        metrics["test/rmse"] = float(result["test/rmse"])
        metrics["test/rmse_baseline"] = baseline_rmse(dm.train_mean(), dm.labels("test"))
    metrics["best_checkpoint"] = str(ckpt.best_model_path) if ckpt else ""
    if cfg.get("tta8_at_end", False) and writer and metrics["best_checkpoint"] and len(dm.ids("val")):
        metrics["val/rmse_tta8"] = tta8_rmse(Path(metrics["best_checkpoint"]), dm, trainer.strategy.root_device, str(cfg.trainer.precision))
        for lg in trainer.loggers:
            lg.log_metrics({"val/rmse_tta8": metrics["val/rmse_tta8"]}, step=trainer.global_step)
    metrics["history"] = history.epochs
    if writer:
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    tta = f", with 8 views {metrics['val/rmse_tta8']:.5f}" if "val/rmse_tta8" in metrics else ""
    say(f"best val/rmse {metrics['val/rmse']:.5f}{tta} (predict-the-training-mean baseline {metrics['val/rmse_baseline']:.5f})")
    if not metrics["val/rmse"] < metrics["val/rmse_baseline"]:
        warn(
            f"the best val/rmse {metrics['val/rmse']:.5f} is not below predicting the training mean ({metrics['val/rmse_baseline']:.5f}): "
            "this model has not learned anything usable yet; train longer, change optim.lr, or check the labels and images."
        )
    if "test/rmse" in metrics:
        say(f"test/rmse {metrics['test/rmse']:.5f} (baseline {metrics['test/rmse_baseline']:.5f})")
    say(f"outputs in {run_dir} (checkpoints/, tensorboard/, metrics.json); view with `tensorboard --logdir {run_dir.parent.parent}`")
    return metrics


def tta8_rmse(ckpt: Path, dm: GalaxyZooDataModule, device: torch.device, precision: str) -> float:
    """The validation RMSE of a checkpoint averaged over the 8 right-angle views of each galaxy (val/rmse_tta8)."""
    net = load_net(ckpt, str(device))
    loader = dm.loader("val", views=(0.0,))
    pred = np.concatenate([b["pred"] for b in predict_loader(net, loader, tta=8, precision=precision if precision in PRECISIONS else "32-true")])
    return rmse(pred, dm.labels("val"))


def help_text(argv: list[str]) -> str:
    """``python -m gzoo.train --help``: the groups, then every key of the chosen configs with its default and
    comment, read from the YAML files themselves (Hydra's own help prints the composed config without comments)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "train.yaml").defaults)
    chosen = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items()}
    chosen.update(a.split("=", 1) for a in argv if "=" in a and a.split("=", 1)[0] in chosen)  # e.g. model=b3 --help
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    lines = [
        "python -m gzoo.train [group=option ...] [key=value ...]: train one phase (finetune, then fulltune).",
        "  -m: a sweep (e.g. -m model=b0,b1); --cfg job: print the composed config; --hydra-help: Hydra's own options.",
        "",
        "Groups (group=option; the default marked *):",
    ]
    for g in groups:
        options = sorted(p.stem for p in (CONF / g).glob("*.yaml"))
        lines.append(f"  {g}: " + ", ".join(f"{o}*" if o == chosen.get(g) else o for o in options))
    files = [("train.yaml", "")] + [(f"{g}/{chosen[g]}.yaml", f"{g}.") for g in groups if chosen.get(g) not in (None, "null")]
    for name, prefix in files:
        text = (CONF / name).read_text()
        body = [line for line in text.split("\n") if line.strip()]
        if name == "train.yaml":  # its defaults list is shown above as the groups
            start = next(i for i, line in enumerate(body) if line.startswith("name:"))
            body = body[start:]
        lines += ["", f"# --- {name}" + (f": keys {prefix}*" if prefix and "@package _global_" not in text else ""), *body]
    return "\n".join(lines)


def check_overrides(argv: list[str]) -> None:
    """Compose the config once before Hydra runs, so an unknown key, a missing group option or a bad
    override ends in gzoo's one sentence and exit 2 (Hydra's own answer is several lines and exit 1).
    Sweeps and Hydra's flags (any argument starting with -) are left to Hydra."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=argv)
    except (HydraException, OmegaConfBaseException) as e:
        text = str(e).split("Config search path:")[0]  # Hydra appends where it looked: not the user's concern
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(("full_key", "object_type"))]
        said = " ".join(lines[:2])
        if len(lines) > 2 and lines[1].endswith(":"):  # "Available options in 'model':" then one per line
            said += " " + ", ".join(lines[2:])
        error(said.rstrip(".") + "; python -m gzoo.train --help lists the groups and keys.")
        sys.exit(2)
    try:  # Hydra writes its records under paths.output_root before train() runs: a read-only folder is said here
        check_writable(cfg.run_dir)
        if not any(a.startswith("hydra.run.dir=") for a in argv):
            check_writable(Path(cfg.paths.output_root) / "hydra")
    except GzooError as e:
        error(str(e))
        sys.exit(2)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)["val/rmse"]
    except RunInterrupted as e:
        logger.error(str(e))
        sys.exit(e.status)  # 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM
    except GzooError as e:
        error(str(e))
        sys.exit(2)
    except OSError as e:  # a disk that filled up or turned read-only under a write other than a checkpoint's
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        error(f"{write_failure(e, cfg.run_dir)}; free space there or set paths.output_root to a folder you can write to.")
        sys.exit(2)


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text(sys.argv[1:]))
        sys.exit(0)
    try:
        check_overrides(sys.argv[1:])
        main()
    except KeyboardInterrupt:  # Ctrl-C before train() set its handlers (imports, composing the config)
        logger.error("stopped by SIGINT before training started; nothing was written; run the same command again.")
        sys.exit(130)
