"""What keeps a training run from losing work or mixing with another: every option checked before anything
is read or written, the run folder locked while the run writes to it, checkpoints written beside their target
and renamed into place, a signal (SIGTERM from SLURM, Kubernetes, systemd or ``timeout``; SIGINT from Ctrl-C)
turned into a stop at a batch boundary with one sentence saying what to do next, and the checkpoint's record
of the split it was trained on.

    check_run_options(cfg)   types and ranges of the run's options, and that the accelerator asked for exists
    check_writable(folder)   a folder that outputs go to can be written (before Hydra writes its own records there)
    RunGuard(run_dir)        the lock and the signal handlers while a run works; its StopOnSignal callback
    AtomicCheckpointIO       Lightning's checkpoint writer, atomic, with a full disk in one sentence
    RecordSplit              writes what identifies the run's split into every checkpoint (evaluate checks it)
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import signal
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from gzoo.errors import GzooError, RunInterrupted
from gzoo.io import atomic_torch_save, lock_folder, write_failure

# ----------------------------------------------------------------------------- the options of a run

_MISSING = object()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


#: key -> (the check, what a good value is). A key absent from the composed config is not checked.
RUN_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_int, "an integer"),
    "overwrite": (lambda v: isinstance(v, bool), "true or false"),
    "data.batch_size": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "data.num_workers": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "data.persistent_workers": (lambda v: isinstance(v, bool), "true or false"),
    "data.val_fraction": (
        lambda v: _number(v) and 0 < v < 1,
        "a number between 0 and 1 (e.g. 0.15): the best checkpoint, early stopping and the plateau schedule follow val/rmse, "
        "so a run needs validation galaxies",
    ),
    "data.test_fraction": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data.split_seed": (_int, "an integer"),
    "data.limit": (lambda v: v is None or (_int(v) and v >= 1), "a positive number of galaxies or null"),
    "data.crop_fraction": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "data.missing_labels": (lambda v: v in ("error", "mask"), "error or mask"),
    "data.on_bad_image": (lambda v: v in ("error", "skip"), "error or skip"),
    "model.image_size": (lambda v: _int(v) and v >= 1, "a positive integer (pixels)"),
    "model.pretrained": (lambda v: isinstance(v, bool), "true or false"),
    "model.weights": (lambda v: v is None or (isinstance(v, str) and v != ""), "a path to a timm state dict, or null"),
    "model.dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "model.hidden": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "model.head": (lambda v: v in ("sigmoid", "tree"), "sigmoid or tree"),
    "model.tree_after_epochs": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "trainer.max_epochs": (lambda v: _int(v) and (v >= 1 or v == -1), "a positive integer (or -1: until early stopping)"),
    "trainer.accumulate_grad_batches": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "trainer.log_every_n_steps": (lambda v: _int(v) and v >= 1, "a positive integer"),
    "trainer.limit_train_batches": (
        lambda v: v is None or (_int(v) and v >= 1) or (_number(v) and 0 < v <= 1),
        "null, a positive integer or a fraction in (0, 1]",
    ),
    "trainer.limit_val_batches": (
        lambda v: v is None or (_int(v) and v >= 1) or (_number(v) and 0 < v <= 1),
        "null, a positive integer or a fraction in (0, 1] (the best checkpoint and early stopping follow val/rmse)",
    ),
}


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def check_run_options(cfg: DictConfig) -> None:
    """Every option of :data:`RUN_OPTIONS` has a good value, the fractions leave training galaxies, and the
    accelerator asked for is on this machine: a GzooError naming the option otherwise, before anything runs."""
    for key, (good, what) in RUN_OPTIONS.items():
        try:
            value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=True)
        except Exception as e:  # an interpolation that cannot be resolved, a ??? value
            raise GzooError(f"{key} has no usable value ({str(e).splitlines()[0]}); set it, e.g. {key}=...") from None
        if value is not _MISSING and not good(value):
            raise GzooError(f"{key}={_shown(value)} must be {what}.")
    data = cfg.data
    if data.val_fraction + data.test_fraction >= 1:
        raise GzooError(
            f"data.val_fraction ({data.val_fraction}) and data.test_fraction ({data.test_fraction}) must sum to less than 1, to leave galaxies to train on."
        )
    check_accelerator(OmegaConf.select(cfg, "trainer.accelerator", default="auto"), OmegaConf.select(cfg, "trainer.devices", default=1))


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
        if _int(devices) and devices > have:
            raise GzooError(f"trainer.devices={devices} but this machine has {have} CUDA GPU{'s' if have > 1 else ''}; set trainer.devices={have} or fewer.")
    elif name == "mps" and not torch.backends.mps.is_available():
        raise GzooError(f"trainer.accelerator={accelerator} but Apple's MPS is not available here; run with trainer=default.")


# ----------------------------------------------------------------------------- disks


def check_writable(folder: Path | str, option: str = "paths.output_root") -> None:
    """``folder`` (or the nearest folder above it that exists, where it would be made) can be written,
    tried by making and removing an empty folder in it (permission bits say little to root)."""
    folder = Path(folder).absolute()
    parent = next(p for p in (folder, *folder.parents) if p.exists())
    probe = parent / f".gzoo-write-test-{os.getpid()}"
    try:
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(parent))
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise GzooError(f"{write_failure(e, probe)}; set {option} to a folder you can write to.") from None


# ----------------------------------------------------------------------------- checkpoints


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing a temporary file beside the target and renaming it into place.

    A failed save (a full disk, a kill) leaves the checkpoint already under that name intact and no partial
    file under it; a full or read-only disk ends in one sentence naming the folder, not a traceback.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(checkpoint, path)
        except OSError as e:
            last = path.parent / "last.ckpt"
            then = "continue with the same command plus resume=true" if last.is_file() else "run again with overwrite=true"
            raise GzooError(
                f"{write_failure(e, path, 'checkpoint')}; the checkpoints already in {path.parent} are intact; "
                f"free space there or set paths.output_root to another disk, then {then}."
            ) from None


# ----------------------------------------------------------------------------- the split a checkpoint was trained on

SPLIT_KEYS = ("labels_csv", "split_seed", "val_fraction", "test_fraction", "limit")


def _catalog(data: DictConfig | dict) -> str | None:
    catalog = data.get("catalog")
    return str(Path(catalog).expanduser().resolve()) if catalog else None


def split_record(data: DictConfig | dict) -> dict[str, Any]:
    """What identifies the split of a run's ``data`` node: the data root and labels file (and the file's
    SHA-256, so data moved to another folder is still recognised), your own catalogue and label columns,
    the split seed, the fractions and the limit."""
    from gzoo.schema import label_columns

    labels = Path(data["catalog"]) if data.get("catalog") else Path(data["root"]) / data["labels_csv"]  # your catalogue, or Kaggle's CSV
    digest = hashlib.sha256()
    with open(labels, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "root": str(Path(data["root"]).resolve()),
        "labels_sha256": digest.hexdigest(),
        "catalog": _catalog(data),
        "labels": list(label_columns(data.get("labels", "gz2"))),
        **{k: data[k] for k in SPLIT_KEYS},
    }


def split_mismatch(record: dict[str, Any], data: DictConfig | dict) -> str | None:
    """How ``data`` differs from a checkpoint's split record (``data.key=value`` for the first difference), or None.
    A record from before a key was recorded is not compared on that key."""
    from gzoo.schema import is_gz2, label_columns

    for key in SPLIT_KEYS:
        if record.get(key) != data[key]:
            return f"data.{key}={_shown(record.get(key))}, not {_shown(data[key])}"
    if "labels" in record:
        ours = list(label_columns(data.get("labels", "gz2")))
        if record["labels"] != ours:
            shown = lambda v: "gz2" if is_gz2(v) else "[" + ",".join(v) + "]"
            return f"data.labels={shown(record['labels'])}, not {shown(ours)}"
    same_labels = split_record(data)["labels_sha256"] == record.get("labels_sha256")
    if "catalog" in record and record["catalog"] != _catalog(data) and not same_labels:
        return f"data.catalog={record['catalog']} (SHA-256 {record.get('labels_sha256', '?')[:12]}...), not {_catalog(data)}"
    same_root = Path(data["root"]).resolve() == Path(record["root"])
    if not data.get("catalog") and not same_root and not same_labels:
        return f"data.root={record['root']} (labels file SHA-256 {record.get('labels_sha256', '?')[:12]}...), not {data['root']}"
    return None


class RecordSplit(L.Callback):
    """Writes :func:`split_record` of the run's data into every checkpoint, under "gzoo_split"."""

    def __init__(self, data: DictConfig | dict):
        self.record = split_record(data)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["gzoo_split"] = dict(self.record)


# ----------------------------------------------------------------------------- the lock and the signals of a run

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(BaseException):
    """Raised by the signal handler outside training (data scan, test): not an Exception, so no ``except Exception`` eats it."""


class RunGuard:
    """While a run works in ``run_dir``: its lock (when ``lock``, i.e. in the process that writes files), and
    SIGINT/SIGTERM handlers that stop it cleanly.

    During ``fit`` (from StopOnSignal's on_fit_start to :meth:`fit_done`) a signal only sets a flag, and the run
    stops at the next batch boundary, whichever process got the signal first (DataLoader workers ignore both, see
    gzoo.data.dataset.make_loader); elsewhere it stops at once. Either way the run ends in a RunInterrupted saying
    what to do next, with exit status 128 + the signal's number (130 SIGINT, 143 SIGTERM).
    """

    def __init__(self, run_dir: Path, lock: bool = True):
        self.run_dir, self.lock = Path(run_dir), lock
        self.received: int | None = None
        self.deferred = False
        self._stack = ExitStack()

    def __enter__(self) -> RunGuard:
        if self.lock:
            try:
                self._stack.enter_context(lock_folder(self.run_dir, "wait for it to end, or pass name=<another name> to run beside it"))
            except OSError as e:
                raise GzooError(f"{write_failure(e, self.run_dir, 'the run folder')}; set paths.output_root to a folder you can write to.") from None
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._stack.callback(signal.signal, s, signal.signal(s, self._handle))
        return self

    def __exit__(self, kind, value, tb) -> bool:
        self._stack.close()
        if kind is _Stop:
            raise self.interrupted() from None
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        if not self.deferred:
            raise _Stop()

    def fit_done(self) -> None:
        """After fit: a signal received during its last moments stops the run now; later ones at once."""
        self.deferred = False
        if self.received is not None:
            raise self.interrupted()

    def interrupted(self, epoch: int | None = None) -> RunInterrupted:
        """The RunInterrupted of the signal received (SIGTERM if none was seen here: Lightning's own handler got it)."""
        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        last = self.run_dir / "checkpoints" / "last.ckpt"
        when = f"in epoch {epoch}" if epoch is not None else "outside training"
        if last.is_file():
            said = f"stopped by {name} {when}; {last} holds the last complete epoch; continue with the same command plus resume=true."
        elif any((self.run_dir / n).exists() for n in ("checkpoints", "tensorboard", "metrics.json", "config.yaml")):
            said = f"stopped by {name} {when}, before the first checkpoint, so there is nothing to resume from; run the same command again plus overwrite=true."
        else:
            said = f"stopped by {name} before training started; nothing was written; run the same command again."
        return RunInterrupted(said, status=128 + signum)


class StopOnSignal(L.Callback):
    """Stops the run at a batch boundary once its RunGuard has received SIGINT or SIGTERM.

    Under DDP, SIGTERM is left to Lightning, which stops every process at the same batch.
    """

    def __init__(self, guard: RunGuard):
        self.guard = guard

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.guard.deferred = True
        if self.guard.received is not None:
            raise self.guard.interrupted(trainer.current_epoch)

    def _check(self, trainer: L.Trainer) -> None:
        got = self.guard.received
        if got is not None and (got != signal.SIGTERM or trainer.world_size == 1):
            raise self.guard.interrupted(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._check(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._check(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer)  # a signal during the end of the last epoch (its checkpoints are saved by now)
