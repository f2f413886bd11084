"""The lock and the signals of a training run: the run folder locked while the run writes to it, and a signal
(SIGTERM from SLURM, Kubernetes, systemd or ``timeout``; SIGINT from Ctrl-C) turned into a stop at a batch
boundary with one sentence saying what to do next.

    RunGuard(run_dir)        the lock and the signal handlers while a run works
    StopOnSignal(guard)      the Lightning callback that stops at the next batch once a signal came
    AtomicCheckpointIO       Lightning's checkpoint writer through gzoo.io.atomic_torch_save, a full disk in one sentence
"""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gzoo.errors import GzooError, RunInterrupted
from gzoo.io import atomic_torch_save, lock_folder, write_failure

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

    def __exit__(self, kind, value, tb) -> Literal[False]:
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
