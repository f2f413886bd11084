"""The README's commands name things that exist: every config option it mentions composes in the real
configs, every `make X` is a Makefile target, every `python -m gzoo.X` is a runnable module, and the
commands it gives write where it says without touching tracked files."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gzoo.tools.contact_sheet import ContactSheetOptions
from gzoo.tools.contact_sheet import main as contact_sheet_main
from tests.conftest import CONF, ROOT

README = (ROOT / "README.md").read_text()
GROUPS = ("data", "model", "phase", "optim", "trainer", "speed", "paths", "callbacks")  # the config groups whose options the README names
CHOICE = re.compile(r"(?<![\w.+/-])(data|model|phase|optim|trainer|experiment|debug|speed)=([\w-]+)")  # a group choice: data=catalog
OPTION = re.compile(rf"(?<![\w./$<-])({'|'.join(GROUPS)})\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")  # an option name: data.crop_cache
NOT_OPTIONS = {"py", "yaml", "yml", "md", "json", "ckpt", "png", "csv", "parquet", "onnx", "pt"}  # optim.py is a file


def code_lines(text: str) -> list[str]:
    """The README's code as lines: fenced blocks (not Python ones: `model.predict` there is a variable),
    indented command blocks, and the inline code spans of every other line (one line of spans each)."""
    lines, fence = [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = (line.strip()[3:] or "text") if fence is None else None  # its language, or None when it closes
            continue
        if fence is not None:
            if fence != "python":
                lines.append(line)
        elif line.startswith("    ") and line.strip():
            lines.append(line)
        else:
            lines.append(" ".join(re.findall(r"`([^`]+)`", line)))
    return [line for line in lines if line.strip()]


def option_mentions(text: str) -> list[tuple[str, str]]:
    """(option name, the code line it is on) for every option of the GROUPS named (data.crop_cache, trainer.devices, ...)."""
    found = []
    for line in code_lines(text):
        for group, rest in OPTION.findall(line):
            if rest.rsplit(".", 1)[-1] not in NOT_OPTIONS:
                found.append((f"{group}.{rest}", line))
    return found


@cache
def composed(choices: tuple[tuple[str, str], ...]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"{group}={value}" for group, value in choices])


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def option_exists(name: str, line: str) -> bool:
    """In the config composed with the group choices the line makes; for a group the line leaves alone, in any of its options."""
    group = name.split(".")[0]
    choices = {g: v for g, v in CHOICE.findall(line) if (CONF / g / f"{v}.yaml").is_file()}
    candidates = [choices] if group in choices else [choices, *({**choices, group: option} for option in group_options(group))]
    return any(OmegaConf.select(composed(tuple(sorted(c.items()))), name, default="<absent>") != "<absent>" for c in candidates)


def test_every_option_the_readme_names_exists_in_the_configs():
    mentions = option_mentions(README)
    assert len({name for name, _ in mentions}) > 30  # the scan finds them (the README names dozens)
    missing = sorted({f"{name}   (in: {line.strip()[:100]})" for name, line in mentions if not option_exists(name, line)})
    assert not missing, "README.md names options that the configs do not have:\n" + "\n".join(missing)


def test_the_option_check_catches_a_wrong_name():
    """Negative control: a misspelt option, and an option of another group choice, are reported."""
    assert option_mentions("`data.cache_crops=auto`") == [("data.cache_crops", "data.cache_crops=auto")]
    assert not option_exists("data.cache_crops", "data.cache_crops=auto")
    assert option_exists("data.crop_cache", "data.crop_cache=auto")
    assert option_exists("data.synth.n_train", "data.synth.n_train=5")  # in one option of the group (data=synthetic)
    assert not option_exists("data.synth.n_train", "data=gz2 data.synth.n_train=5")  # not in the option the line picks
    assert option_mentions("optim.py  the optimiser\n```python\nmodel.predict(x)\n```") == []


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))


def test_every_make_target_the_readme_names_exists():
    named = {t for line in code_lines(README) for t in re.findall(r"(?<![\w-])make\s+([a-z][\w-]*)", line)}
    assert {"train", "test", "install", "help"} <= named  # the scan finds them
    assert not named - make_targets(), f"README.md names make targets the Makefile lacks: {sorted(named - make_targets())}"


def test_every_gzoo_module_the_readme_runs_exists():
    named = {m for line in code_lines(README) for m in re.findall(r"python -m (gzoo(?:\.\w+)+)", line)}
    assert {"gzoo.train", "gzoo.predict", "gzoo.synth"} <= named  # the scan finds them
    for module in sorted(named):
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"README.md runs python -m {module}, which does not exist"
        runnable = spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
        assert runnable, f"README.md runs python -m {module}, a package without __main__"


def test_readme_commands_write_outputs_not_tracked_files():
    """A command copied from the README neither overwrites the tracked docs/ pictures nor leaves its results
    nowhere: the notebooks' command keeps the executed notebooks (their figures) under outputs/notebooks/."""
    lines = code_lines(README)
    tracked = [line for line in lines if re.search(r"\bout=docs/", line)]
    assert not tracked, f"README.md commands write into the tracked docs/: {tracked}"
    runs = [line for line in lines if "jupyter execute" in line or "jupyter nbconvert" in line]
    assert runs, "the README says how to run the notebooks"
    for line in runs:  # jupyter execute saves nothing without --output (relative to the notebook's folder) or --inplace
        assert re.search(r"--output=['\"]?\.\./outputs/notebooks/", line) and "mkdir -p outputs/notebooks" in line, line


def test_contact_sheet_draws_into_outputs_and_keeps_an_existing_file(tmp_path, capsys):
    """The README's contact-sheet command (no out=) writes to the untracked outputs/, and never replaces a file unasked."""
    assert ContactSheetOptions().out == Path("outputs/synth_vs_real.png")
    existing = tmp_path / "sheet.png"
    existing.write_bytes(b"keep me")
    assert contact_sheet_main([f"out={existing}", f"real={tmp_path / 'absent'}"]) == 2  # refused before anything is read
    assert "already exists; pass overwrite=true" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
