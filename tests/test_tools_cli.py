"""The command lines of gzoo.predict, gzoo.evaluate, gzoo.export and gzoo.gallery.

Each tool answers --help with every option, its default and its comment (exit 0), and each
kind of user's mistake (an unknown key, a wrong type, a bad choice) with exactly one line on
stderr, ``[gzoo] error: ...``, no traceback, exit status 2. In process through ``main(argv)``,
and once per tool as a real ``python -m gzoo.<tool>``.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from omegaconf import MISSING

from gzoo import evaluate, export, gallery, predict

# tool: (module, options class, the required options, a wrong type, a bad choice, what each mistake says)
TOOLS = {
    "predict": (
        predict,
        predict.PredictOptions,
        ["ckpt=x.ckpt", "images=imgs", "out=sub.csv"],
        ("tta=abc", "tta='abc' is not a valid value (expected an integer)"),
        ("on_bad_image=ignore", "on_bad_image=ignore is not one of error, skip"),
    ),
    "evaluate": (
        evaluate,
        evaluate.EvaluateOptions,
        ["ckpt=x.ckpt"],
        ("tta=abc", "tta='abc' is not a valid value (expected a list of integers)"),
        ("split=training", "split=training is not one of null, train, val, test, all"),
    ),
    "export": (
        export,
        export.ExportOptions,
        ["ckpt=x.ckpt"],
        ("overwrite=maybe", "overwrite='maybe' is not a valid value (expected true or false)"),
        ("format=png", "format=png is not one of onnx, torchscript"),
    ),
    "gallery": (
        gallery,
        gallery.GalleryOptions,
        ["predictions=sub.csv", "images=imgs", "answer=Class1.1"],
        ("k=abc", "k='abc' is not a valid value (expected an integer)"),
        ("answer=spiral", "answer='spiral' is not one of the 37 answers"),
    ),
}


def options_of(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) for every option, nested dataclasses (evaluate's data.*) flattened."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += options_of(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, f))
    return out


def written(value) -> str:
    """A default as the user would type it."""
    if value is MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(written, value)) + "]"
    return str(value)


def check_help(text: str, cls: type) -> None:
    """Every option on a line of its own: key=default, then its comment (and its choices, if any)."""
    lines = text.splitlines()
    for key, f in options_of(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        comment = f.metadata["help"]
        assert comment, f"option {key} has no comment"
        pattern = re.compile(rf"^\s+{re.escape(f'{key}={written(default)}')}\s+{re.escape(comment)}")
        (line,) = [line for line in lines if pattern.match(line)] or [None]
        assert line is not None, f"--help does not list {key}={written(default)} with its comment:\n{text}"
        if f.metadata.get("choices"):
            assert f"(one of {', '.join(map(written, f.metadata['choices']))})" in line


def check_one_error_line(err: str, message: str) -> None:
    assert err.startswith("[gzoo] error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err  # exactly one line
    assert "Traceback" not in err
    assert message in err, err


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_option_with_default_and_comment(tool, flag, capsys):
    module, cls, *_ = TOOLS[tool]
    assert module.main([flag]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.startswith(module.__doc__.strip().splitlines()[0])  # what the tool does, then its options
    check_help(captured.out, cls)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("mistake", ["unknown key", "wrong type", "bad choice"])
def test_a_mistake_is_one_line_on_stderr_and_status_2(tool, mistake, tmp_path, monkeypatch, capsys):
    module, _, required, wrong_type, bad_choice = TOOLS[tool]
    arg, message = {
        "unknown key": ("colour=red", "unknown option 'colour'"),
        "wrong type": wrong_type,
        "bad choice": bad_choice,
    }[mistake]
    key = arg.partition("=")[0]
    argv = [a for a in required if a.partition("=")[0] != key] + [arg]  # everything else right: the mistake is the only one
    monkeypatch.chdir(tmp_path)  # nothing the tool might read or write is here
    assert module.main(argv) == 2
    captured = capsys.readouterr()
    check_one_error_line(captured.err, message)
    assert list(tmp_path.iterdir()) == []  # and nothing was written


def run_module(tool: str, args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"gzoo.{tool}", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# As real commands in the slow suite: each start imports torch (and Lightning, for those that load
# checkpoints), seconds on 2 cores; the fast suite calls each tool's main() in this process.
@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_as_a_real_command(tool, tmp_path):
    """``python -m gzoo.<tool> --help`` and ``... colour=red`` in a fresh process (both started at once: each
    spends its time importing torch)."""
    _, cls, *_ = TOOLS[tool]
    started = {"help": run_module(tool, ["--help"], tmp_path), "unknown": run_module(tool, ["colour=red"], tmp_path)}
    done = {}
    try:
        for name, proc in started.items():
            out, err = proc.communicate(timeout=120)
            done[name] = (proc.returncode, out, err)
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    rc, out, err = done["help"]
    assert rc == 0, err
    check_help(out, cls)
    rc, out, err = done["unknown"]
    assert rc == 2
    check_one_error_line(err, "unknown option 'colour'")
    assert out == ""
