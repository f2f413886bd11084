"""The options of every gzoo tool: one typed dataclass per tool, read from ``key=value`` arguments.

A tool declares its options once, as a dataclass whose fields are made with :func:`option`
(default, a one-line comment, and optionally the allowed choices or the smallest value)::

    @dataclass
    class PredictOptions:
        ckpt: Path = option(REQUIRED, "a checkpoint written by gzoo.train")
        tta: int = option(1, "views averaged per galaxy", low=1)

and its ``main`` is ``run_tool(predict, PredictOptions, argv, doc=__doc__)``. The arguments are
merged into the dataclass with OmegaConf (the library Hydra builds on, so values are written as
in ``python -m gzoo.train``: ``tta=8``, ``tta=[1,8]``, ``data.root=DIR``), which checks every type;
``--help`` lists every option with its default and comment. A user's mistake (an unknown key, a
wrong type, a bad choice, a missing required option, and while the tool runs a full or read-only disk)
ends in one sentence and exit status 2; Ctrl-C and SIGTERM in one sentence and 130 or 143 (see run_tool).
"""

from __future__ import annotations

import dataclasses
import re
import signal
import sys
import textwrap
import threading
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gzoo.errors import GzooError, RunInterrupted
from gzoo.io import USER_ERRNOS, os_failure
from gzoo.log import error

#: The default of an option the user must give.
REQUIRED: Any = MISSING
T = TypeVar("T")


def option(default: Any, help: str, *, choices: Sequence[Any] = (), low: float | None = None) -> Any:
    """A dataclass field for a tool option: its default, a one-line comment, and its checks."""
    meta = {"help": help, "choices": tuple(choices), "low": low}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) for every option of ``cls``, nested dataclasses flattened (``data.root``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += _fields(kind, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f, kind))
    return out


def _shown(value: Any) -> str:
    if value is MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_shown, value)) + "]"
    return str(value)


def help_text(cls: type, doc: str | None = None) -> str:
    """The tool's description (its module docstring's first paragraph) and one line per option."""
    lines = [textwrap.dedent(doc or "").strip().split("\n\n")[0], "", "Options (key=value; defaults shown):"] if doc else ["Options:"]
    rows = []
    for key, f, _ in _fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        comment = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            comment += f" (one of {', '.join(map(_shown, f.metadata['choices']))})"
        rows.append((f"{key}={_shown(default)}", comment))
    width = max(len(r[0]) for r in rows) + 2
    lines += [f"  {left:<{width}}{right}" for left, right in rows]
    return "\n".join(lines)


def _one_line(e: OmegaConfBaseException) -> str:
    return str(e).strip().splitlines()[0].rstrip(".")


def parse(cls: type[T], argv: Sequence[str]) -> T:
    """``key=value`` arguments -> an instance of ``cls``, every type, choice and bound checked."""
    keys = [key for key, _, _ in _fields(cls)]
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep:
            raise GzooError(f"expected key=value arguments, got {arg!r}; run with --help to see every option.")
        if key not in keys:
            raise GzooError(f"unknown option {key!r}; the options are {', '.join(keys)}.")
    types = {key: kind for key, _, kind in _fields(cls)}
    dotlist = []
    for arg in argv:  # a list option also takes comma-separated values: tta=1,8 as tta=[1,8]
        key, _, value = arg.partition("=")
        if typing.get_origin(types[key]) is list and not value.startswith("["):
            value = f"[{value}]"
        dotlist.append(f"{key}={value}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "an option"
        key = re.sub(r"(\[\d+\])+$", "", key)  # an element of a list option (tta[1]) -> the option (tta)
        given = next((a.partition("=")[2] for a in argv if a.partition("=")[0] == key), None)
        expected = _type_name(types[key]) if key in types else "another value"
        raise GzooError(f"{key}={given!r} is not a valid value (expected {expected}): {_one_line(e)}.") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise GzooError(f"{' and '.join(f'{k}=...' for k in missing)} {'is' if len(missing) == 1 else 'are'} required; run with --help to see every option.")
    for key, f, _ in _fields(cls):
        value = OmegaConf.select(merged, key)
        choices, low = f.metadata.get("choices"), f.metadata.get("low")
        if choices and value not in choices and not (value is None and None in choices):
            raise GzooError(f"{key}={_shown(value)} is not one of {', '.join(map(_shown, choices))}.")
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        if low is not None and any(v is not None and v < low for v in values):
            raise GzooError(f"{key}={_shown(value)} must be >= {low:g}.")
    return OmegaConf.to_object(merged)


class Stopped(BaseException):
    """Raised by :func:`run_tool`'s SIGTERM handler: a BaseException, so no ``except Exception`` on the way eats it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM (SLURM, Kubernetes, systemd, ``timeout``) raises :class:`Stopped` in the main
    thread, so the tool's ``finally`` blocks run (temporary files removed, locks released); the old handler after."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _stopped(name: str) -> str:
    return f"stopped by {name} before it finished; outputs are written whole or not at all; run the same command again (adding overwrite=true if it says an output exists)."


def run_tool(func: Callable[[Any], Any], cls: type, argv: Sequence[str] | None = None, doc: str | None = None) -> int:
    """Parse ``argv`` into ``cls``, call ``func(options)`` and return the exit status: the one front door of every tool.

    What the user can fix ends in one sentence on stderr, without a traceback: a GzooError (status 2), an
    OSError of :data:`gzoo.io.USER_ERRNOS` (a full or read-only disk, a path component that is a file, a
    permission: status 2), Ctrl-C (130) and SIGTERM (143), which raises :class:`Stopped` while the tool runs.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text(cls, doc))
        return 0
    try:
        with _sigterm_raises():
            func(parse(cls, argv))
    except RunInterrupted as e:
        error(str(e))
        return e.status
    except GzooError as e:
        error(str(e))
        return 2
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise  # not the user's to fix: the traceback is for a bug report
        error(os_failure(e))
        return 2
    except KeyboardInterrupt:
        error(_stopped("SIGINT (Ctrl-C)"))
        return 128 + signal.SIGINT
    except Stopped as e:
        error(_stopped(signal.Signals(e.signum).name))
        return 128 + e.signum
    return 0


def _type_name(kind: Any) -> str:
    """int -> 'an integer', Optional[Path] -> 'a path or null', list[int] -> 'a list of integers'."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is list:
        return f"a list of {names.get(args[0], 'values').split(' ', 1)[1]}s" if args else "a list"
    if args and len(args) < len(typing.get_args(kind)):  # Optional[X]
        return f"{_type_name(args[0])} or null"
    return names.get(kind, getattr(kind, "__name__", str(kind)))
