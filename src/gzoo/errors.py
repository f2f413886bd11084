"""The one exception type for a user's mistake: its message is shown alone, without a traceback."""


class GzooError(Exception):
    """A problem the user can fix (a missing file, a bad value, an option out of range)."""


class NonFiniteLossError(GzooError):
    """The training loss became NaN or infinite; the run stops before saving the bad weights."""


class RunInterrupted(GzooError):
    """A signal (e.g. SLURM's SIGTERM before pre-emption, or Ctrl-C) stopped the run; its last checkpoint is intact.

    ``status`` is the exit status of the command: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, status: int = 143):
        super().__init__(message)
        self.status = status
