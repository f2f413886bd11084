"""key=value command lines for the gzoo tools (synth, predict, evaluate, gallery, export, bench, contact_sheet).

Each tool declares its options as ``{key: (convert, default)}``; ``convert`` turns the
text after ``=`` into a value or raises ValueError with a short reason. A default of
:data:`REQUIRED` makes the key mandatory. A user's mistake ends in one sentence on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gzoo.errors import GzooError

REQUIRED = object()
Options = dict[str, tuple[Callable[[str], Any], Any]]


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError("expected true or false")


def integer(low: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
        if value < low:
            raise ValueError(f"expected an integer >= {low}")
        return value

    return convert


def integers(low: int) -> Callable[[str], list[int]]:
    """A comma-separated list, e.g. ``tta=1,8``."""
    one = integer(low)
    return lambda text: [one(t) for t in text.split(",")]


def choice(*values: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in values:
            raise ValueError(f"expected one of {', '.join(values)}")
        return text

    return convert


def path(text: str) -> Path:
    if not text:
        raise ValueError("expected a path")
    return Path(text).expanduser()


def parse_args(argv: list[str], options: Options) -> dict[str, Any]:
    """key=value arguments -> {key: value}, with defaults filled in."""
    args = {key: default for key, (_, default) in options.items()}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep:
            raise GzooError(f"expected key=value arguments, got {arg!r} (keys: {', '.join(options)}).")
        if key not in options:
            raise GzooError(f"unknown key {key!r}; the keys are {', '.join(options)}.")
        try:
            args[key] = options[key][0](text)
        except ValueError as e:
            raise GzooError(f"{key}={text!r}: {e}.") from None
    missing = [key for key, value in args.items() if value is REQUIRED]
    if missing:
        keys = " and ".join(f"{k}=..." for k in missing)
        raise GzooError(f"{keys} {'is' if len(missing) == 1 else 'are'} required; run with help to see every option.")
    return args


def run(func: Callable[..., Any], options: Options, doc: str, argv: list[str] | None = None) -> int:
    """Parse argv, call ``func(**args)`` (dots in keys become underscores) and return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(doc)
        return 0
    try:
        args = parse_args(argv, options)
        func(**{key.replace(".", "_"): value for key, value in args.items()})
    except GzooError as e:
        print(f"[gzoo] error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0
