"""FeatureExtractor against a straightforward re-implementation from torchvision's layers (docs/method.md, "Feature extractor")."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from common.errors import UserError
from model.backbone import backbone_weights
from model.feature_extractor import FeatureExtractor




@pytest.fixture(scope="module")
def extractor_and_reference():
    """A random-weight resnet18 extractor at 32x48 and a torchvision resnet18 holding the same weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    extractor = FeatureExtractor("resnet18", ["layer2", "layer3"], 3, (32, 48), pretrained=False)
    torch.set_num_threads(threads)
    reference = torchvision.models.resnet18(weights=None)
    result = reference.load_state_dict(extractor.backbone.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith(("layer4.", "fc.")) for k in result.missing_keys)
    reference.eval()
    # make BatchNorm non-trivial, so a backbone in training mode would give other features
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        extractor.backbone.load_state_dict(
            {k: v for k, v in reference.state_dict().items() if not k.startswith(("layer4.", "fc."))}
        )
    return extractor, reference


def reference_features(resnet: torch.nn.Module, images: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    with torch.no_grad():
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(images))))
        layer2 = resnet.layer2(resnet.layer1(x))
        layer3 = resnet.layer3(layer2)
    size = (layer2.shape[-2] * 2, layer2.shape[-1] * 2)
    up2 = F.interpolate(layer2, size=size, mode="bilinear", align_corners=align_corners)
    up3 = F.interpolate(layer3, size=size, mode="bilinear", align_corners=align_corners)
    stacked = torch.cat([up2, up3], dim=1)
    return F.avg_pool2d(stacked, kernel_size=3, stride=1, padding=1, count_include_pad=True)


def test_matches_straightforward_reimplementation(extractor_and_reference):
    extractor, reference = extractor_and_reference
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    features = extractor(images)
    expected = reference_features(reference, images)
    assert features.shape == (2, 128 + 256, 8, 12)
    assert torch.allclose(features, expected, rtol=1e-5, atol=1e-5)
    # the check is sensitive to the resize convention
    other = reference_features(reference, images, align_corners=False)
    assert not torch.allclose(features, other, rtol=1e-3, atol=1e-3)


def test_concatenation_order_and_border_average(extractor_and_reference):
    extractor, reference = extractor_and_reference
    images = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    features = extractor(images)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        layer2 = reference.layer2(reference.layer1(x))
    # layer2 first: channels 0..127 are the upscaled layer2 averaged over 3x3
    up2 = F.interpolate(layer2, size=(8, 12), mode="bilinear", align_corners=True)
    # padding counted in the average: the corner is the sum of its 2x2 neighbourhood over 9
    corner = up2[0, :, :2, :2].sum(dim=(1, 2)) / 9
    assert torch.allclose(features[0, :128, 0, 0], corner, rtol=1e-5, atol=1e-6)
    inner = up2[0, :, 3:6, 4:7].mean(dim=(1, 2))
    assert torch.allclose(features[0, :128, 4, 5], inner, rtol=1e-5, atol=1e-6)
    # align_corners=True keeps the layer's corner values at the map corners
    assert torch.allclose(up2[0, :, 0, 0], layer2[0, :, 0, 0])


def test_feature_dim_and_rectangular_sizes():
    torch.manual_seed(0)
    extractor = FeatureExtractor("resnet18", ["layer2", "layer3"], 3, (640, 232), pretrained=False)
    # 640x232: conv1 320x116, maxpool 160x58, layer2 80x29 -> features at twice layer2
    assert extractor.feature_dim == (384, 160, 58)


def test_backbone_frozen_eval_and_without_grad(extractor_and_reference):
    extractor, _ = extractor_and_reference
    extractor.train()
    assert extractor.training
    assert all(not m.training for m in extractor.backbone.modules())
    assert all(not p.requires_grad for p in extractor.parameters())
    images = torch.randn(2, 3, 32, 48, requires_grad=True)
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    features = extractor(images)
    assert not features.requires_grad
    after = extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    extractor.eval()


def test_backbone_drops_unused_stages(extractor_and_reference):
    extractor, _ = extractor_and_reference
    assert list(extractor.backbone.keys()) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]


def test_published_weights_are_imagenet_v1():
    weights = backbone_weights("wide_resnet50_2")
    assert weights is torchvision.models.Wide_ResNet50_2_Weights.IMAGENET1K_V1
    assert weights.name == "IMAGENET1K_V1"


def test_unsupported_backbone_and_layer_are_user_errors():
    with pytest.raises(UserError, match="vgg16"):
        FeatureExtractor("vgg16", ["layer2", "layer3"], 3, (64, 64), pretrained=False)
    with pytest.raises(UserError, match="layer9"):
        FeatureExtractor("resnet18", ["layer2", "layer9"], 3, (64, 64), pretrained=False)
