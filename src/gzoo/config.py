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
import math
import re
import signal
import sys
import textwrap
import threading
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gzoo.errors import GzooError, RunInterrupted
from gzoo.io import USER_ERRNOS, os_failure
from gzoo.log import error, logger

#: The default of an option the user must give.
REQUIRED: Any = MISSING
T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] = (),
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
    valid: Callable[[Any], bool] | None = None,
    must: str | None = None,
) -> Any:
    """A dataclass field for an option: its default, a one-line comment, and its checks (see :func:`check_values`):
    ``choices``, the bounds ``low <= v <= high`` and ``above < v < below`` (each number of a list), a ``valid``
    test for what bounds cannot say, and ``must``, the words of the error's "must be ..." when the bounds' own
    words would not say why."""
    meta = {"help": help, "choices": tuple(choices), "low": low, "high": high, "above": above, "below": below, "valid": valid, "must": must}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range_words(meta: dict) -> str:
    """What the bounds of an option say, e.g. ">= 1", "in (0, 1]"."""
    low = (meta["low"], "[") if meta["low"] is not None else (meta["above"], "(") if meta["above"] is not None else None
    high = (meta["high"], "]") if meta["high"] is not None else (meta["below"], ")") if meta["below"] is not None else None
    if low and high:
        return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
    if low:
        return f"{'>=' if low[1] == '[' else '>'} {low[0]:g}"
    assert high is not None  # called for a bounded option only
    return f"{'<=' if high[1] == ']' else '<'} {high[0]:g}"


def _in_range(v: Any, meta: dict) -> bool:
    if not _number(v):
        return False
    return not (
        (meta["low"] is not None and v < meta["low"])
        or (meta["high"] is not None and v > meta["high"])
        or (meta["above"] is not None and v <= meta["above"])
        or (meta["below"] is not None and v >= meta["below"])
    )


def _dataclass_of(kind: Any) -> type | None:
    """The dataclass of a field's type (``X`` or ``X | None``), or None."""
    if dataclasses.is_dataclass(kind):
        return typing.cast(type, kind)
    return next((typing.cast(type, a) for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), None)


def check_values(values: Any, cls: type, prefix: str = "") -> None:
    """Every option of ``cls`` in ``values`` (a DictConfig, or an instance of ``cls``) within its choices and bounds:
    a GzooError ``key=value must be ...`` (or ``... is not one of ...``) naming the first that is not. A value that is
    null passes (the type says whether null is allowed; OmegaConf checked the types)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        checks = any(f.metadata.get(k) not in (None, ()) for k in ("choices", "low", "high", "above", "below", "valid"))
        if not checks and _dataclass_of(hints[f.name]) is None:
            continue  # nothing to check: its value is not even resolved (run_dir may hold ${hydra:job.num})
        try:
            value = getattr(values, f.name) if not isinstance(values, (dict, DictConfig)) else values[f.name]
        except (KeyError, AttributeError):
            continue
        except OmegaConfBaseException as e:  # an interpolation that cannot be resolved, a ??? value
            raise GzooError(f"{key} has no usable value ({_one_line(e)}); set it, e.g. {key}=...") from None
        if isinstance(values, DictConfig) and OmegaConf.is_interpolation(values, f.name):
            continue  # a value with its home elsewhere (data.image_size is model.image_size), checked there
        inner = _dataclass_of(hints[f.name])
        if inner is not None:
            if value is not None:
                check_values(value, inner, key + ".")
            continue
        meta = {"choices": (), "low": None, "high": None, "above": None, "below": None, "valid": None, "must": None, **f.metadata}
        if value is None:
            continue
        if meta["choices"] and value not in meta["choices"]:
            raise GzooError(f"{key}={shown(value)} is not one of {', '.join(map(shown, meta['choices']))}.")
        bounded = any(meta[k] is not None for k in ("low", "high", "above", "below"))
        items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
        if (meta["valid"] is not None and not meta["valid"](value)) or (bounded and not all(_in_range(v, meta) for v in items)):
            said = repr(value) if isinstance(value, str) else shown(value)
            raise GzooError(f"{key}={said} must be {meta['must'] or _range_words(meta)}.")


def fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) for every option of ``cls``, nested dataclasses flattened (``data.root``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if (sub := _dataclass_of(kind)) is not None:
            out += fields(sub, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f, kind))
    return out


def shown(value: Any) -> str:
    if value is MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(shown, value)) + "]"
    return str(value)


def help_text(cls: type, doc: str | None = None) -> str:
    """The tool's description (its module docstring's first paragraph) and one line per option."""
    lines = [textwrap.dedent(doc or "").strip().split("\n\n")[0], "", "Options (key=value; defaults shown):"] if doc else ["Options:"]
    rows = []
    for key, f, _ in fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        comment = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            comment += f" (one of {', '.join(map(shown, f.metadata['choices']))})"
        rows.append((f"{key}={shown(default)}", comment))
    width = max(len(r[0]) for r in rows) + 2
    lines += [f"  {left:<{width}}{right}" for left, right in rows]
    return "\n".join(lines)


def _one_line(e: OmegaConfBaseException) -> str:
    return str(e).strip().splitlines()[0].rstrip(".")


def parse(cls: type[T], argv: Sequence[str]) -> T:
    """``key=value`` arguments -> an instance of ``cls``, every type, choice and bound checked."""
    keys = [key for key, _, _ in fields(cls)]
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep:
            raise GzooError(f"expected key=value arguments, got {arg!r}; run with --help to see every option.")
        if key not in keys:
            raise GzooError(f"unknown option {key!r}; the options are {', '.join(keys)}.")
    types = {key: kind for key, _, kind in fields(cls)}
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
    check_values(merged, cls)
    return typing.cast(T, OmegaConf.to_object(merged))  # a structured config of cls gives a cls


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
    status, _ = front_door(lambda: func(parse(cls, argv)))
    return status


def front_door(call: Callable[[], Any], sigterm: bool = True) -> tuple[int, str | None]:
    """Run ``call()`` and turn what the user can fix into one sentence on stderr: the front door of training and
    every tool. Returns (exit status, the sentence said or None): 0; 2 for a GzooError or an OSError of
    :data:`gzoo.io.USER_ERRNOS`; 128 + the signal for Ctrl-C, SIGTERM (with ``sigterm``, raised as :class:`Stopped`;
    training sets its own handlers, gzoo.run_guard) and a RunInterrupted. Anything else is a bug: its traceback stays."""
    try:
        with _sigterm_raises() if sigterm else nullcontext():
            call()
    except RunInterrupted as e:  # not the user's mistake: said as it is ("[gzoo] stopped by SIGTERM ...")
        logger.error(str(e))
        return e.status, str(e)
    except GzooError as e:
        error(str(e))
        return 2, str(e)
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise  # not the user's to fix: the traceback is for a bug report
        error(os_failure(e))
        return 2, os_failure(e)
    except KeyboardInterrupt:
        error(_stopped("SIGINT (Ctrl-C)"))
        return 128 + signal.SIGINT, _stopped("SIGINT (Ctrl-C)")
    except Stopped as e:
        error(_stopped(signal.Signals(e.signum).name))
        return 128 + e.signum, _stopped(signal.Signals(e.signum).name)
    return 0, None


def _type_name(kind: Any) -> str:
    """int -> 'an integer', Optional[Path] -> 'a path or null', list[int] -> 'a list of integers'."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is list:
        return f"a list of {names.get(args[0], 'values').split(' ', 1)[1]}s" if args else "a list"
    if args and len(args) < len(typing.get_args(kind)):  # Optional[X]
        return f"{_type_name(args[0])} or null"
    return names.get(kind, getattr(kind, "__name__", str(kind)))
