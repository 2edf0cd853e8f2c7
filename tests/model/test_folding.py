"""model/folding.py identity by identity: each test names the equation it checks, on float64
(exact up to rounding) unless the folded tensor is stored in float32."""

import copy

import pytest
import torch
import torch.nn.functional as F

from model.feature_extractor import run_stages
from model.supersimplenet import AnomalyMapGenerator, gaussian_kernel_2d
from model.folding import (
    anomaly_map_matrices,
    batchnorm_scale_shift,
    feature_resize_maps,
    fold_backbone_batchnorms,
    fold_conv_batchnorm,
    fold_dec_head,
    fold_head,
    fold_seg_head,
    shifted_stack,
)
from tests.model.random_models import images, make_model, randomise_batchnorm

# measured: up to 9e-16 for the 1-D maps and the BatchNorm, 7e-14 for the head folds
FLOAT64_TOLERANCE = 1e-14
HEAD_FLOAT64_TOLERANCE = 3e-13


def seeded(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def random_batchnorm(channels: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels)
    randomise_batchnorm(bn, torch.Generator().manual_seed(5))
    return bn.eval()


def test_batchnorm_is_scale_times_x_plus_shift():
    """bn(x) == scale[c] * x + shift[c] for an eval BatchNorm with non-trivial statistics."""
    bn = random_batchnorm(6).double()
    x = seeded(2, 6, 4, 5)
    scale, shift = batchnorm_scale_shift(bn)
    assert scale.shape == shift.shape == (6,)
    with torch.no_grad():
        expected = bn(x)
    assert (scale.view(1, -1, 1, 1) * x + shift.view(1, -1, 1, 1) - expected).abs().max() < FLOAT64_TOLERANCE


@pytest.mark.parametrize("bias", [True, False], ids=["conv-bias", "no-conv-bias"])
def test_conv_then_batchnorm_equals_folded_conv(bias):
    """bn(conv(x)) == folded_conv(x): W' = scale * W, b' = scale * b + shift (stored float32)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, kernel_size=3, padding=1, bias=bias)
    bn = random_batchnorm(6)
    folded = fold_conv_batchnorm(conv, bn)
    assert folded.weight.dtype == torch.float32 and folded.bias is not None
    x = seeded(2, 4, 7, 5, dtype=torch.float32)
    with torch.no_grad():
        expected = bn(conv(x))
        difference = (folded(x) - expected).abs().max().item()
    assert difference < 1e-6 * expected.abs().max().item()  # measured 2.5e-7 relative


def test_folded_backbone_gives_the_feature_extractors_layers_without_batchnorm():
    """run_stages(folded stages, x) == FeatureExtractor.backbone_features(x) for every chosen layer;
    no BatchNorm is left in the copy and the original keeps its own."""
    extractor = make_model((64, 64)).feature_extractor
    folded = fold_backbone_batchnorms(extractor.backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.backbone.modules())
    inputs = images(2, (64, 64))
    with torch.no_grad():
        expected = extractor.backbone_features(inputs)
        actual = run_stages(folded, inputs, extractor.layers)
    for a, b in zip(actual, expected):
        assert (a - b).abs().max().item() < 5e-6 * b.abs().max().item()  # measured 1.4e-6 relative


def test_batchnorm_not_after_a_conv_is_refused():
    stages = torch.nn.ModuleDict({"relu": torch.nn.ReLU(), "bn": torch.nn.BatchNorm2d(3)})
    with pytest.raises(ValueError, match="cannot fold"):
        fold_backbone_batchnorms(stages)


@pytest.mark.parametrize("layer_size, feature_size", [((7, 5), (14, 10)), ((4, 3), (14, 10))], ids=["x2", "x3.5"])
def test_upsample_then_pool_equals_height_matrix_x_width_matrix(layer_size, feature_size):
    """avg_pool3x3(upsample(x)) == H @ x @ W^T, with H = P_fh @ R(h -> fh), W = P_fw @ R(w -> fw)."""
    x = seeded(1, 1, *layer_size, seed=4)
    upsampled = F.interpolate(x, size=feature_size, mode="bilinear", align_corners=True)
    expected = F.avg_pool2d(upsampled, 3, stride=1, padding=1, count_include_pad=True)
    heights, widths = feature_resize_maps(layer_size, feature_size, patch_size=3)
    assert heights.shape == (feature_size[0], layer_size[0]) and widths.shape == (feature_size[1], layer_size[1])
    assert (heights @ x[0, 0] @ widths.T - expected[0, 0]).abs().max() < FLOAT64_TOLERANCE


def test_zero_padded_conv_after_a_map_equals_shifted_stack_times_taps():
    """conv1d_zero_pad(M @ v, t) == shifted_stack(M) @ (v (x) t), (v (x) t)[(i, k)] = v[i] * t[k]."""
    matrix, v, taps = seeded(9, 4, seed=1), seeded(4, seed=2), seeded(5, seed=3)
    expected = F.conv1d((matrix @ v).view(1, 1, -1), taps.view(1, 1, -1), padding=2).view(-1)
    stacked = shifted_stack(matrix, range(-2, 3))
    assert stacked.shape == (9, 4 * 5)
    assert (stacked @ torch.outer(v, taps).reshape(-1) - expected).abs().max() < FLOAT64_TOLERANCE


def test_blur_of_upscaled_map_equals_height_matrix_x_map_x_width_matrix():
    """blur25x25(reflect_pad(upscale(map))) == M_h @ map @ M_w^T at a rectangular size.

    The generator keeps its Gaussian in float32, which outer(k, k) matches to float32 rounding only.
    """
    generator = AnomalyMapGenerator(output_size=(96, 64)).double()
    low_res = seeded(2, 1, 24, 16, seed=3)
    heights, widths = anomaly_map_matrices(generator, (24, 16))
    assert heights.shape == (96, 24) and widths.shape == (64, 16)
    assert (heights @ low_res[:, 0] @ widths.T - generator(low_res)[:, 0]).abs().max() < 1e-6  # measured 2.4e-7


def test_non_separable_blur_is_refused():
    generator = AnomalyMapGenerator(output_size=(32, 32))
    generator.kernel = gaussian_kernel_2d(4.0)[None, None] + 0.01 * torch.eye(25)
    with pytest.raises(ValueError, match="separable"):
        anomaly_map_matrices(generator, (8, 8))


def float64_model(adapt_cls_features: bool):
    return copy.deepcopy(make_model((64, 64), adapt_cls_features)).double()


def test_seg_head_with_adaptor_equals_folded_weight_times_features_plus_bias():
    """bn1(conv1(A F + a)) == G F + g per position, and seg(adaptor(F)) == w2 . leaky_relu(G F + g)."""
    model = float64_model(adapt_cls_features=True)
    features = seeded(2, 384, 16, 16, seed=6)
    conv1, bn1, relu, _ = model.discriminator.seg
    folded, bias, last = fold_seg_head(model)
    assert folded.shape == (1024, 384) and bias.shape == last.shape == (1024,)
    with torch.no_grad():
        adapted = model.feature_adaptor(features)
        expected_hidden = bn1(conv1(adapted))
        expected_map = model.discriminator.seg(adapted)
    hidden = torch.einsum("oc,bcyx->boyx", folded, features) + bias.view(1, -1, 1, 1)
    assert (hidden - expected_hidden).abs().max() < HEAD_FLOAT64_TOLERANCE
    anomaly_map = torch.einsum("o,boyx->byx", last, F.leaky_relu(hidden, relu.negative_slope))
    assert (anomaly_map - expected_map[:, 0]).abs().max() < HEAD_FLOAT64_TOLERANCE


@pytest.mark.parametrize("adapt_cls_features", [True, False], ids=["icpr", "journal"])
def test_dec_head_equals_folded_conv_of_features_plus_map_term_plus_bias_map(adapt_cls_features):
    """bn2(conv5x5([cls; map])) == K_F * F + K_m * map + beta, cls = A F + a (ICPR) or F (journal)."""
    model = float64_model(adapt_cls_features)
    features, anomaly_map = seeded(2, 384, 16, 16, seed=7), seeded(2, 1, 16, 16, seed=8)
    conv, bn, _ = model.discriminator.dec_head
    cls_weight, map_weight, bias_map = fold_dec_head(model)
    assert cls_weight.shape == (128, 384, 5, 5) and map_weight.shape == (128, 1, 5, 5)
    assert bias_map.shape == (16, 16, 128)
    with torch.no_grad():
        cls = model.feature_adaptor(features) if adapt_cls_features else features
        expected = bn(conv(torch.cat((cls, anomaly_map), dim=1)))
    actual = (
        F.conv2d(features, cls_weight, padding=2)
        + F.conv2d(anomaly_map, map_weight, padding=2)
        + bias_map.permute(2, 0, 1).unsqueeze(0)
    )
    assert (actual - expected).abs().max() < HEAD_FLOAT64_TOLERANCE


def test_per_layer_reductions_then_resize_equal_the_folded_head_on_features():
    """G F + g == sum_l H_l @ (X_l G_l^T) @ W_l^T + g and
    K_F * F == sum_l H~_l @ (X_l K_l) @ W~_l^T (H~, W~ = shifted_stack of H, W over the 5 taps),
    with F = cat_l avg_pool(upsample(X_l)) as the feature extractor builds it."""
    model = float64_model(adapt_cls_features=True)
    layer_sizes = [(128, 8, 8), (256, 4, 4)]
    layers = [seeded(1, *size, seed=10 + index)[0] for index, size in enumerate(layer_sizes)]
    head = fold_head(model, layer_sizes)
    features = torch.cat(
        [F.interpolate(x[None], size=(16, 16), mode="bilinear", align_corners=True) for x in layers], dim=1
    )
    features = F.avg_pool2d(features, 3, stride=1, padding=1, count_include_pad=True)[0]
    seg_weight, seg_bias, _ = fold_seg_head(model)
    dec_weight, _, _ = fold_dec_head(model)

    expected_seg = torch.einsum("oc,cyx->yxo", seg_weight, features) + seg_bias
    expected_dec = F.conv2d(features[None], dec_weight, padding=2)[0].permute(1, 2, 0)
    seg, dec, row = seg_bias.clone(), 0, 0
    for index, (x, (_, height, width)) in enumerate(zip(layers, layer_sizes)):
        reduced = torch.einsum("chw,co->hwo", x, head.seg_reduce[index])  # X_l G_l^T
        heights = head.seg_height[:, row : row + height]
        seg = seg + torch.einsum("ih,hwo,jw->ijo", heights, reduced, head.seg_width[index])
        # X_l K_l with columns (kx, out, ky); the stacked maps' columns are (position, tap)
        taps = torch.einsum("chw,cn->hwn", x, head.dec_reduce[index]).reshape(height, width, 5, 128, 5)
        heights = head.dec_height[:, row * 5 : (row + height) * 5].reshape(16, height, 5)
        widths = head.dec_width[index].reshape(16, width, 5)
        dec = dec + torch.einsum("ihq,hwpoq,jwp->ijo", heights, taps, widths)
        row += height
    assert (seg - expected_seg).abs().max() < HEAD_FLOAT64_TOLERANCE
    assert (dec - expected_dec).abs().max() < HEAD_FLOAT64_TOLERANCE


def test_head_folding_refuses_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        fold_head(make_model((64, 64)), [(128, 8, 8), (128, 4, 4)])
