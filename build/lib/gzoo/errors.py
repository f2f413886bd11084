"""The one exception type for a user's mistake: its message is shown alone, without a traceback."""


class GzooError(Exception):
    """A problem the user can fix (a missing file, a bad value, an option out of range)."""


class NonFiniteLossError(GzooError):
    """The training loss became NaN or infinite; the run stops before saving the bad weights."""


class RunInterrupted(GzooError):
    """A signal (e.g. SLURM's SIGTERM before pre-emption) stopped the run; its last checkpoint is intact."""
