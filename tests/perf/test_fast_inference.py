"""The fast inference path must give the eval model's outputs (perf/fast_inference.py)."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from common.config import default_config
from model.supersimplenet import AnomalyMapGenerator, SuperSimpleNet
from perf.fast_inference import (
    blur_resize_matrix,
    box_average_matrix,
    build_fast_model,
    fold_backbone_batchnorms,
    resize_matrix,
    run_stages,
    separable_kernel,
)

FP32_TOLERANCE = 1e-4
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def randomise_batchnorms(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (a fresh one is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(size, generator=generator) * 0.6 - 0.3)




@functools.lru_cache(maxsize=None)
def make_model(image_size: tuple[int, int], adapt_cls_features: bool = True) -> SuperSimpleNet:
    """A tiny random eval model (resnet18, as the tiny_config fixture), shared by tests that never modify it."""
    torch.manual_seed(0)
    config = default_config("mvtec")
    config.update(backbone="resnet18", pretrained=False, image_size=list(image_size))
    config["adapt_cls_features"] = adapt_cls_features
    model = SuperSimpleNet(image_size=image_size, config=config)
    randomise_batchnorms(model)
    with torch.no_grad():  # non-zero biases everywhere, so every bias path is exercised
        model.feature_adaptor.projection.bias.uniform_(-0.2, 0.2)
        model.discriminator.dec_head[0].bias.uniform_(-0.2, 0.2)
    return model.eval()


def images(batch: int, image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(seed))


def max_differences(outputs, expected) -> tuple[float, float]:
    return tuple((a.float() - b.float()).abs().max().item() for a, b in zip(outputs, expected))


@pytest.mark.parametrize("adapt_cls_features", [True, False], ids=["icpr", "journal"])
@pytest.mark.parametrize("image_size", [(64, 64), (96, 64)], ids=["64x64", "96x64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_fp32_matches_eager(adapt_cls_features, image_size, batch):
    model = make_model(image_size, adapt_cls_features)
    inputs = images(batch, image_size)
    with torch.no_grad():
        expected_map, expected_score = model(inputs)
    fast = build_fast_model(model, "cpu", torch.float32)
    anomaly_map, score = fast(inputs)

    assert anomaly_map.shape == (batch, 1, *image_size) and score.shape == (batch,)
    assert anomaly_map.dtype == torch.float32 and score.dtype == torch.float32
    # the check is meaningful: outputs vary over images and positions
    assert expected_map.std() > 1e-3 and (batch == 1 or expected_score.std() > 1e-3)
    map_difference, score_difference = max_differences((anomaly_map, score), (expected_map, expected_score))
    assert map_difference < FP32_TOLERANCE
    assert score_difference < FP32_TOLERANCE


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 8e-2)], ids=["fp16", "bf16"])
def test_fast_half_precision_close_to_eager_fp32(dtype, tolerance):
    model = make_model((64, 64))
    inputs = images(2, (64, 64))
    with torch.no_grad():
        expected = model(inputs)
    outputs = build_fast_model(model, "cpu", dtype)(inputs)
    assert all(t.dtype == torch.float32 for t in outputs)  # the tail runs in float32
    assert max(max_differences(outputs, expected)) < tolerance


def test_infer_from_host_is_forward_on_cpu():
    model = make_model((64, 64))
    fast = build_fast_model(model, "cpu", torch.float32)
    inputs = images(2, (64, 64))
    assert max(max_differences(fast.infer_from_host(inputs), fast(inputs))) == 0.0


def test_build_leaves_the_model_unchanged():
    model = make_model((64, 64))
    before = copy.deepcopy(model.state_dict())
    build_fast_model(model, "cpu", torch.float16)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) and after[key].dtype == before[key].dtype for key in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.feature_extractor.backbone.modules())


def test_folded_backbone_has_no_batchnorm_and_same_features():
    model = make_model((64, 64))
    folded = fold_backbone_batchnorms(model.feature_extractor.backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    inputs = images(2, (64, 64))
    with torch.no_grad():
        expected = model.feature_extractor.backbone_features(inputs)
        actual = run_stages(folded, inputs, model.feature_extractor.layers)
    for a, b in zip(actual, expected):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def test_separable_anomaly_map_matches_the_generator():
    generator = AnomalyMapGenerator(output_size=(96, 64))
    low_res = torch.randn(2, 1, 24, 16, generator=torch.Generator().manual_seed(3))
    kernel_1d = separable_kernel(generator.kernel)
    heights = blur_resize_matrix(24, 96, kernel_1d, generator.padding).float()
    widths = blur_resize_matrix(16, 64, kernel_1d, generator.padding).float()
    expected = generator(low_res)
    assert ((heights @ low_res[:, 0] @ widths.T) - expected[:, 0]).abs().max().item() < 1e-5


def test_resize_and_pool_matrices_match_torch():
    x = torch.randn(1, 1, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = F.avg_pool2d(F.interpolate(x, size=(14, 10), mode="bilinear", align_corners=True), 3, 1, 1)
    heights = box_average_matrix(14, 3) @ resize_matrix(7, 14, align_corners=True)
    widths = box_average_matrix(10, 3) @ resize_matrix(5, 10, align_corners=True)
    assert torch.allclose(heights @ x[0, 0] @ widths.T, expected[0, 0], atol=1e-12)


def test_bad_arguments_are_refused():
    model = make_model((64, 64))
    with pytest.raises(ValueError, match="CUDA"):
        build_fast_model(model, "cpu", torch.float32, cuda_graphs=True)
    with pytest.raises(ValueError, match="dtype"):
        build_fast_model(model, "cpu", torch.int8)


@needs_cuda
@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float32, FP32_TOLERANCE), (torch.float16, 1e-2)], ids=["fp32", "fp16"]
)
def test_cuda_graphs_match_eager_fp32(dtype, tolerance, monkeypatch):
    model = make_model((96, 64))
    # TF32 would round fp32 convolutions to 10 mantissa bits
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fast = build_fast_model(model, "cuda", dtype, cuda_graphs=True)
    for batch in (1, 3):
        inputs = images(batch, (96, 64), seed=batch)
        with torch.no_grad():
            expected = model(inputs)
        from_host = fast.infer_from_host(inputs.to(dtype))
        assert from_host[0].device.type == "cpu"
        assert max(max_differences(from_host, expected)) < tolerance
        on_device = fast(inputs.cuda())
        assert max(max_differences([t.cpu() for t in on_device], expected)) < tolerance


@needs_cuda
def test_cuda_graph_outputs_are_not_overwritten():
    model = make_model((64, 64))
    fast = build_fast_model(model, "cuda", torch.float32, cuda_graphs=True)
    first = fast.infer_from_host(images(2, (64, 64), seed=1))
    kept = [t.clone() for t in first]
    second = fast.infer_from_host(images(2, (64, 64), seed=2))
    assert all(torch.equal(a, b) for a, b in zip(first, kept))
    assert not torch.equal(first[1], second[1])
