"""One home for every option: the schema (gzoo/options.py) types and bounds every run option, the YAML files set
only what a variant or recipe changes, and a wrong type or an out-of-range value in YAML, on the command line or
for a tool is one sentence, exit status 2, and nothing written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from gzoo.config import fields
from gzoo.options import RunOptions
from gzoo.train import CONF, check_overrides

#: Group files that pin values on purpose (a named recipe, a search space, a tiny debug run) and Hydra's own.
PINNED = ("experiment", "hparams_search", "debug", "hydra")


def schema_defaults() -> dict:
    out = {}
    for key, f, _ in fields(RunOptions):
        out[key] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def test_no_group_file_repeats_a_default_of_the_schema():
    """A YAML file of a group sets only what its variant changes: a key written there with the schema's own default
    is a second home for that default (negative control: the check finds one when a file repeats a default)."""
    defaults = schema_defaults()

    def repeats(group: str, values: dict, prefix: str) -> list[str]:
        found = []
        for key, value in values.items():
            if key == "defaults":
                continue
            full = f"{prefix}{key}"
            if isinstance(value, dict) and full not in defaults:
                found += repeats(group, value, full + ".")
            elif full in defaults and value == defaults[full] and not (group == "model" and key in ("name", "timm_name", "image_size")):
                found.append(full)
        return found

    files = [p for p in CONF.rglob("*.yaml") if p.parent.name not in PINNED and p.parent != CONF and p.parent.parent.name != "hydra"]
    assert len(files) >= 15
    repeated = {}
    for path in files:
        text = OmegaConf.to_container(OmegaConf.load(path))
        package_global = "@package _global_" in path.read_text()
        found = repeats(path.parent.name, text or {}, "" if package_global else f"{path.parent.name}.")
        if found:
            repeated[str(path.relative_to(CONF))] = found
    assert repeated == {}
    assert repeats("optim", {"weight_decay": 0.0, "name": "x"}, "optim.") == ["optim.weight_decay"]  # the check can fail


@pytest.mark.parametrize(
    "yaml, said",
    [
        (
            "data:\n  batch_size: lots\n",
            "In 'experiment/mine': ValidationError raised while composing config: Value 'lots' of type 'str' could not be converted to Integer",
        ),
        ("model:\n  dropout: 2.0\n", "model.dropout=2.0 must be in [0, 1)."),
        ("optim:\n  schedule: linear\n", "optim.schedule=linear is not one of plateau, cosine, constant."),
    ],
)
def test_a_wrong_type_or_range_in_a_users_yaml_is_one_sentence_before_anything_is_written(tmp_path, yaml, said, capsys):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text("# @package _global_\n" + yaml)
    out = tmp_path / "outputs"
    with pytest.raises(SystemExit) as stop:
        check_overrides(["debug=tiny", f"paths.output_root={out}", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mine"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"[gzoo] error: {said}"), line
    assert not out.exists()


@pytest.mark.parametrize("tool", ["predict", "evaluate", "gallery", "export"])
@pytest.mark.parametrize("arg, said", [("batch_size=lots", "is not a valid value"), ("batch_size=0", "must be >= 1"), ("k=0", "must be >= 1")])
def test_each_tool_says_a_wrong_type_or_range_in_one_sentence(tmp_path, tool, arg, said, capsys, monkeypatch):
    import importlib

    module = importlib.import_module(f"gzoo.{tool}")
    options = {f.name for f in dataclasses.fields(next(v for k, v in vars(module).items() if k.endswith("Options") and dataclasses.is_dataclass(v)))}
    key = arg.split("=")[0]
    if key not in options:
        pytest.skip(f"gzoo.{tool} has no option {key}")
    monkeypatch.chdir(tmp_path)
    required = {
        "predict": ["ckpt=x.ckpt", "images=.", "out=p.csv"],
        "evaluate": ["ckpt=x.ckpt"],
        "gallery": ["predictions=p.csv", "images=.", "answer=Class1.1"],
    }
    assert module.main([*required.get(tool, ["ckpt=x.ckpt"]), arg]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"[gzoo] error: {key}=") and said in line, line
    assert list(Path(tmp_path).iterdir()) == []  # nothing written


def test_the_augmentations_python_defaults_are_the_schemas():
    """GalaxyWarp and the reference chain take the augmentation's values from the run (data.augment); where their
    Python signatures give defaults, they are AugmentOptions', so the three cannot drift apart."""
    import inspect

    from gzoo.options import AugmentOptions
    from gzoo.tools.reference_transform import reference_train_transform
    from gzoo.transforms import GalaxyWarp

    schema = dataclasses.asdict(AugmentOptions())
    for func in (GalaxyWarp.__init__, reference_train_transform):
        params = inspect.signature(func).parameters
        for key, value in schema.items():
            if key in params:
                default = params[key].default
                assert (list(default) if isinstance(default, tuple) else default) == value, (func.__qualname__, key)


@pytest.fixture
def full_disk(tmp_path):
    """A real 256 KB tmpfs filled up to its last few KB (skipped where mounting is not allowed)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        import shutil

        (mount / "filler").write_bytes(b"\0" * (shutil.disk_usage(mount).free - 8192))  # room for a lock file, not for the table
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_under_gzoo_predict_is_one_sentence_and_leaves_no_partial_table(trained_run, full_disk, capsys):
    from gzoo.predict import main as predict

    out = full_disk / "sub" / "predictions.csv"
    status = predict([f"ckpt={trained_run['ckpt']}", f"images={trained_run['data'] / 'images_training_rev1'}", f"out={out}", "num_workers=0", "progress=false"])
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = err.strip().splitlines()
    assert line.startswith("[gzoo] error: could not write ") and "is full (No space left on device)" in line, line
    assert not out.exists() and not [p for p in full_disk.rglob("*") if p.name not in ("filler", "_manifest.json") and p.is_file()]
    # What is left is whole: the manifest of the parts to resume (no part could be written).
    assert json.loads((out.parent / ".predictions.csv.parts" / "_manifest.json").read_text())["parts"] == 1
