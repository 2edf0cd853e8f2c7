"""timm backbones and backbone weight files: the extractor's channels and feature size follow timm's
feature_info; a wrong name, index or file is one UserError naming what is available, found before
any work (meta device, no random number drawn); a state-dict file of the whole model (head
included) loads into the layers used, is refused when a used key is missing or a key is foreign,
and runs no code; timm's pretrained weights come from the local Hugging Face (or torch.hub) cache
and never from the network. Random weights, 64 x 64 inputs."""

import io
import math

import pytest
import safetensors.torch
import timm
import torch
import torchvision

from common.errors import UserError
from common.fileio import file_digest
from model.card import backbone_description, backbone_weights_tag
from model.backbone import check_backbone
from model.supersimplenet import SuperSimpleNet
from model.timm_backbone import feature_info
from tests.model.test_backbone_weights import WritesMarker

SIZE = (64, 64)


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Every test: an empty Hugging Face cache and torch.hub folder of its own, and no download at all."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the network must never be used")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def build(backbone: str, layers: list, **kwargs) -> SuperSimpleNet:
    kwargs.setdefault("pretrained", False)
    return SuperSimpleNet(SIZE, backbone=backbone, layers=layers, **kwargs)


def random_state_dict(name: str) -> dict:
    """The whole timm model's state dict (classifier included), as timm saves it, with random values."""
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    return model.state_dict()


def saved(state_dict: dict, path):
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    return path


def assert_backbone_holds(model: SuperSimpleNet, state_dict: dict) -> None:
    """Every tensor of the extractor's timm model equals the file's tensor under the whole model's name."""
    features = model.feature_extractor.backbone.features
    for key, tensor in features.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(tensor, state_dict[key]), key


# ---------------------------------------------------------------- shapes from feature_info


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_channels_and_feature_size_follow_feature_info(name):
    info = feature_info(name)
    model = build(f"timm:{name}", [2, 3])
    channels = info[2]["num_chs"] + info[3]["num_chs"]
    side = 2 * math.ceil(SIZE[0] / info[2]["reduction"])  # twice the first layer's size
    assert model.feature_extractor.feature_dim == (channels, side, side)
    state = model.trainable_state_dict()
    assert len(state) == 19  # the published checkpoint layout, with this backbone's channel count
    assert state["feature_adaptor.projection.weight"].shape == (channels, channels, 1, 1)
    assert state["discriminator.dec_head.0.weight"].shape == (128, channels + 1, 5, 5)
    with torch.no_grad():
        anomaly_map, score = model.eval()(torch.randn(2, 3, *SIZE))
    assert anomaly_map.shape == (2, 1, *SIZE) and score.shape == (2,)


def test_layers_come_in_the_order_given():
    """[3, 2]: the deeper feature first, so the feature map is twice the stride-16 size."""
    model = build("timm:resnet18", [3, 2])
    first, second = model.feature_extractor.backbone_features(torch.randn(1, 3, *SIZE))
    assert first.shape[1:] == (256, 4, 4) and second.shape[1:] == (128, 8, 8)
    assert model.feature_extractor.feature_dim == (384, 8, 8)


def test_timm_resnet18_feature_indices_2_3_are_layer2_layer3():
    """timm's resnet18 indices 2 and 3 are the torchvision names layer2 and layer3 (same shapes)."""
    assert build("timm:resnet18", [2, 3]).feature_extractor.feature_dim == \
        build("resnet18", ["layer2", "layer3"]).feature_extractor.feature_dim


# ---------------------------------------------------------------- checks before any work


@pytest.mark.parametrize("backbone, layers, fragments", [
    ("timm:resnet_18", [2, 3], ["not a timm model", "resnet18"]),
    ("timm:resnet18", [2, 5], ["[2, 5] do not fit", "0 (64 ch, stride 2)", "4 (512 ch, stride 32)"]),
    ("timm:efficientnet_b0", [3, 3], ["repeat", "3 (112 ch, stride 16)"]),
    ("timm:resnet18", ["layer2", "layer3"], ["do not fit", "feature indices"]),
    ("vgg16", ["layer2"], ["vgg16", "timm:<model name>"]),
    ("resnet18", ["layer2", "layer9"], ["layer9"]),
], ids=["unknown-name", "index-out-of-range", "repeated-index", "names-on-timm", "unknown-torchvision", "bad-stage"])
def test_check_backbone_is_one_line_naming_what_is_available(backbone, layers, fragments):
    with pytest.raises(UserError) as error:
        check_backbone(backbone, layers)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    with pytest.raises(UserError) as built:  # building the model says the same
        build(backbone, layers)
    assert str(built.value) == message


def test_model_without_features_only_is_one_line(monkeypatch):
    """Every model of timm 1.0.31 builds with features_only=True, so a refusal is simulated (as timm's
    inception_v3 with aux_logits refuses it: an assertion)."""
    real = timm.create_model

    def refusing(name, **kwargs):
        if kwargs.get("features_only"):
            raise AssertionError("features_only not implemented for this model")
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", refusing)
    with pytest.raises(UserError) as error:
        check_backbone("timm:resnet18", [2, 3])
    message = str(error.value)
    assert "timm:resnet18 cannot give feature maps" in message and "features_only" in message
    assert "\n" not in message


def test_check_allocates_nothing_and_draws_no_random_number(tmp_path):
    path = saved(random_state_dict("resnet18"), tmp_path / "resnet18.pth")
    torchvision_path = saved(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pth")
    before = torch.random.get_rng_state()
    check_backbone("timm:resnet18", [2, 3], str(path))
    check_backbone("resnet18", ["layer2", "layer3"], str(torchvision_path))
    assert torch.equal(before, torch.random.get_rng_state())


# ---------------------------------------------------------------- weights files


@pytest.mark.parametrize("name, suffix", [("resnet18", ".pth"), ("efficientnet_b0", ".safetensors")])
def test_whole_model_file_loads_into_the_layers_used(tmp_path, name, suffix):
    """The file holds the classifier and the stages past the last layer used: they are ignored."""
    state_dict = random_state_dict(name)
    path = saved(state_dict, tmp_path / f"weights{suffix}")
    model = build(f"timm:{name}", [2, 3], pretrained=True, backbone_weights=str(path))
    assert_backbone_holds(model, state_dict)
    used = model.feature_extractor.backbone.features.state_dict()
    assert len(used) < len(state_dict)  # head and deepest stages not in the extractor
    source = model.feature_extractor.weights_source
    assert source == {"kind": "file", "path": str(path), "sha256": file_digest(path)}
    assert backbone_weights_tag(model) == f"file:{file_digest(path)[:8]}"
    assert str(path) in backbone_description(model)


def test_torchvision_backbone_takes_a_file_too(tmp_path):
    reference = torchvision.models.resnet18()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()
    path = saved(reference.state_dict(), tmp_path / "resnet18.pth")  # fc and layer4 included
    model = build("resnet18", ["layer2", "layer3"], pretrained=True, backbone_weights=str(path))
    for key, tensor in model.feature_extractor.backbone.state_dict().items():
        assert torch.equal(tensor, reference.state_dict()[key]), key
    assert model.feature_extractor.weights_source["kind"] == "file"


def edited(state_dict: dict, drop: str = "", add: str = "", reshape: str = "") -> dict:
    state_dict = dict(state_dict)
    if drop:
        del state_dict[drop]
    if add:
        state_dict[add] = torch.zeros(3)
    if reshape:
        state_dict[reshape] = torch.zeros(2, 2)
    return state_dict


@pytest.mark.parametrize("backbone, change, fragments", [
    ("timm:resnet18", {"drop": "layer2.0.conv1.weight"}, ["1 missing key", "layer2.0.conv1.weight"]),
    ("timm:resnet18", {"add": "extra.weight"}, ["1 unexpected key", "extra.weight"]),
    ("timm:resnet18", {"reshape": "layer3.1.bn2.weight"}, ["mis-shaped", "layer3.1.bn2.weight"]),
    ("resnet18", {"drop": "layer3.1.bn2.bias"}, ["missing", "layer3.1.bn2.bias"]),
], ids=["timm-missing", "timm-unexpected", "timm-mis-shaped", "torchvision-missing"])
def test_file_that_does_not_fit_is_refused_naming_the_keys(tmp_path, backbone, change, fragments):
    if backbone.startswith("timm:"):
        state_dict, layers = random_state_dict("resnet18"), [2, 3]
    else:
        state_dict, layers = torchvision.models.resnet18().state_dict(), ["layer2", "layer3"]
    path = saved(edited(state_dict, **change), tmp_path / "weights.pth")
    with pytest.raises(UserError) as error:
        check_backbone(backbone, layers, str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "does not fit" in message
    for fragment in fragments:
        assert fragment in message, message


def test_dropping_an_unused_key_is_fine(tmp_path):
    """The classifier and layer4 are not used: a file without them still loads."""
    state_dict = {k: v for k, v in random_state_dict("resnet18").items() if not k.startswith(("fc.", "layer4."))}
    path = saved(state_dict, tmp_path / "trunk.pth")
    assert_backbone_holds(build("timm:resnet18", [2, 3], backbone_weights=str(path), pretrained=True), state_dict)


@pytest.mark.parametrize("backbone, layers", [("timm:efficientnet_b0", [2, 3]), ("resnet18", ["layer2", "layer3"])])
def test_malicious_file_runs_no_code_and_is_one_line(tmp_path, backbone, layers):
    marker = tmp_path / "code_ran"
    buffer = io.BytesIO()
    torch.save({"conv_stem.weight": WritesMarker(marker)}, buffer)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    for attempt in (lambda: check_backbone(backbone, layers, str(path)),
                    lambda: build(backbone, layers, pretrained=True, backbone_weights=str(path))):
        with pytest.raises(UserError) as error:
            attempt()
        assert "refused" in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists(), "the crafted file ran code"


def test_missing_file_and_random_weights_with_a_file_are_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        check_backbone("timm:resnet18", [2, 3], str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="drop one of the two"):
        build("timm:resnet18", [2, 3], pretrained=False, backbone_weights=str(tmp_path / "absent.pth"))


# ---------------------------------------------------------------- timm's pretrained weights from the caches


def place_in_hf_cache(tmp_path, repository: str, state_dict: dict, revision: str = "0123abcd"):
    """The layout huggingface_hub writes: refs/main names the snapshot that holds the file."""
    folder = tmp_path / "hf_cache" / f"models--{repository.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    return saved(state_dict, folder / "snapshots" / revision / "model.safetensors")


def test_pretrained_weights_come_from_the_hugging_face_cache(tmp_path):
    state_dict = random_state_dict("resnet18")
    path = place_in_hf_cache(tmp_path, "timm/resnet18.a1_in1k", state_dict)
    model = build("timm:resnet18", [2, 3], pretrained=True)
    assert_backbone_holds(model, state_dict)
    source = model.feature_extractor.weights_source
    assert source["kind"] == "timm" and source["name"] == "resnet18.a1_in1k"
    assert source["path"] == str(path) and source["sha256"] == file_digest(path)
    assert backbone_weights_tag(model) == "timm:a1_in1k" and model.uses_pretrained_backbone


def test_pretrained_tag_in_the_name_picks_its_repository(tmp_path):
    state_dict = random_state_dict("resnet18")
    place_in_hf_cache(tmp_path, "timm/resnet18.tv_in1k", state_dict)
    assert_backbone_holds(build("timm:resnet18.tv_in1k", [2, 3], pretrained=True), state_dict)


def test_weights_published_by_url_are_found_in_torch_hub(tmp_path):
    state_dict = random_state_dict("resnet18")
    url = timm.models.get_pretrained_cfg("resnet18").url
    (tmp_path / "torch_home" / "hub" / "checkpoints").mkdir(parents=True)
    path = saved(state_dict, tmp_path / "torch_home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1])
    model = build("timm:resnet18", [2, 3], pretrained=True)
    assert_backbone_holds(model, state_dict)
    assert model.feature_extractor.weights_source["path"] == str(path)


def test_weights_not_in_the_cache_name_the_file_and_where_it_goes(tmp_path):
    with pytest.raises(UserError) as error:
        build("timm:efficientnet_b0", [2, 3], pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    expected = tmp_path / "hf_cache" / "models--timm--efficientnet_b0.ra_in1k" / "snapshots" / "<revision>"
    assert f"{expected}/model.safetensors" in message
    assert "hf download timm/efficientnet_b0.ra_in1k model.safetensors" in message
    assert "pretrained=false" in message and "backbone_weights" in message
