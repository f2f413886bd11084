"""Safe output files: a file appears under its name only once it is complete; tables as CSV or Parquet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

from gzoo.errors import GzooError

if TYPE_CHECKING:
    import pandas as pd

#: The table formats gzoo writes, chosen by the file's extension.
TABLE_SUFFIXES = (".csv", ".parquet")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it to ``path`` only if the block completes.

    An error or a kill inside the block leaves any earlier ``path`` untouched and no partial
    file under the name. The temporary file of a process killed outright (SIGKILL, a crash) cannot
    be removed by that process; the next atomic write of the same ``path`` removes it.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files ``.<name>.<pid>.tmp`` that :func:`atomic_open` left beside ``path`` in
    processes that no longer run (killed outright); returns them. A running process's file is kept."""
    path = Path(path)
    stale = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp") if path.parent.is_dir() else ():
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale


def table_suffix(path: str | Path, key: str = "out") -> str:
    """The table format of ``path`` from its extension (.csv or .parquet), or a GzooError naming the option."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise GzooError(f"{key}={path}: the extension chooses the format and must be {' or '.join(TABLE_SUFFIXES)}.")
    return suffix


def write_table(df: pd.DataFrame, path: str | Path, key: str = "out", float_format: str | None = None) -> Path:
    """Write ``df`` (without its index) as CSV or Parquet, chosen by the extension, atomically (see atomic_open).

    ``float_format`` (e.g. "%.6f") applies to CSV; Parquet keeps every bit.
    """
    path = Path(path)
    if table_suffix(path, key) == ".parquet":
        with atomic_open(path, "wb") as f:
            df.to_parquet(f, index=False)
    else:
        with atomic_open(path, newline="") as f:
            df.to_csv(f, index=False, float_format=float_format)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
