"""Backbone weights come through torchvision's weights API: a file in $TORCH_HOME/hub/checkpoints
is used offline, and a failed download stops with one line naming the exact file to place."""

import urllib.error

import pytest
import torch
import torchvision

from common.errors import UserError
from model.backbone import backbone_weights_file, build_backbone


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_weights_file_is_torchvisions_v1_file(torch_home):
    path = backbone_weights_file("wide_resnet50_2")
    assert path == torch_home / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth"
    assert backbone_weights_file("resnet18").name == "resnet18-f37072fd.pth"


def test_cached_weights_file_is_used_without_network(torch_home, monkeypatch):
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()
    target = backbone_weights_file("resnet18")
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used when the file is in place")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    loaded = build_backbone("resnet18", pretrained=True)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_failed_download_names_the_file_to_place(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as error:
        build_backbone("wide_resnet50_2", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert str(torch_home / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth") in message
    assert "pretrained=false" in message


def test_random_weights_only_when_asked(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download expected"))
    model = build_backbone("resnet18", pretrained=False)
    assert isinstance(model, torchvision.models.ResNet)
