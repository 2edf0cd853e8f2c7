"""Tiny random-weight models and inputs shared by the fast-path tests (not a test module)."""

import functools

import torch

from model.supersimplenet import SuperSimpleNet


def randomise_batchnorm(module: torch.nn.modules.batchnorm._BatchNorm, generator: torch.Generator) -> None:
    """Non-trivial statistics and affine parameters (a fresh BatchNorm is the identity)."""
    size = module.num_features
    with torch.no_grad():
        module.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
        module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
        module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
        module.bias.copy_(torch.rand(size, generator=generator) * 0.6 - 0.3)


@functools.lru_cache(maxsize=None)
def make_model(image_size: tuple[int, int], adapt_cls_features: bool = True) -> SuperSimpleNet:
    """A tiny random eval model (resnet18, as the tiny_config fixture), shared by tests that never modify it."""
    torch.manual_seed(0)
    model = SuperSimpleNet(image_size, backbone="resnet18", pretrained=False, adapt_cls_features=adapt_cls_features)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            randomise_batchnorm(module, generator)
    with torch.no_grad():  # non-zero biases everywhere, so every bias path is exercised
        model.feature_adaptor.projection.bias.uniform_(-0.2, 0.2)
        model.discriminator.dec_head[0].bias.uniform_(-0.2, 0.2)
    return model.eval()


def images(batch: int, image_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(seed))


def max_differences(outputs, expected) -> tuple[float, ...]:
    """Largest absolute difference of each pair of tensors."""
    return tuple((a.float() - b.float()).abs().max().item() for a, b in zip(outputs, expected))
