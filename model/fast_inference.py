"""Fast inference for SuperSimpleNet: the eval model's outputs with far less work
(docs/method.md, "Speed protocol").

`build_fast_model(model, device, dtype)` turns a trained (or random) `SuperSimpleNet` into a
`FastSuperSimpleNet`: images B x 3 x H x W -> (anomaly_map B x 1 x H x W, score_logits B),
both float32, equal to the eval model's outputs up to rounding.

- The algebra lives in model/folding.py: BatchNorms folded into the backbone convs, the head
  reduced to channels at each backbone layer's own resolution and then resized with separable
  matrices, the anomaly map as M_h @ map @ M_w^T. This module only runs it.
- The backbone runs channels-last (the layout cuDNN and oneDNN prefer), through the same
  layer walk as the feature extractor (`model.feature_extractor.backbone_layers`). A timm
  backbone has its BatchNorms folded where a forward pass shows them right after a convolution
  (model/backbone_folding.py); other norms run as they are, and `folding_note` says so.
- Precision: backbone and reductions run in `dtype` (fp16/bf16 on GPU); the seg head's last
  1024 -> 1 product, the dec head's tail, the pooling, `fc_score` and the anomaly map run in
  float32, so half precision only rounds the heavy parts.
- GPU (model/cuda_graphs.py): optional torch.compile, CUDA graphs per batch size and pinned host
  memory with non-blocking copies (`infer_from_host`).
"""

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbone_folding import fold_traced_batchnorms
from model.feature_extractor import backbone_layers
from model.supersimplenet import SuperSimpleNet
from model.cuda_graphs import CudaGraphs, Outputs, copy_to_host, pinned
from model.folding import fold_backbone_batchnorms, fold_head

# names other modules import from here
__all__ = ["FastSuperSimpleNet", "Outputs", "build_fast_model", "fold_backbone_batchnorms"]


class FastSuperSimpleNet(nn.Module):
    """Images B x 3 x H x W -> (anomaly_map B x 1 x H x W float32, score_logits B float32).

    Built by `build_fast_model`; inference only (no training forward, no gradients). The
    weights are those of `model.folding.FoldedHead`, cast to `dtype` (the heavy GEMMs) or
    float32 (the tail).
    """

    def __init__(self, model: SuperSimpleNet, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.device = torch.device(device)
        self.dtype = dtype
        self.image_size = tuple(model.image_size)
        self.layers = list(model.feature_extractor.layers)
        self.fh, self.fw = model.fh, model.fw
        self.seg_slope = float(model.discriminator.seg[2].negative_slope)

        # folded on a CPU float32 copy: the caller's model is left as it is
        backbone = model.feature_extractor.backbone
        if isinstance(backbone, nn.ModuleDict):  # torchvision ResNet stages: every BatchNorm folds
            stages = fold_backbone_batchnorms(backbone).cpu().float()
            self.folding_note = ""
        else:
            probe = torch.randn(1, 3, *self.image_size, generator=torch.Generator().manual_seed(0))
            stages, report = fold_traced_batchnorms(backbone, probe)
            # one line for whoever runs the fast path when part of the backbone is not folded
            self.folding_note = "" if report.complete else f"{model.backbone_name}: {report.describe()}"
        head = fold_head(model, self._layer_sizes(stages))
        self.stages = stages.to(self.device, dtype).to(memory_format=torch.channels_last)

        def low(t: Tensor) -> Tensor:
            return t.to(self.device, dtype)

        def full(t: Tensor) -> Tensor:
            return t.to(self.device, torch.float32)

        self.seg_reduce = [low(w) for w in head.seg_reduce]
        self.dec_reduce = [low(w) for w in head.dec_reduce]
        self.seg_width_maps = [low(w) for w in head.seg_width]
        self.dec_width_maps = [low(w) for w in head.dec_width]
        self.seg_height_map = low(head.seg_height)
        self.dec_height_map = low(head.dec_height)
        self.seg_bias_row = low(head.seg_bias.repeat(self.fw).view(1, 1, -1))  # g at every (fw) column
        self.seg_out = full(head.seg_out)
        self.dec_map_weight = full(head.dec_map_weight)
        self.dec_bias_map = full(head.dec_bias_map)
        self.fc_weight = full(head.fc_weight)
        self.fc_bias = full(head.fc_bias)
        self.map_height = full(head.map_height)
        self.map_width_t = full(head.map_width.T.contiguous())
        self.dec_channels = head.dec_bias_map.shape[-1]
        self.taps = head.dec_map_weight.shape[-1]  # dec-head kernel size (5)
        self.dec_padding = self.taps // 2
        self.run_compute: Callable[[Tensor], Outputs] = self.compute  # build_fast_model may compile it
        self.graphs: CudaGraphs | None = None

    def _layer_sizes(self, stages: nn.Module) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each chosen backbone layer, from one probe forward."""
        with torch.inference_mode():
            outputs = backbone_layers(stages, torch.zeros(1, 3, *self.image_size), self.layers)
        return [tuple(o.shape[1:]) for o in outputs]

    def forward(self, images: Tensor) -> Outputs:
        with torch.inference_mode():
            if self.graphs is not None:
                # graph outputs are static buffers: clone so callers may keep them
                return tuple(t.clone() for t in self.graphs.replay(images.to(self.device)))
            return self.run_compute(images)

    def compute(self, images: Tensor) -> Outputs:
        """The whole inference as plain tensor ops (what torch.compile and CUDA graphs capture)."""
        batch = images.shape[0]
        images = images.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        layer_outputs = backbone_layers(self.stages, images, self.layers)

        # per layer: reduce channels at layer resolution, then contract the width axis
        seg_parts, dec_parts = [], []
        for index, layer in enumerate(layer_outputs):
            # channels-last: B x h x w x C is a free view, so each reduction is a single GEMM
            rows = layer.permute(0, 2, 3, 1)
            _, height, width, _ = rows.shape
            seg = rows @ self.seg_reduce[index]  # X_l G_l^T: B x h x w x 1024
            seg = self.seg_width_maps[index] @ seg.reshape(batch * height, width, -1)  # W_l @: (B h) x fw x 1024
            seg_parts.append(seg.reshape(batch, height, -1))
            dec = rows @ self.dec_reduce[index]  # X_l K_l: B x h x w x (kx, 128 out, ky)
            # W~_l @, contracting (w, kx): (B h) x fw x (128, ky)
            dec = self.dec_width_maps[index] @ dec.reshape(batch * height, width * self.taps, -1)
            dec = dec.reshape(batch, height, self.fw, self.dec_channels, self.taps).permute(0, 1, 4, 2, 3)
            dec_parts.append(dec.reshape(batch, height * self.taps, -1))  # B x (h, ky) x (fw, 128)

        # the height GEMM sums over layers too: they are stacked along the contracted axis
        seg_hidden = torch.baddbmm(
            self.seg_bias_row, self.seg_height_map.expand(batch, -1, -1), torch.cat(seg_parts, dim=1)
        )  # G F + g: B x fh x (fw, 1024)
        seg_hidden = F.leaky_relu(seg_hidden, self.seg_slope)
        anomaly_map = seg_hidden.view(batch, self.fh, self.fw, -1).float() @ self.seg_out  # B x fh x fw

        dec = torch.bmm(self.dec_height_map.expand(batch, -1, -1), torch.cat(dec_parts, dim=1))  # K_F * F
        map_term = F.conv2d(anomaly_map.unsqueeze(1), self.dec_map_weight, padding=self.dec_padding)  # K_m * map
        dec = dec.view(batch, self.fh, self.fw, -1).float() + self.dec_bias_map + map_term.permute(0, 2, 3, 1)
        dec = F.relu(dec)  # D: B x fh x fw x 128

        pooled = torch.cat(
            (
                dec.amax(dim=(1, 2)),
                dec.mean(dim=(1, 2)),
                anomaly_map.amax(dim=(1, 2)).unsqueeze(1),
                anomaly_map.mean(dim=(1, 2)).unsqueeze(1),
            ),
            dim=1,
        )
        score = (pooled @ self.fc_weight.T + self.fc_bias).reshape(-1)
        full_map = self.map_height @ anomaly_map @ self.map_width_t  # M_h @ map @ M_w^T
        return full_map.unsqueeze(1), score

    def infer_from_host(self, images: Tensor) -> Outputs:
        """Host images -> host outputs: copy in, forward, copy both outputs back (the timed unit)."""
        with torch.inference_mode():
            if self.device.type == "cpu":
                return self.run_compute(images)
            images = pinned(images)
            if self.graphs is not None:
                return copy_to_host(self.graphs.replay(images))
            return copy_to_host(self.run_compute(images.to(self.device, non_blocking=True)))


def build_fast_model(
    model: SuperSimpleNet,
    device: torch.device | str,
    dtype: torch.dtype,
    compile: bool = False,
    cuda_graphs: bool = False,
) -> FastSuperSimpleNet:
    """A SuperSimpleNet (float32 weights, any device) -> its fast inference twin on `device`.

    dtype: compute precision of the backbone and head GEMMs (float32, float16 or bfloat16);
    the outputs are float32 either way. compile: torch.compile the forward. cuda_graphs:
    capture one CUDA graph per batch shape (CUDA only). The caller's model is not modified.
    """
    device = torch.device(device)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if cuda_graphs and device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    fast = FastSuperSimpleNet(model, device, dtype).eval()
    if compile:
        # CPU: freezing lets inductor pre-pack the folded weights for oneDNN and fuse conv + ReLU/add
        options = {"freezing": True} if device.type == "cpu" else None
        fast.run_compute = torch.compile(fast.compute, dynamic=False, options=options)
    if cuda_graphs:
        fast.graphs = CudaGraphs(fast.run_compute, device)
    return fast
