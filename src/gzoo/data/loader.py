"""The one DataLoader builder, and how its worker processes start.

Every part that reads galaxies (training, validation, test, prediction, evaluation, the feature and
crop caches, the benchmark) batches its dataset through :func:`make_loader`.
"""

from __future__ import annotations

import os
import signal
import threading

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def ignore_signals(worker_id: int) -> None:
    """A DataLoader worker's start: SIGINT is ignored, and so is a SIGTERM from any process but the main one,
    so a signal sent to the whole job (Ctrl-C, SLURM, Kubernetes, ``timeout``) reaches only the main process,
    which stops the run at a batch boundary (gzoo.run_guard). The main process's own SIGTERM (how Python's
    multiprocessing ends daemonic workers at exit) still ends the worker, as torch's worker handler does:
    SIGTERM is blocked and a thread reads the sender of each one. Lightning's worker seeding follows, as it
    would without a worker_init_fn of ours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # not on macOS or Windows: SIGTERM is left as torch sets it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
        threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), name="gzoo-sigterm", daemon=True).start()
    if os.environ.get("PL_SEED_WORKERS") == "1":  # seed_everything(workers=True) asked for it
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def _end_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


def make_loader(
    dataset: Dataset,
    batch_size: int | None,
    num_workers: int = 0,
    sampler: Sampler | None = None,
    persistent_workers: bool = True,
    pin_memory: bool | None = None,
) -> DataLoader:
    """The one way gzoo builds a DataLoader: in order (or by ``sampler``), every item once, no batch dropped.

    Pinned memory when a GPU is visible (faster copies to it); worker processes kept between
    epochs unless ``persistent_workers=False``.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        drop_last=False,
        worker_init_fn=ignore_signals,
    )
