"""Shared fixtures: a tiny random-weight model config for fast CPU tests."""

import pytest
import torch

from common.config import default_config


@pytest.fixture(autouse=True)
def _one_thread():
    """The tests' tensors are tiny: one thread avoids OpenMP barriers that make small ops
    10-80x slower when the 2 cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_config() -> dict:
    """resnet18 with random weights at 64x64: 384 channels, 16x16 features, runs in milliseconds."""
    config = default_config("mvtec")
    config.update(backbone="resnet18", pretrained=False, image_size=[64, 64], batch=4, epochs=2, num_workers=0)
    return config
