"""Training entry point: ``python -m gzoo.train phase=finetune`` (then ``phase=fulltune``).

The data module, the module and the Trainer are built here in plain code from the composed
config (conf/, shipped inside the package), so a run can be followed with go-to-definition;
only swappable parts (callbacks, loggers, extra augmentations) come from ``_target_`` entries.

Order of work: check every option -> lock the run folder -> validate the data -> check the
output folder -> build the model -> fit -> score the best checkpoint -> write metrics.json.
Nothing but the lock is written to the run folder before the data is known to be good (see
run_guard.py for the lock and the signals, io.py for the checkpoint writer).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.experimental.callback import Callback
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gzoo import label_counts, schema
from gzoo.callbacks import EpochHistory, RecordLabelCounts, StepSeed, WeightEMA
from gzoo.config import fields as option_fields
from gzoo.config import front_door
from gzoo.config import shown as shown_value
from gzoo.data import GalaxyZooDataModule
from gzoo.data.split import RecordSplit, split_mismatch
from gzoo.device import PRECISIONS
from gzoo.errors import GzooError, NonFiniteLossError
from gzoo.feature_cache import feature_datamodule
from gzoo.inference import predict_loader
from gzoo.io import atomic_open, atomic_torch_save, atomic_write_text, check_writable, folder_in_use, write_failure
from gzoo.log import error, logger, say, warn
from gzoo.metrics import baseline_rmse, rmse
from gzoo.module import NETWORK_KEYS, GalaxyZooModule, load_net, network_of, read_checkpoint
from gzoo.options import RunOptions, check_run_options
from gzoo.run_guard import AtomicCheckpointIO, RunGuard, StopOnSignal
from gzoo.uncertainty import SAMPLES, calibration

CONF = Path(__file__).parent / "conf"


def build_datamodule(cfg: DictConfig) -> GalaxyZooDataModule:
    """The run's data module, from its ``data`` node and seed."""
    return GalaxyZooDataModule.from_config(cfg.data, seed=cfg.seed)


def build_module(cfg: DictConfig, pretrained: bool) -> GalaxyZooModule:
    """The run's module from its ``model`` node, the phase and the crop; ``pretrained=False`` when
    the weights will come from a checkpoint (nothing is downloaded then)."""
    model = cast(dict, OmegaConf.to_container(cfg.model, resolve=True))
    model.pop("start_at_mean", None)  # an instruction to train(), not part of the network
    if not pretrained:
        model.update(pretrained=False, weights=None)
    optim = cast(dict, OmegaConf.to_container(cfg.optim, resolve=True)) if "optim" in cfg else None
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
        fits=cast(dict, OmegaConf.to_container(cfg.data.fits, resolve=True)) if "fits" in cfg.data else None,
    )
    module.net.set_speed(**cfg.speed)
    return module


def load_init_weights(module: GalaxyZooModule, path: Path) -> bool:
    """Copy the weights of an earlier phase's checkpoint into ``module``: all of them, or only the body when the
    checkpoint's tail was made for other labels (a GZ2 model moved to your own labels), which is said. A checkpoint
    Returns whether the tail is new."""
    ckpt = read_checkpoint(path, "phase.init_from")
    theirs, ours = network_of(ckpt["hyper_parameters"]), network_of(module.hparams)
    if theirs["timm_name"] != ours["timm_name"]:
        raise GzooError(f"phase.init_from={path} holds a {theirs['timm_name']} model, but this run builds {ours['timm_name']}.")
    same_tail = all(theirs[k] == ours[k] for k in ("hidden", "head")) and _labels(theirs["labels"]) == _labels(ours["labels"])
    if same_tail:
        module.load_state_dict(ckpt["state_dict"])
        return False
    body = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.body.")}
    module.load_state_dict(body, strict=False)
    differs = next(
        f"{NETWORK_KEYS[k]}={_listed(theirs[k])}, not {_listed(ours[k])}" for k in ("labels", "hidden", "head") if _labels(theirs[k]) != _labels(ours[k])
    )
    say(f"phase.init_from={path} was trained with {differs}: its body is loaded ({len(body)} tensors) and the tail starts new")
    return True


def _labels(value):
    """Labels as compared between checkpoints: None (the 37 Kaggle answers) and the 37 names are the same."""
    return schema.COLUMNS if value is None else list(value) if isinstance(value, (list, tuple)) else value


def _listed(value) -> str:
    if value is None:
        return "gz2"
    if isinstance(value, (list, tuple)):
        return "gz2" if schema.is_gz2(list(value)) else "[" + ",".join(map(str, value)) + "]"
    return str(value)


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from: ``resume=true`` -> the run's last.ckpt, ``resume=PATH`` -> that file."""
    resume = cfg.get("resume", False)
    if resume is False or resume is None:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if resume is True else Path(resume).expanduser().absolute()
    if not path.is_file() and resume is True:
        if earlier_run(run_dir):
            raise GzooError(
                f"resume=true but the run in {run_dir} stopped before its first checkpoint, so there is nothing to continue; "
                "run the same command with overwrite=true instead of resume=true to start it afresh."
            )
        raise GzooError(f"resume=true but {run_dir} holds no run to continue; run the same command without resume=true to start one.")
    if not path.is_file():
        raise GzooError(f"resume={resume}: no such checkpoint file; point resume at a last.ckpt, or pass resume=true to continue this run_dir's run.")
    return path


def _resume_option(cfg: DictConfig, path: Path) -> str:
    return "resume=true" if cfg.resume is True else f"resume={path}"


def check_resume_split(cfg: DictConfig, ckpt: dict, path: Path) -> None:
    """A resumed run continues the checkpoint's run: the same split and labels, and not past its epochs.
    Otherwise one sentence naming the option and both values, before the data is read."""
    option = _resume_option(cfg, path)
    record = ckpt.get("gzoo_split")
    if record is not None:
        differs = split_mismatch(record, cfg.data)
        if differs:
            raise GzooError(
                f"{option}: {path} was trained with {differs}; a resumed run keeps the split it started with, so set it back, "
                "or start a new run with name=<new name>."
            )
    epoch, most = ckpt.get("epoch", 0), cfg.trainer.get("max_epochs")
    if most is not None and most >= 0 and epoch > most:  # Lightning's own refusal, as a traceback
        raise GzooError(f"{path} was saved after epoch {epoch} (counting from 0), past trainer.max_epochs={most}; raise trainer.max_epochs to continue it.")


def check_resume_network(cfg: DictConfig, module: GalaxyZooModule, ckpt: dict, path: Path) -> None:
    """The network the run builds is the checkpoint's (variant, size, tail, labels, crop): one sentence otherwise."""
    option = _resume_option(cfg, path)
    theirs, ours = network_of(ckpt["hyper_parameters"]), network_of(module.hparams)
    for key, opt in NETWORK_KEYS.items():
        if _labels(theirs[key]) != _labels(ours[key]):
            raise GzooError(
                f"{option}: {path} holds a network with {opt}={_listed(theirs[key])}, not {_listed(ours[key])}; a resumed run keeps its network, "
                "so set it back, or start a new run with name=<new name> (phase.init_from=PATH starts from another run's weights)."
            )


RUN_OUTPUTS = ("checkpoints", "tensorboard", "metrics.json", "skipped_images.csv", "config.yaml")  # not features/: a cache by its inputs, kept


def earlier_run(run_dir: Path) -> list[Path]:
    """What an earlier run left in ``run_dir``."""
    return [run_dir / n for n in RUN_OUTPUTS if (run_dir / n).exists()]


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier run unless ``overwrite=true`` (which deletes its results)."""
    earlier = earlier_run(run_dir)
    if earlier and not overwrite:
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise GzooError(f"{run_dir} already holds a run; pass resume=true to continue it, overwrite=true to replace it, or name=<new name> to keep both.")
        raise GzooError(
            f"{run_dir} holds a run that stopped before its first checkpoint (nothing to continue); pass overwrite=true to start it afresh, "
            "or name=<new name> to keep both."
        )
    for p in earlier:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


#: The options that name files or folders: recorded absolute in config.yaml, so the run's config works from any folder.
PATH_OPTIONS = (
    "paths.output_root",
    "paths.data_root",
    "paths.synth_root",
    "data.root",
    "data.catalog",
    "data.crop_cache",
    "model.weights",
    "phase.init_from",
    "run_dir",
)


def absolute_paths(cfg: DictConfig) -> None:
    """Each of :data:`PATH_OPTIONS` that holds a relative path becomes absolute (from the working folder), in place;
    names that are not paths (data.crop_cache=auto, hf_hub:..., s3://...) stay as they are."""
    for key in PATH_OPTIONS:
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or value in ("", "auto") or re.match(r"^[a-zA-Z][\w+.-]*:", value):
            continue
        if not Path(value).expanduser().is_absolute():
            OmegaConf.update(cfg, key, str(Path(value).expanduser().absolute()), merge=False)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one phase as configured; returns the final metrics (also written to metrics.json).

    Every option is checked before anything is read or written; the run folder is then locked until
    the run ends, and SIGINT/SIGTERM stop it at a batch boundary with a RunInterrupted (run_guard.py).
    """
    check_run_options(cfg)
    absolute_paths(cfg)
    with RunGuard(Path(cfg.run_dir), lock=rank_zero_only.rank == 0) as guard:  # type: ignore[attr-defined]  # one process (rank zero) writes files; Lightning sets .rank
        return _train(cfg, guard)


def _train(cfg: DictConfig, guard: RunGuard) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    say(f"{cfg.phase.name} of {cfg.model.timm_name}: outputs go to {run_dir}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    if cfg.data.get("synth"):  # data=synthetic: make the set once, then read it like Kaggle's files
        from gzoo.synth import generate

        generate(Path(cfg.data.root), **cast(dict, OmegaConf.to_container(cfg.data.synth, resolve=True)))

    # A resumed run continues its checkpoint's split: checked before the data is read (and any cache built).
    resume_from = resume_checkpoint(cfg, run_dir)
    resumed = read_checkpoint(resume_from, "resume") if resume_from is not None else None
    if resumed is not None:
        assert resume_from is not None  # resumed was read from it
        check_resume_split(cfg, resumed, resume_from)

    dm = build_datamodule(cfg)
    dm.setup()  # validates catalogue and images; raises GzooError before anything is written
    say(f"data: {len(dm.ids('train'))} train / {len(dm.ids('val'))} val / {len(dm.ids('test'))} test galaxies from {dm.root}")
    counts = label_counts.record(dm.columns, dm.labels("train"))  # into every checkpoint; its thin answers said at the end

    init_from = Path(cfg.phase.init_from) if cfg.phase.init_from else None
    for folder in (init_from.parent, init_from.parent.parent) if init_from is not None and resume_from is None else ():
        holder = folder_in_use(folder)  # <run_dir>/checkpoints/best.ckpt: the run folder holds the lock while that run writes
        if holder:
            raise GzooError(
                f"phase.init_from={init_from} belongs to a run that is still running ({holder}); wait for it to end, "
                "so this phase starts from its final weights (in a sweep, run phase=finetune first, then phase=fulltune)."
            )
    if init_from is not None and resume_from is None and not init_from.is_file():
        raise GzooError(
            f"phase={cfg.phase.name} starts from {init_from}, which does not exist; make it first with "
            f"`python -m gzoo.train phase=finetune model={cfg.model.name} name={cfg.name}` (same data options), "
            "or point phase.init_from at a checkpoint."
        )

    # Weights: from a checkpoint if resuming or continuing an earlier phase, else pretrained (or from scratch) as asked.
    # model.weights=PATH is loaded whatever model.pretrained says: a file the user named is never dropped.
    # A resumed run is checked against its checkpoint and takes its weights now, before anything (the feature cache) is computed from them.
    module = build_module(cfg, pretrained=init_from is None and resume_from is None)
    new_tail = resume_from is None
    if resumed is not None:
        assert resume_from is not None  # resumed was read from it
        check_resume_network(cfg, module, resumed, resume_from)
        module.load_state_dict(resumed["state_dict"])
        resumed = None
    elif init_from is not None:
        new_tail = load_init_weights(module, init_from)
        say(f"weights from {init_from}")
    if new_tail and cfg.model.get("start_at_mean", False):
        module.start_at(dm.train_mean())  # the first epoch starts from predicting the training mean, not 0.5
    if cfg.phase.freeze_body and init_from is None and resume_from is None and not (cfg.model.pretrained or cfg.model.weights):
        warn(
            "the frozen body was never trained (model.pretrained=false, no model.weights): this finetune fits the tail to random "
            "features; use a pretrained body (model=lite0 has ImageNet weights offline) or train everything (phase.freeze_body=false)."
        )
    cache = cfg.phase.get("cache_features", False)
    if cache and not cfg.phase.freeze_body:
        raise GzooError("phase.cache_features=true needs a frozen body (phase.freeze_body=true): the features of a body that trains change every step.")

    writer = rank_zero_only.rank == 0  # type: ignore[attr-defined]  # Lightning sets .rank; under DDP every process runs this function; one writes files
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
    # callbacks=null, logger=null or ~logger: none of that group (the run's own callbacks below always run)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None] + [StepSeed(cfg.seed), history]
    callbacks += [StopOnSignal(guard), RecordSplit(cfg.data)]  # a signal stops at a batch boundary; checkpoints record their split
    callbacks += [RecordLabelCounts(counts)]  # ... and how many known values each answer had in training (gzoo.label_counts)
    callbacks += [WeightEMA(cfg.optim.ema)] if cfg.optim.get("ema", 0) > 0 else []  # the averaged weights are validated and saved
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers and any(isinstance(c, LearningRateMonitor) for c in callbacks):  # it refuses a run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        say("no logger (logger=null), so the learning rate is not logged (callbacks.lr_monitor left out)")
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer = L.Trainer(
        **cast(dict, OmegaConf.to_container(cfg.trainer, resolve=True)),
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks),
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],  # a checkpoint is renamed into place only once complete
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    fit_data: L.LightningDataModule = dm
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

    ckpt = cast("ModelCheckpoint | None", trainer.checkpoint_callback)  # the run's checkpoint callback is a ModelCheckpoint
    metrics: dict[str, Any] = {
        "val/rmse": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else float("nan"),
        "val/rmse_baseline": baseline_rmse(dm.train_mean(), dm.labels("val")),
        "epochs": trainer.current_epoch,
    }
    if len(dm.ids("test")):
        (result,) = trainer.test(module, datamodule=dm, ckpt_path="best" if ckpt else None, verbose=False)
        metrics["test/rmse"] = float(result["test/rmse"])
        metrics["test/rmse_baseline"] = baseline_rmse(dm.train_mean(), dm.labels("test"))
    metrics["best_checkpoint"] = str(ckpt.best_model_path) if ckpt else ""
    if writer and metrics["best_checkpoint"] and len(dm.ids("val")):
        tta8 = bool(cfg.get("tta8_at_end", False))
        metrics |= calibrate(Path(metrics["best_checkpoint"]), dm, trainer.strategy.root_device, str(cfg.trainer.precision), tta8)
        for lg in trainer.loggers if tta8 else []:
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
    thin = label_counts.thin_columns(counts)
    if thin:
        say(f"{label_counts.sentence(thin, len(dm.columns), label_counts.MIN_KNOWN)}; python -m gzoo.predict thin_labels=nan writes them as NaN")
    say(f"outputs in {run_dir} (checkpoints/, tensorboard/, metrics.json); view with `tensorboard --logdir {run_dir.parent.parent}`")
    return metrics


def calibrate(ckpt: Path, dm: GalaxyZooDataModule, device: torch.device, precision: str, tta8: bool) -> dict[str, float]:
    """Calibrate the answers' intervals on the validation split and store them in ``ckpt`` (gzoo.uncertainty.calibration):
    the dropout spread at tta=1 and, with ``tta8``, every spread at tta=8, whose pass also gives the validation RMSE
    averaged over the 8 right-angle views (returned as val/rmse_tta8). A failed write is said; the checkpoint stays as it was."""
    net = load_net(ckpt, str(device))
    precision = precision if precision in PRECISIONS else "32-true"
    true, out = dm.labels("val"), {}
    sampled = ["dropout", "both"] if net.dropout_p > 0 else []
    fits: list[tuple[str, int, int, np.ndarray, np.ndarray]] = []
    for tta, methods in [(1, sampled[:1]), *([(8, [*sampled[:1], "views", *sampled[1:]])] if tta8 else [])]:
        if not methods and tta == 1:
            continue
        batches = list(predict_loader(net, dm.loader("val", views=(0.0,)), tta=tta, precision=precision, uncertainty=methods))
        pred = np.concatenate([b["pred"] for b in batches])
        if tta == 8:
            out["val/rmse_tta8"] = rmse(pred, true)
        fits += [(m, tta, SAMPLES, pred, np.concatenate([b["std"][m] for b in batches])) for m in methods]
    if not fits:
        return out
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    checkpoint["gzoo_calibration"] = calibration(true, fits, net.labels)
    try:
        atomic_torch_save(checkpoint, ckpt)
    except OSError as e:
        warn(f"{write_failure(e, ckpt, 'the calibration of the intervals')}; gzoo.predict uncertainty= will write spreads without intervals")
        return out
    said = ", ".join(f"{m} at tta={t}" for m, t, *_ in fits)
    say(
        f"each answer's intervals calibrated on the {len(true)} validation galaxies ({said}) and stored in {ckpt.name}: python -m gzoo.predict uncertainty=... writes them"
    )
    return out


def help_text(argv: list[str]) -> str:
    """``python -m gzoo.train --help``: the groups (the chosen option marked), then every option of the run with its
    value as composed for the groups chosen in ``argv`` (e.g. model=b3 --help) and its comment, from the schema
    (gzoo/options.py), one section per group."""
    from hydra import compose, initialize_config_dir

    overrides = [a for a in null_groups(argv) if not a.startswith("-")]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    chosen = cfg.hydra.runtime.choices
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
    lines = [
        "python -m gzoo.train [group=option ...] [key=value ...]: train one phase (finetune, then fulltune).",
        "  -m: a sweep (e.g. -m model=b0,b1); --cfg job: print the composed config; --hydra-help: Hydra's own options.",
        "",
        "Groups (group=option; the chosen one marked *):",
    ]
    for g in groups:
        options = sorted(p.stem for p in (CONF / g).glob("*.yaml") if not p.stem.startswith("_"))
        lines.append(f"  {g}: " + ", ".join(f"{o}*" if o == chosen.get(g) else o for o in options))
    section = None
    for key, f, _ in option_fields(RunOptions):
        head = key.split(".")[0] if "." in key else "run"
        if head != section:
            section = head
            lines += ["", f"# --- {head}" + ("" if head == "run" else ".*")]
        try:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        except Exception:  # an interpolation only Hydra's runtime resolves (hydra:job.num)
            value = None
        lines.append(f"  {key}={shown_value(value)}    # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def null_groups(argv: list[str]) -> list[str]:
    """``group=null`` (e.g. logger=null, callbacks=null) as Hydra spells it on the command line, ``~group``:
    none of that group. Hydra itself refuses ``group=null`` for a group of the defaults list."""
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    return [f"~{a.split('=', 1)[0]}" if a.endswith("=null") and a.split("=", 1)[0] in groups else a for a in argv]


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
        cause = str(e.__cause__ or "").strip().splitlines()  # a type the schema refuses: why, under Hydra's "Error merging override"
        if cause and cause[0] not in text:
            lines.insert(1, cause[0])
        said = " ".join(lines[:2])
        if len(lines) > 2 and lines[1].endswith(":"):  # "Available options in 'model':" then one per line
            said += " " + ", ".join(lines[2:])
        error(said.rstrip(".") + "; python -m gzoo.train --help lists the groups and keys.")
        sys.exit(2)
    try:  # Hydra writes its records under paths.output_root before train() runs: a bad value or a read-only folder is said here
        check_run_options(cfg)
        check_writable(cfg.run_dir)
        if not any(a.startswith("hydra.run.dir=") for a in argv):
            check_writable(Path(cfg.paths.output_root) / "hydra")
    except GzooError as e:
        error(str(e))
        sys.exit(2)


#: The file in a sweep's folder where each job that a gzoo check stopped adds a line (see SweepSummary).
FAILED_JOBS = "failed_jobs.jsonl"


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failed_job(said: str) -> None:
    """A sweep's job that a check stopped: its line in the sweep folder's failed_jobs.jsonl (one write, appended)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    line = json.dumps({"job": hc.job.num, "overrides": " ".join(hc.overrides.task), "error": said}) + "\n"
    Path(hc.sweep.dir).mkdir(parents=True, exist_ok=True)
    with open(Path(hc.sweep.dir) / FAILED_JOBS, "a") as f:
        f.write(line)


class SweepSummary(Callback):
    """A Hydra callback (conf/hydra/default.yaml): at the end of a sweep, the jobs that a gzoo check stopped, and why."""

    failed: list[dict] = []

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        path = Path(config.hydra.sweep.dir) / FAILED_JOBS
        failed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        SweepSummary.failed = failed
        if failed:
            propagate, logger.propagate = logger.propagate, False  # Hydra's console handler on the root logger would print each line again
            try:
                error(f"{len(failed)} job{'s' if len(failed) > 1 else ''} of the sweep stopped (listed in {path}):")
                for job in failed:
                    error(f"  job {job['job']} ({job['overrides']}): {job['error']}")
            finally:
                logger.propagate = propagate


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    result: list[float] = []
    status, said = front_door(lambda: result.append(train(cfg)["val/rmse"]), sigterm=False)  # run_guard.py handles signals
    if status == 2 and _in_sweep():  # a sweep goes on with its other jobs, and SweepSummary lists this one at the end
        _record_failed_job(said or "")
        return float("nan")
    if status:
        sys.exit(status)  # 2 for the user's problem; 130/143 for a signal, which stops a sweep too
    return result[0]


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(help_text(sys.argv[1:]))
        sys.exit(0)
    sys.argv[1:] = null_groups(sys.argv[1:])
    try:
        check_overrides(sys.argv[1:])
        main()
    except KeyboardInterrupt:  # Ctrl-C before train() set its handlers (imports, composing the config)
        logger.error("stopped by SIGINT before training started; nothing was written; run the same command again.")
        sys.exit(130)
    made = sys.modules.get("gzoo.train")  # Hydra made the sweep's callback from gzoo.train, not from this __main__ module
    if made is not None and made.SweepSummary.failed:
        sys.exit(2)
