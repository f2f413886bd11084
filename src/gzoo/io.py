"""Safe output files: a file appears under its name only once it is complete; tables as CSV or Parquet."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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


def write_failure(e: OSError, path: Path | str, what: str = "") -> str:
    """The first part of a sentence saying why ``path`` could not be written: full, read-only, or another reason."""
    path = Path(getattr(e, "filename", None) or path)
    folder = path if path.is_dir() else path.parent
    name = f"{what} {path}".strip()
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"could not write {name}: the disk holding {folder} is full ({e.strerror})"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"could not write {name}: {folder} is not writable ({e.strerror})"
    blocker = file_in_the_way(path) if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT) else None
    if blocker is not None:
        return f"could not write {name}: {blocker} is a file, not a folder"
    if e.errno == errno.EISDIR:
        return f"could not write {name}: it is a folder"
    return f"could not write {name} ({e.strerror or e})"


def file_in_the_way(path: str | Path) -> Path | None:
    """The file (not a folder) that stands where one of ``path``'s folders should be, or None."""
    for parent in Path(path).absolute().parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


#: errno values of an OSError that surely comes from writing: a full disk, a quota, a file too large, a read-only disk.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
#: errno values of an OSError that is the user's to fix (a disk, a permission, a path), not a fault of gzoo.
USER_ERRNOS = WRITE_ERRNOS | {
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENOENT,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EIO,
}


def os_failure(e: OSError) -> str:
    """One sentence (ending in what to do) for an OSError of :data:`USER_ERRNOS` that reached a tool's front door:
    :func:`write_failure`'s words for a write; for what may be a read or a write, the path and the reason."""
    path = getattr(e, "filename2", None) or getattr(e, "filename", None) or "a file"
    if e.errno in WRITE_ERRNOS:
        return f"{write_failure(e, path)}; free space there or write to another folder, then run the same command again."
    blocker = file_in_the_way(path) if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT) and path != "a file" else None
    reason = f"{blocker} is a file, not a folder" if blocker is not None else e.strerror or str(e)
    return f"could not read or write {path} ({reason}); fix that path or choose another, then run the same command again."


class _WriteErrors:
    """A file that remembers the first OSError of a write: torch's zip writer reports a failed write
    (``No space left on device``) only as ``RuntimeError: ... unexpected pos``."""

    def __init__(self, f: IO):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj, path: str | Path, what: str = "", advice: str | None = None) -> None:
    """``torch.save(obj)`` into ``path`` through :func:`atomic_open`. A failed write (a full disk) raises its
    own OSError, or with ``advice`` a GzooError: :func:`write_failure`'s words for ``what``, then the advice."""
    import torch

    try:
        with atomic_open(path, "wb") as f:
            writer = _WriteErrors(f)
            try:
                torch.save(obj, writer)  # type: ignore[arg-type]  # a file-like object (write, flush) is all torch.save needs
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None
    except OSError as e:
        if advice is None:
            raise
        raise GzooError(f"{write_failure(e, path, what)}; {advice}.") from None


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


#: The lock file of a folder a run writes to (see :func:`lock_folder`).
LOCK_NAME = ".gzoo.lock"
_held: set[Path] = set()  # the locks this process holds


@contextmanager
def lock_folder(folder: str | Path, advice: str = "wait for it to end") -> Iterator[Path]:
    """Hold ``folder``'s lock file (pid, host, start time, command) while the block runs; yields its path.

    A second holder is refused with a GzooError naming the first and ending in ``advice``. A lock whose
    process no longer runs (killed outright, or its pid since taken by a younger process) is taken over.
    The folders this call had to make are removed again on release if they are left empty, so a run
    that stops before writing anything leaves nothing behind. An OSError (a read-only or full disk) is
    raised as it is, for the caller to phrase.
    """
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    lock = (folder / LOCK_NAME).absolute()
    _take(lock, _lock_record(), advice)
    _held.add(lock)
    try:
        yield lock
    finally:
        _held.discard(lock)
        lock.unlink(missing_ok=True)
        _remove_empty(made)  # deepest first; stops at the first one something else was written into


def _lock_record() -> str:
    """What a lock file holds: this process's pid, host, start time and command, as JSON."""
    record: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
    record["started_at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"]))
    return json.dumps(record)


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty: the ones a call made and nothing was written into."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            break


def output_lock_path(path: str | Path) -> Path:
    """The lock file of an output file: ``out/sub.csv`` -> ``out/.sub.csv.lock`` (see :func:`output_lock`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def output_lock(path: str | Path, key: str = "out", overwrite: bool = False, also: Sequence[str | Path] = (), what: str = "") -> Iterator[Path]:
    """Hold the lock of the output ``path`` (a file or a folder) while a tool computes and writes it; yields the lock file.

    Everything that can be checked about writing ``path`` is checked here, before the work: its folder can be
    made and written to (the lock file, ``.<name>.lock`` beside ``path``, is the probe: a full or read-only
    disk or a path component that is a file is a GzooError naming ``path`` and ``key``); no other run is
    writing it (a second writer is refused, naming the first; a lock whose process no longer runs is taken
    over); and, under the lock, ``path`` and each of ``also`` (e.g. a sidecar) do not exist unless ``overwrite``.
    The folders made for the lock are removed again on release if nothing was written into them.
    """
    path = Path(path)
    lock = output_lock_path(path).absolute()
    made = [p for p in lock.parents if not p.exists()]
    name = f"{what} {path}".strip()
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        _take(lock, _lock_record(), f"wait for it to end or choose another {key}=", what=name)
    except OSError as e:
        _remove_empty(made)
        said = write_failure(OSError(e.errno, e.strerror), path, what)  # names the output, not the lock file
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise GzooError(f"{said}; {'free space there or ' if full else ''}choose another {key}=.") from None
    except BaseException:
        _remove_empty(made)
        raise
    _held.add(lock)
    try:
        for p in (path, *map(Path, also)):
            if (p.exists() or p.is_symlink()) and not overwrite:
                raise GzooError(f"{p} already exists; pass overwrite=true to replace it, or choose another {key}=.")
        yield lock
    finally:
        _held.discard(lock)
        lock.unlink(missing_ok=True)
        _remove_empty(made)


def atomic_write_together(files: Mapping[str | Path, bytes]) -> None:
    """Write files that belong together (a model and its sidecar) so that they appear together or not at all.

    Each is written to a hidden temporary file beside it (``.<name>.<pid>.tmp``, as :func:`atomic_open` names
    them) and synced; only when every one is complete are they renamed into place. A failed write (a full
    disk) leaves every earlier file as it was and no temporary file; if a rename fails, the files already
    renamed are put back as they were (kept meanwhile as hard links ``.<name>.<pid>.old``). Only a kill in
    the microseconds between two renames could leave a new file beside an old one.
    """
    items = [(Path(p), data) for p, data in files.items()]
    tmps: list[Path] = []
    backups: dict[Path, Path] = {}
    done: list[Path] = []
    try:
        for path, data in items:
            remove_stale_temporaries(path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmps.append(tmp)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for path, _ in items:
            if path.is_file():
                backup = path.with_name(f".{path.name}.{os.getpid()}.old")
                backup.unlink(missing_ok=True)
                try:
                    os.link(path, backup)
                    backups[path] = backup
                except OSError:
                    pass  # no hard links here: the renames below are then not undone
        for (path, _), tmp in zip(items, tmps):
            os.replace(tmp, path)
            done.append(path)
    except BaseException:
        for path in reversed(done):
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        for p in (*tmps, *backups.values()):
            p.unlink(missing_ok=True)


def _take(lock: Path, record: str, advice: str, what: str | None = None) -> None:
    """Create ``lock`` holding ``record`` (complete or not at all: a hard link of a finished file), taking over a stale one.
    ``what`` names what the lock guards in the refusal (default: the lock's folder)."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(record)  # inside the try: a full disk can create the file and then fail to write it
        for _ in range(5):
            try:
                _create(tmp, lock, record)
                return
            except FileExistsError:
                pass
            try:
                text = lock.read_text()
            except FileNotFoundError:  # released meanwhile: try again
                continue
            holder = _parse_lock(text)
            if holder is not None and _holder_runs(lock, holder):
                raise GzooError(
                    f"{what or lock.parent} is in use by another run (pid {holder['pid']} on {holder['host']}, started {holder.get('started_at', '?')}: "
                    f"{holder.get('command') or 'command unknown'}); {advice}, or delete {lock} if that run is no longer running."
                )
            aside = lock.with_name(f"{lock.name}.stale.{os.getpid()}")
            try:
                os.rename(lock, aside)  # take the stale lock away, then check it was the one read (not a newer run's)
            except FileNotFoundError:
                continue
            if aside.read_text() != text:
                try:
                    os.link(aside, lock)  # another run took it over meanwhile: put its lock back
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
            if holder is not None:
                from gzoo.log import say

                say(f"took over the lock of {what or lock.parent} from pid {holder['pid']} on {holder['host']}, which no longer runs")
        raise GzooError(f"could not take the lock {lock}: other runs keep taking it; {advice}.")
    finally:
        tmp.unlink(missing_ok=True)


def _create(tmp: Path, lock: Path, record: str) -> None:
    """``lock`` with ``record`` in it, or FileExistsError: a hard link of the written ``tmp`` (never seen half-written),
    or on a filesystem without hard links an exclusively created file."""
    try:
        os.link(tmp, lock)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(record)


def _parse_lock(text: str) -> dict | None:
    try:
        holder = json.loads(text)
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and "host" in holder else None
    except ValueError:
        return None


def _holder_runs(lock: Path, holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (on another host: assumed so, it cannot be checked)."""
    pid = holder["pid"]
    if holder["host"] != socket.gethostname():
        return True
    if pid == os.getpid():
        return lock in _held
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    try:  # Linux: a zombie has ended; a process started after the lock was taken reuses the pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return True
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0] != "Z" and started <= float(holder.get("started", 0)) + 2.0


def folder_in_use(folder: str | Path) -> str | None:
    """Who holds ``folder``'s lock (see :func:`lock_folder`) while that process still runs, in words, or None."""
    lock = Path(folder).absolute() / LOCK_NAME
    try:
        holder = _parse_lock(lock.read_text())
    except OSError:
        return None
    if holder is None or not _holder_runs(lock, holder):
        return None
    return f"pid {holder['pid']} on {holder['host']}, started {holder.get('started_at', '?')}: {holder.get('command') or 'command unknown'}"


# ----------------------------------------------------------------------------- folders and checkpoints of a run


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
