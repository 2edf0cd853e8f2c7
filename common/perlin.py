"""2-D Perlin (gradient) noise, drawn from torch's global RNG so a seeded run repeats exactly."""

import math

import torch
from torch import Tensor


def fade(t: Tensor) -> Tensor:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def rand_perlin_2d(shape: tuple[int, int], res: tuple[int, int]) -> Tensor:
    """Perlin noise of `shape` (h, w) with `res` (rows, cols) gradient cells; h, w multiples of res.

    Returns an h x w float32 tensor, scaled by sqrt(2) so its range is about [-1, 1].
    """
    height, width = shape
    cells_y, cells_x = res
    cell_h, cell_w = height // cells_y, width // cells_x
    # position of every pixel inside its cell, in [0, 1)
    grid = torch.stack(
        torch.meshgrid(
            torch.arange(0, cells_y, cells_y / height), torch.arange(0, cells_x, cells_x / width), indexing="ij"
        ),
        dim=-1,
    ) % 1
    angles = 2 * math.pi * torch.rand(cells_y + 1, cells_x + 1)
    gradients = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)

    def corner_gradients(rows: slice, cols: slice) -> Tensor:
        return gradients[rows, cols].repeat_interleave(cell_h, 0).repeat_interleave(cell_w, 1)

    def corner_dot(corner: Tensor, shift_y: float, shift_x: float) -> Tensor:
        offsets = torch.stack((grid[:height, :width, 0] + shift_y, grid[:height, :width, 1] + shift_x), dim=-1)
        return (offsets * corner[:height, :width]).sum(dim=-1)

    n00 = corner_dot(corner_gradients(slice(0, -1), slice(0, -1)), 0, 0)
    n10 = corner_dot(corner_gradients(slice(1, None), slice(0, -1)), -1, 0)
    n01 = corner_dot(corner_gradients(slice(0, -1), slice(1, None)), 0, -1)
    n11 = corner_dot(corner_gradients(slice(1, None), slice(1, None)), -1, -1)
    t = fade(grid[:height, :width])
    return math.sqrt(2) * torch.lerp(torch.lerp(n00, n10, t[..., 0]), torch.lerp(n01, n11, t[..., 0]), t[..., 1])
