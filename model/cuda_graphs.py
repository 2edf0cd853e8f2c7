"""GPU plumbing of the fast path: CUDA graph capture and replay per input shape, and pinned
host memory for asynchronous copies (docs/method.md, "Speed protocol"). No model algebra here."""

from typing import Callable

import torch
from torch import Tensor

Outputs = tuple[Tensor, Tensor]  # (anomaly map B x 1 x H x W, score logits B)


def pinned(images: Tensor) -> Tensor:
    """Host images in page-locked memory, which lets a host-to-device copy run asynchronously."""
    return images if images.is_pinned() else images.pin_memory()


def copy_to_host(outputs: Outputs) -> Outputs:
    """Device outputs -> fresh pinned host tensors (non-blocking copies, then one sync).

    torch's caching host allocator recycles pinned blocks, so fresh tensors cost no cudaHostAlloc.
    """
    host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outputs)
    for target, source in zip(host, outputs):
        target.copy_(source, non_blocking=True)
    torch.cuda.current_stream(outputs[0].device).synchronize()
    return host


class CudaGraphs:
    """One captured CUDA graph per input shape: images (host or device) -> static device outputs.

    A replay launches the whole forward at once, so no Python or launch overhead per kernel.
    The returned tensors are overwritten by the next replay of the same shape.
    """

    WARMUP_RUNS = 3  # cuDNN/cuBLAS pick algorithms and torch.compile compiles before capture

    def __init__(self, compute: Callable[[Tensor], Outputs], device: torch.device):
        self.compute = compute
        self.device = device
        self.captured: dict[tuple, tuple[Tensor, torch.cuda.CUDAGraph, Outputs]] = {}

    def replay(self, images: Tensor) -> Outputs:
        key = (tuple(images.shape), images.dtype)
        if key not in self.captured:
            self.captured[key] = self._capture(images)
        static_input, graph, static_outputs = self.captured[key]
        static_input.copy_(images, non_blocking=True)
        graph.replay()
        return static_outputs

    def _capture(self, images: Tensor) -> tuple[Tensor, torch.cuda.CUDAGraph, Outputs]:
        static_input = torch.empty(images.shape, dtype=images.dtype, device=self.device)
        static_input.copy_(images)
        side_stream = torch.cuda.Stream(self.device)
        side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side_stream):
            for _ in range(self.WARMUP_RUNS):
                self.compute(static_input)
        torch.cuda.current_stream(self.device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = self.compute(static_input)
        return static_input, graph, static_outputs
