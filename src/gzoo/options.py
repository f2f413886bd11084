"""Every option of a training run: its type, default, range and one-line comment, in one place.

One dataclass per config group (data, model, phase, optim, speed, trainer, paths) and one for the run
itself (:class:`RunOptions`), registered with Hydra's ConfigStore as the schema of ``conf/train.yaml``
(its defaults list starts with ``gzoo_run``). Composition therefore checks every type and refuses an
unknown key; :func:`check_run_options` then walks the same dataclasses for ranges and choices
(gzoo.config.check_values), so a value out of range is one sentence naming the option, before anything
is read or written. The YAML files only set what a variant or recipe changes, with the reason why.

The library's classes take these values from here: ``GalaxyZooDataModule.from_config``,
``GalaxyZooModule`` (through train.build_module) and the optimiser (optim.py reads
:class:`OptimOptions` for what it is not given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import II, DictConfig, OmegaConf

from gzoo.config import check_values, option
from gzoo.errors import GzooError
from gzoo.fits import FitsOptions

# ----------------------------------------------------------------------------- data


def when_cached(cached: Any, otherwise: Any, *, _root_: Any = None) -> Any:
    """The resolver ``${gzoo_cached:A,B}``: A for a feature-cached finetune (phase.cache_features with the body frozen),
    else B. Such a finetune's epochs cost a fraction of a second, so its defaults train the tail at a higher rate
    for more epochs (the rate, the epoch cap, early stopping's patience; measured in the README); a value given
    on the command line or in a recipe (experiment=paper_b0 pins the paper's) replaces the default as any other."""
    phase = _root_.get("phase") if isinstance(_root_, DictConfig) else None
    return cached if isinstance(phase, DictConfig) and phase.get("cache_features") and phase.get("freeze_body") else otherwise


OmegaConf.register_new_resolver("gzoo_cached", when_cached, replace=True)


def _batches(v: Any) -> bool:
    """A Trainer's limit of batches: a positive number of them, or a fraction in (0, 1]."""
    whole = isinstance(v, int) and not isinstance(v, bool) and v >= 1
    return whole or (isinstance(v, float) and 0 < v <= 1)


@dataclass
class AugmentOptions:
    """The paper's augmentation (training only), drawn once per image per epoch."""

    rotate: float = option(180.0, "degrees either way: any angle, a galaxy has no preferred orientation", low=0, high=180)
    shift: float = option(0.1, "about +-10 % of the frame", low=0, high=1)
    zoom: list[float] = option([0.8, 1.2], "scale factor range [low, high]", above=0)
    hflip: float = option(0.5, "probability of a horizontal flip", low=0, high=1)
    vflip: float = option(0.5, "probability of a vertical flip", low=0, high=1)
    brightness: list[float] = option([0.9, 1.2], "multiplicative brightness range (applied on the device, with the normalisation)", above=0)
    extra: list[Any] = option([], "albumentations transforms applied after the warp, e.g. data.augment.extra='[{_target_: albumentations.GaussNoise, p: 0.5}]'")


@dataclass
class SynthOptions:
    """data=synthetic: how the synthetic set is made (gzoo.synth)."""

    n_train: int = option(3000, "labelled galaxies (training + validation)", low=1)
    n_test: int = option(300, "unlabelled test images, truth in test_solutions_rev1.csv", low=0)
    seed: int = option(0, "the data set is byte-for-byte reproducible from this", low=0)
    workers: int = option(2, "processes rendering images", low=1)


@dataclass
class DataOptions:
    """Which galaxies, how they are split, batched and augmented (GalaxyZooDataModule)."""

    root: str = option(II("paths.data_root"), "the Kaggle folder (labels CSV + images_training_rev1/)")
    labels_csv: str = option("training_solutions_rev1.csv", "the labels file in root")
    images_dir: str = option("images_training_rev1", "the image folder in root")
    missing_labels: str = option("error", "error: an empty cell stops the run; mask: empty cells are left out of loss and metrics", choices=("error", "mask"))
    val_fraction: float = option(
        0.15,
        "85/15 train/validation as in the paper",
        above=0,
        below=1,
        must="a number between 0 and 1 (e.g. 0.15): the best checkpoint, early stopping and the plateau schedule follow val/rmse, "
        "so a run needs validation galaxies",
    )
    test_fraction: float = option(0.0, "an optional held-out part, scored once at the end with the best checkpoint", low=0, below=1)
    split_seed: int = option(1234, "the split depends only on this and the fractions")
    limit: int | None = option(None, "use only the first N galaxies (quick trials)", low=1)
    train_limit: int | None = option(
        None, "train on only N of the split's training galaxies (drawn by split_seed, nested); validation stays the same: a learning curve", low=1
    )
    batch_size: int = option(70, "galaxies per batch, as in the paper", low=1)
    num_workers: int = option(2, "DataLoader worker processes", low=0)
    persistent_workers: bool = option(True, "keep worker processes between epochs (faster start of each epoch)")
    on_bad_image: str = option(
        "error", "error: an unreadable image stops the run, naming it; skip: leave it out and list it in the run folder", choices=("error", "skip")
    )
    image_size: int = option(II("model.image_size"), "one home: the model variant", low=1)
    crop_fraction: float = option(0.5, "keep the central 2x2 of a 4x4 grid (212 of 424 px)", above=0, high=1)
    augment: AugmentOptions = field(default_factory=AugmentOptions)
    augment_on: str = option(
        "cpu",
        "cpu: loader workers decode and warp; device: workers only decode (and draw the same warp), the warp runs batched on the model's device",
        choices=("cpu", "device"),
    )
    crop_cache: str | None = option(
        None, "null: decode every image every epoch; auto: decode once into $GZOO_CACHE/crops (else ~/.cache/gzoo/crops) and read that; or a folder"
    )
    layout: str = option("kaggle", "kaggle: root/labels_csv + root/images_dir; catalog: data.catalog (data=catalog sets it)", choices=("kaggle", "catalog"))
    catalog: str | None = option(None, "your own catalogue (.csv or .parquet); then root, labels_csv and images_dir are not read")
    id_column: str = option("id_str", "the catalogue's id column (galaxy-datasets' name); ids of digits only become integers")
    file_column: str = option("file_loc", "its image file column; relative paths are read from the catalogue's folder")
    labels: Any = option("gz2", "gz2: the 37 Kaggle answers; or your columns, e.g. [is_bar,is_merger], values in [0, 1], blank = unknown")
    fits: FitsOptions = field(default_factory=FitsOptions)  # how FITS cutouts become images (gzoo.fits); recorded in the checkpoint
    synth: SynthOptions | None = option(None, "data=synthetic: how the set is made (null: read data.root as it is)")


# ----------------------------------------------------------------------------- the network, the phase, the optimiser


@dataclass
class ModelOptions:
    """The network: what every variant shares; model=bN sets name, timm_name and image_size."""

    name: str = option("b0", "the variant's name, in the run folder: outputs/<name>/<model>/<phase>")
    timm_name: str = option("tf_efficientnet_b0.in1k", "timm's name of the body (original ImageNet-1k weights, the paper's)")
    image_size: int = option(224, "the network's input: the central crop resized to this many pixels", low=1)
    pretrained: bool = option(True, "ImageNet weights (from the Hugging Face hub, or the installed Lite packages), as in the paper")
    weights: str | None = option(None, "or a local timm state dict (.pth/.safetensors); classifier keys are ignored")
    dropout: float = option(0.5, "before the dense-64 layer", low=0, below=1)
    hidden: int = option(64, "width of the tail's hidden layer", low=1)
    head: str = option(
        "sigmoid", "sigmoid: the paper's 37 independent sigmoids; tree: outputs obey the decision tree by construction", choices=("sigmoid", "tree")
    )
    tree_after_epochs: int = option(0, "tree head only: use sigmoid for this many epochs first (the 2014 winner did, to converge)", low=0)
    start_at_mean: bool = option(True, "the last layer's bias starts at logit(training mean), so epoch 0 starts from predicting the mean (not 0.5)")


@dataclass
class PhaseOptions:
    """finetune (the body frozen) or fulltune (everything trains, from the finetune's weights)."""

    name: str = option("finetune", "the phase's name, in the run folder")
    freeze_body: bool = option(True, "no gradients for the body and BatchNorm in eval mode; only the tail trains")
    init_from: str | None = option(None, "the checkpoint whose weights this phase starts from (fulltune: the finetune's best)")
    cache_features: bool = option(False, "compute the frozen body's features once (cache_views exact views per training galaxy), then train the tail on them")
    cache_views: int = option(
        8,
        "right-angle rotations/flips cached per training galaxy (all 8: the best tail); on 2 CPU cores each costs about 0.75 of an uncached epoch",
        low=1,
        high=8,
    )
    freeze_bn_stats: bool = option(True, "BatchNorm keeps the trained body's running statistics (its scale and shift still train)")


@dataclass
class OptimOptions:
    """The optimiser and its schedule (optim.py); the defaults are the paper's recipe (optim=paper)."""

    name: str = option("paper", "the recipe's name")
    optimizer: str = option("adam", "adam | adamw (decoupled weight decay)", choices=("adam", "adamw"))
    lr: float = option("${gzoo_cached:1e-3,1.5e-4}", "1.5e-4: the paper's fine-tuning rate; 1e-3 for a feature-cached finetune (phase.cache_features)", above=0)
    weight_decay: float = option(0.0, "never on biases or normalisation weights", low=0)
    schedule: str = option(
        "plateau",
        "plateau: x lr_factor after lr_patience epochs without a better val/rmse; cosine: warmup then cosine per step; constant",
        choices=("plateau", "cosine", "constant"),
    )
    lr_factor: float = option(0.8, "plateau only: the lr is multiplied by this", above=0, high=1)
    lr_patience: int = option(4, "plateau only: epochs without a better val/rmse before the lr drops", low=0)
    warmup_epochs: float = option(0.0, "cosine only: linear warmup over this many epochs (may be a fraction)", low=0)
    min_lr_fraction: float = option(0.0, "cosine only: the lr at the end, as a fraction of lr", low=0, high=1)
    layer_decay: float = option(1.0, "< 1: body block k trains at lr x layer_decay^(blocks above it) (fulltune); 1: one lr everywhere", above=0, high=1)
    loss: str = option(
        "mse",
        "mse: squared error over the known cells (the paper's, and the metric's); soft_ce: each question's answers as a distribution, weighted by the parent's fraction (needs model.head=tree)",
        choices=("mse", "soft_ce"),
    )
    ema: float = option(0.0, "> 0: validate and save an exponential moving average of the weights with this decay per step, e.g. 0.99; 0: off", low=0, below=1)


@dataclass
class SpeedOptions:
    """Knobs that act on the model (speed=gpu sets the fast ones)."""

    channels_last: bool = option(False, "NHWC memory layout of the network's weights (faster convolutions on recent GPUs)")
    compile: bool = option(False, "torch.compile the body: faster epochs after a minute or two of compiling")


@dataclass
class TrainerOptions:
    """lightning.Trainer's arguments that gzoo sets (Lightning's documentation says what each does)."""

    accelerator: str = option("auto", "auto, cpu, gpu (trainer=gpu), mps")
    devices: Any = option(1, "devices (processes) per node, or a list of GPU ids")
    num_nodes: int = option(1, "machines (trainer=ddp)", low=1)
    strategy: str = option("auto", "auto, or ddp (trainer=ddp)")
    max_epochs: int = option(
        "${gzoo_cached:300,50}",
        "at most 50 epochs per phase, as in the paper; 300 for a feature-cached finetune (its epochs take a fraction of a second)",
        valid=lambda v: v >= 1 or v == -1,
        must="a positive integer (or -1: until early stopping)",
    )
    precision: str = option("32-true", "32-true (CPU, exact); 16-mixed or bf16-mixed on GPUs (trainer=gpu)")
    accumulate_grad_batches: int = option(1, "step the optimiser every N batches: an N-times larger batch in the same memory", low=1)
    gradient_clip_val: float | None = option(None, "e.g. 1.0 clips the gradient norm; null = no clipping, as in the paper", low=0)
    log_every_n_steps: int = option(10, "how often the training loss is logged", low=1)
    deterministic: bool = option(False, "deterministic algorithms only (exact repeats; slower on GPUs)")
    enable_model_summary: bool = option(True, "print the network's layers at the start")
    limit_train_batches: Any = option(
        None,
        "null = all; a number of batches or a fraction, for quick trials",
        valid=lambda v: _batches(v),
        must="null, a positive integer or a fraction in (0, 1]",
    )
    limit_val_batches: Any = option(
        None,
        "null = all; a number of batches or a fraction",
        valid=lambda v: _batches(v),
        must="null, a positive integer or a fraction in (0, 1] (the best checkpoint and early stopping follow val/rmse)",
    )
    check_val_every_n_epoch: int = option(1, "validate every N epochs", low=1)


@dataclass
class PathsOptions:
    """Where data is read and outputs are written (environment variables or paths.*=...)."""

    data_root: str = option("${oc.env:GZOO_DATA,data/gz2}", "the Kaggle folder (labels CSV + images_training_rev1/)")
    output_root: str = option("${oc.env:GZOO_OUTPUT,outputs}", "every run writes under here")
    synth_root: str = option("${oc.env:GZOO_SYNTH,data/synthetic}", "where data=synthetic generates its sets")


@dataclass
class RunOptions:
    """A training run: the groups, and the keys of the run itself."""

    name: str = option("default", "groups runs: outputs/<name>/<model>/<phase>/")
    seed: int = option(42, "seeds weights, augmentation and shuffling (the split has data.split_seed)")
    overwrite: bool = option(False, "true: replace an earlier run in the same run_dir (its checkpoints and logs are deleted)")
    resume: Any = option(False, "true: continue this run_dir's run from checkpoints/last.ckpt; or a checkpoint path")
    run_dir: str = option("${paths.output_root}/${name}/${model.name}/${phase.name}", "the run's folder")
    tta8_at_end: bool = option(True, "after training, score the best checkpoint on the validation part over 8 right-angle views (val/rmse_tta8)")
    logger: Any = option(None, "loggers by name, each a _target_ (conf/logger/); null: none")
    callbacks: Any = option(None, "Lightning callbacks by name, each a _target_ (conf/callbacks/); null: none")
    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    phase: PhaseOptions = field(default_factory=PhaseOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    paths: PathsOptions = field(default_factory=PathsOptions)


#: The schema's name in Hydra's ConfigStore: conf/train.yaml's defaults list starts with it.
SCHEMA = "gzoo_run"
ConfigStore.instance().store(name=SCHEMA, node=RunOptions)


def check_run_options(cfg: DictConfig) -> None:
    """Every option has a value in its range (one sentence naming it otherwise), the fractions leave training
    galaxies, and the accelerator asked for is on this machine: before anything is read or written."""
    check_values(cfg, RunOptions)
    data = cfg.data
    if "fits" in data:
        try:
            FitsOptions(**OmegaConf.to_container(data.fits, resolve=True))  # type: ignore[arg-type]  # the checks across options
        except GzooError as e:
            raise GzooError(str(e).replace("fits.", "data.fits.")) from None
    if data.val_fraction + data.test_fraction >= 1:
        raise GzooError(
            f"data.val_fraction ({data.val_fraction}) and data.test_fraction ({data.test_fraction}) must sum to less than 1, to leave galaxies to train on."
        )
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.devices)


def check_accelerator(accelerator: Any, devices: Any) -> None:
    """A GPU asked for (trainer=gpu, trainer.accelerator=gpu/cuda) is there, and as many of them as trainer.devices says."""
    name = str(accelerator).lower()
    if name in ("gpu", "cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise GzooError(
                f"trainer.accelerator={accelerator} (trainer=gpu or trainer=ddp) but this machine has no usable CUDA GPU; "
                "run with trainer=default (the CPU here, a GPU where there is one) or on a machine with a GPU."
            )
        if isinstance(devices, int) and not isinstance(devices, bool) and devices > have:
            raise GzooError(f"trainer.devices={devices} but this machine has {have} CUDA GPU{'s' if have > 1 else ''}; set trainer.devices={have} or fewer.")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise GzooError(f"trainer.accelerator={accelerator} but Apple's MPS is not available here; run with trainer=default.")
