"""The fast path on timm backbones: BatchNorms found after a convolution by a traced forward are
folded (timm's BatchNormAct2d included), the rest runs as it is and `folding_note` says so, and the
outputs equal the eager model's within 1e-4; a fold the trace cannot vouch for is caught by the
check and the backbone runs unfolded. Random weights with randomised BatchNorm statistics, 64 px."""

import functools

import pytest
import torch
from torch import nn

from model.backbone_folding import fold_traced_batchnorms, traced_conv_batchnorm_pairs
from model.fast_inference import build_fast_model
from model.supersimplenet import SuperSimpleNet
from tests.model.random_models import images, max_differences, randomise_batchnorm

PARITY = 1e-4  # the bound, fp32


@functools.lru_cache(maxsize=None)
def timm_model(backbone: str, layers: tuple, image_size: tuple[int, int], adapt_cls_features: bool) -> SuperSimpleNet:
    torch.manual_seed(0)
    model = SuperSimpleNet(image_size, backbone=backbone, layers=list(layers), pretrained=False,
                           adapt_cls_features=adapt_cls_features)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # timm's BatchNormAct2d too
            randomise_batchnorm(module, generator)
    with torch.no_grad():
        model.feature_adaptor.projection.bias.uniform_(-0.2, 0.2)
    return model.eval()


def batchnorm_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


@pytest.mark.parametrize("backbone, layers, image_size, adapt_cls_features", [
    ("timm:resnet18", (2, 3), (64, 64), True),
    ("timm:efficientnet_b0", (2, 3), (64, 96), False),
    ("timm:efficientnet_b0", (3, 2), (64, 64), True),
], ids=["resnet18-icpr", "efficientnet_b0-journal-rectangular", "efficientnet_b0-reversed-layers"])
def test_fast_path_folds_every_batchnorm_and_equals_eager(backbone, layers, image_size, adapt_cls_features):
    model = timm_model(backbone, layers, image_size, adapt_cls_features)
    fast = build_fast_model(model, "cpu", torch.float32)
    assert fast.folding_note == ""  # a CNN with conv + BatchNorm throughout folds completely
    assert batchnorm_count(model.feature_extractor.backbone) > 10 and batchnorm_count(fast.stages) == 0
    inputs = images(2, image_size, seed=3)
    with torch.no_grad():
        expected = model(inputs)
    actual = fast(inputs)
    assert expected[0].std() > 1e-3 and expected[1].abs().min() > 0.05  # non-trivial: the comparison means something
    assert max(max_differences(actual, expected)) < PARITY


def test_layernorm_backbone_runs_unfolded_norms_and_says_so():
    model = timm_model("timm:convnext_atto", (1, 2), (64, 64), False)
    fast = build_fast_model(model, "cpu", torch.float32)
    assert fast.folding_note.startswith("timm:convnext_atto: 0 BatchNorms folded")
    assert "LayerNorm" in fast.folding_note and "run as they are" in fast.folding_note
    inputs = images(2, (64, 64), seed=4)
    with torch.no_grad():
        expected = model(inputs)
    assert max(max_differences(fast(inputs), expected)) < PARITY


class ReadsConvOutputTwice(nn.Module):
    """bn(conv(x)) + conv(x): the conv output is also read outside any module (hooks cannot see it),
    so folding the BatchNorm into the conv would change the second term."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        randomise_batchnorm(self.bn, torch.Generator().manual_seed(2))

    def forward(self, x):
        y = self.conv(x)
        return [self.bn(y) + y]


class Plain(nn.Module):
    """conv -> BatchNorm -> relu, and a BatchNorm after a pooling (not foldable)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pool, self.bn_after_pool = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2), \
            nn.BatchNorm2d(4)
        for bn in (self.bn, self.bn_after_pool):
            randomise_batchnorm(bn, torch.Generator().manual_seed(3))

    def forward(self, x):
        return [self.bn_after_pool(self.pool(torch.relu(self.bn(self.conv(x)))))]


def test_trace_pairs_only_a_batchnorm_that_reads_a_convolution_output():
    module = Plain().eval()
    probe = images(1, (16, 16))
    assert traced_conv_batchnorm_pairs(module, probe) == [("conv", "bn")]
    folded, report = fold_traced_batchnorms(module, probe)
    assert report.folded == 1 and report.left == {"BatchNorm2d": 1} and not report.complete
    assert isinstance(folded.bn, nn.Identity) and isinstance(module.bn, nn.BatchNorm2d)  # original untouched
    with torch.no_grad():
        assert (folded(probe)[0] - module(probe)[0]).abs().max() < 1e-5


def test_a_fold_that_changes_the_outputs_is_caught_and_the_backbone_runs_unfolded():
    module = ReadsConvOutputTwice().eval()
    probe = images(1, (16, 16))
    assert traced_conv_batchnorm_pairs(module, probe) == [("conv", "bn")]  # the trace alone would fold it
    result, report = fold_traced_batchnorms(module, probe)
    assert report.unfolded_reason and "unfolded" in report.describe()
    assert isinstance(result.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(result(probe)[0], module(probe)[0])
