"""The fast model against the eager eval model (model/fast_inference.py, model/cuda_graphs.py).

The algebra behind it is checked identity by identity in test_folding.py.
"""

import copy

import pytest
import torch

from model.fast_inference import build_fast_model
from tests.model.random_models import images, make_model, max_differences

# CPU float32, measured: up to 1.4e-5 (maps up to 6.5, scores up to 10 in size)
FP32_TOLERANCE = 5e-5
CUDA_FP32_TOLERANCE = 1e-4  # cuDNN and cuBLAS sum in other orders than the CPU reference
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("adapt_cls_features", [True, False], ids=["icpr", "journal"])
@pytest.mark.parametrize("image_size", [(64, 64), (96, 64)], ids=["64x64", "96x64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_model_equals_eager_eval_model(adapt_cls_features, image_size, batch):
    """fast model(x) == eager eval model(x) in float32, on random weights at 64x64 and a rectangular size."""
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


# measured: 4.1e-3 (fp16) and 3.8e-2 (bf16)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-2), (torch.bfloat16, 8e-2)], ids=["fp16", "bf16"])
def test_half_precision_fast_model_is_close_to_eager_fp32(dtype, tolerance):
    """fast model in fp16/bf16 (float32 tail) ~= eager eval model in float32, within half-precision rounding."""
    model = make_model((64, 64))
    inputs = images(2, (64, 64))
    with torch.no_grad():
        expected = model(inputs)
    outputs = build_fast_model(model, "cpu", dtype)(inputs)
    assert all(t.dtype == torch.float32 for t in outputs)  # the tail runs in float32
    assert max(max_differences(outputs, expected)) < tolerance


def test_infer_from_host_equals_forward_on_cpu():
    """infer_from_host(x) == forward(x) exactly on the CPU (no copies to make)."""
    model = make_model((64, 64))
    fast = build_fast_model(model, "cpu", torch.float32)
    inputs = images(2, (64, 64))
    assert max(max_differences(fast.infer_from_host(inputs), fast(inputs))) == 0.0


def test_building_leaves_the_model_unchanged():
    """state_dict after build_fast_model == state_dict before (values and dtypes), BatchNorms kept."""
    model = make_model((64, 64))
    before = copy.deepcopy(model.state_dict())
    build_fast_model(model, "cpu", torch.float16)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) and after[key].dtype == before[key].dtype for key in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.feature_extractor.backbone.modules())


def test_bad_arguments_are_refused():
    model = make_model((64, 64))
    with pytest.raises(ValueError, match="CUDA"):
        build_fast_model(model, "cpu", torch.float32, cuda_graphs=True)
    with pytest.raises(ValueError, match="dtype"):
        build_fast_model(model, "cpu", torch.int8)


@needs_cuda
@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float32, CUDA_FP32_TOLERANCE), (torch.float16, 1e-2)], ids=["fp32", "fp16"]
)
def test_cuda_graph_replay_equals_eager_eval_model(dtype, tolerance, monkeypatch):
    """CUDA graph replay, from host and on device, == eager eval model (fp32 on the CPU) for batches 1 and 3."""
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
def test_cuda_graph_outputs_are_not_overwritten_by_the_next_replay():
    """outputs of replay 1 == their copy after replay 2 (returned tensors are not the static buffers)."""
    model = make_model((64, 64))
    fast = build_fast_model(model, "cuda", torch.float32, cuda_graphs=True)
    first = fast.infer_from_host(images(2, (64, 64), seed=1))
    kept = [t.clone() for t in first]
    second = fast.infer_from_host(images(2, (64, 64), seed=2))
    assert all(torch.equal(a, b) for a, b in zip(first, kept))
    assert not torch.equal(first[1], second[1])
