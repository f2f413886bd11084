"""gzoo as an installed package: a wheel, installed into a fresh virtual environment, runs from any folder."""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_kaggle


@pytest.mark.slow  # builds a wheel and a virtual environment: about a minute
@pytest.mark.timeout(900)
def test_a_wheel_installed_in_a_fresh_venv_trains_from_a_folder_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("gzoo-*.whl")

    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # The dependencies come from this environment (no network); its own gzoo (editable, src/) is not on that path.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.check_output([str(python), "-c", "import gzoo; print(gzoo.__file__)"], cwd=work, text=True).strip()
    assert Path(where).is_relative_to(site), where  # the wheel's gzoo, not the checkout's
    shipped = subprocess.check_output([str(python), "-c", "import gzoo.train as t; print(len(list(t.CONF.rglob('*.yaml'))))"], cwd=work, text=True)
    assert int(shipped) == len(list((ROOT / "src/gzoo/conf").rglob("*.yaml")))

    job = subprocess.run([str(python), "-m", "gzoo.train", "--cfg", "job", "model=b3"], cwd=work, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "timm_name: tf_efficientnet_b3.in1k" in job.stdout

    data = write_kaggle(tmp_path / "gz2", n=24)
    run = subprocess.run(
        [str(python), "-m", "gzoo.train", "debug=tiny", f"data.root={data}", f"paths.output_root={work / 'outputs'}", "tta8_at_end=false"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "best val/rmse" in run.stdout
    assert (work / "outputs/default/tiny/finetune/checkpoints/best.ckpt").is_file()
