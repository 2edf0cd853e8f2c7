"""2-D Perlin noise (docs/method.md, "Anomaly generator"): shape, range, lattice zeros, determinism, continuity, the fade curve,
and a per-pixel re-implementation of gradient noise from the same random gradients."""

import math

import pytest
import torch

from common.perlin import fade, rand_perlin_2d




def naive_perlin(shape, res, angles):
    """Per-pixel gradient noise: dot products with the 4 corner gradients, quintic fade, lerp, x sqrt(2)."""
    height, width = shape
    cells_y, cells_x = res
    cell_h, cell_w = height // cells_y, width // cells_x

    def smooth(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    out = torch.zeros(height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            cy, cx = y // cell_h, x // cell_w
            u, v = (y % cell_h) / cell_h, (x % cell_w) / cell_w

            def dot(dy, dx):
                angle = float(angles[cy + dy, cx + dx])
                return math.cos(angle) * (u - dy) + math.sin(angle) * (v - dx)

            su, sv = smooth(u), smooth(v)
            top = dot(0, 0) + su * (dot(1, 0) - dot(0, 0))  # interpolate along rows first
            bottom = dot(0, 1) + su * (dot(1, 1) - dot(0, 1))
            out[y, x] = math.sqrt(2) * (top + sv * (bottom - top))
    return out


@pytest.mark.parametrize("shape, res", [((16, 16), (2, 4)), ((8, 32), (1, 8)), ((32, 16), (4, 2))])
def test_matches_per_pixel_gradient_noise(shape, res):
    torch.manual_seed(12)
    noise = rand_perlin_2d(shape, res)
    torch.manual_seed(12)
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1)  # one uniform angle per lattice point
    expected = naive_perlin(shape, res, angles)
    assert noise.shape == shape
    assert noise.dtype == torch.float32
    assert torch.allclose(noise.double(), expected, atol=1e-5)


@pytest.mark.parametrize("res", [(1, 1), (2, 2), (4, 8), (32, 32)])
def test_shape_range_and_lattice_zeros(res):
    torch.manual_seed(0)
    noise = rand_perlin_2d((64, 64), res)
    assert noise.shape == (64, 64)
    assert torch.isfinite(noise).all()
    assert noise.abs().max().item() <= math.sqrt(2)
    # gradient noise is exactly zero on the lattice points
    lattice = noise[:: 64 // res[0], :: 64 // res[1]]
    assert torch.equal(lattice, torch.zeros_like(lattice))
    assert noise.abs().max().item() > 0.05


def test_range_is_about_unit_after_sqrt2_scaling():
    values = []
    for seed in range(20):
        torch.manual_seed(seed)
        values.append(rand_perlin_2d((64, 64), (4, 4)))
    stacked = torch.stack(values)
    assert stacked.abs().max().item() <= 1.0 + 1e-4  # sqrt(2) x the 2-D gradient-noise bound sqrt(1/2)
    assert stacked.abs().max().item() > 0.75  # the sqrt(2) scaling is applied (unscaled stays below 0.71)


def test_deterministic_under_manual_seed():
    torch.manual_seed(5)
    first = rand_perlin_2d((32, 32), (4, 4))
    torch.manual_seed(5)
    second = rand_perlin_2d((32, 32), (4, 4))
    torch.manual_seed(6)
    third = rand_perlin_2d((32, 32), (4, 4))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_continuity():
    torch.manual_seed(3)
    noise = rand_perlin_2d((64, 64), (4, 4))  # 16-pixel cells
    step_y = (noise[1:] - noise[:-1]).abs().max().item()
    step_x = (noise[:, 1:] - noise[:, :-1]).abs().max().item()
    assert step_y < 0.25 and step_x < 0.25
    assert noise.max() - noise.min() > 0.5  # smooth but not flat


def test_fade_values():
    t = torch.tensor([0.0, 1.0, 0.5, 0.25])
    assert fade(t).tolist() == pytest.approx([0.0, 1.0, 0.5, 0.103515625], abs=1e-7)
    # zero slope at both ends (6t^5 - 15t^4 + 10t^3)
    ends = torch.tensor([0.0, 1.0], requires_grad=True)
    fade(ends).sum().backward()
    assert ends.grad.tolist() == [0.0, 0.0]
