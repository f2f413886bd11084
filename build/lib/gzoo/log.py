"""gzoo's messages: Python logging under the name "gzoo", shown as ``[gzoo] ...`` by rank zero only.

Every module says what it does with :func:`say` (progress and results, on stdout) and the tools
report a user's mistake with :func:`error` (on stderr). The messages go through the "gzoo"
logger, so Hydra's log file of a training run (conf/hydra/default.yaml) records them too; under
DDP only the process of rank zero prints.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("gzoo")


def _rank() -> int:
    """This process's rank: Lightning's own record once it runs (it sets it in spawned DDP processes),
    else the launchers' environment variables, as Lightning reads them (no import of Lightning: tools start fast)."""
    lightning_rank = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if lightning_rank is not None:
        return getattr(lightning_rank.rank_zero_only, "rank", 0)
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


class _Stream(logging.StreamHandler):
    """A handler writing to whatever sys.stdout or sys.stderr is at the time (test capture, notebooks)."""

    def __init__(self, name: str, levels: tuple[int, int]):
        super().__init__()
        self.name_, self.levels = name, levels
        self.setFormatter(logging.Formatter("[gzoo] %(message)s"))

    @property
    def stream(self):
        return getattr(sys, self.name_)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property decides
        pass

    def filter(self, record: logging.LogRecord) -> bool:
        return self.levels[0] <= record.levelno < self.levels[1] and _rank() == 0


if not logger.handlers:  # once per process: stdout below WARNING, stderr from it on
    logger.addHandler(_Stream("stdout", (logging.DEBUG, logging.WARNING)))
    logger.addHandler(_Stream("stderr", (logging.WARNING, logging.CRITICAL + 1)))
    logger.setLevel(logging.INFO)


def say(msg: str) -> None:
    """Progress or a result, for the user to read."""
    logger.info(msg)


def warn(msg: str) -> None:
    """Something the user should know changes the result (a file left out, an untrained body)."""
    logger.warning(f"warning: {msg}")


def error(msg: str) -> None:
    """A user's mistake, in one sentence; the tool then exits with status 2."""
    logger.error(f"error: {msg}")
