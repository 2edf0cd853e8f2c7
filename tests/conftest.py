"""Shared fixtures: a tiny random-weight model config for fast CPU tests."""

import pytest
import torch

from common.config import default_config


# The tests' tensors are tiny: one thread avoids OpenMP barriers that make small ops 10-80x
# slower on shared cores, and one fixed setting keeps float reductions identical between the
# runs that a test compares.
torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> dict:
    """resnet18 with random weights at 64x64: 384 channels, 16x16 features, runs in milliseconds."""
    config = default_config("mvtec", "icpr")
    config.update(backbone="resnet18", pretrained=False, image_size=[64, 64], batch=4, epochs=2, num_workers=0)
    return config
