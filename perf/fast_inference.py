"""Fast inference for SuperSimpleNet: the eval model's outputs with far less work (issue 4).

`build_fast_model(model, device, dtype)` turns a trained (or random) `SuperSimpleNet` into a
`FastSuperSimpleNet`: images B x 3 x H x W -> (anomaly_map B x 1 x H x W, score_logits B),
both float32, equal to the eval model's outputs up to rounding.

Every rewrite below is exact algebra on the frozen eval model; only the rounding order changes.
- Backbone: every BatchNorm is folded into the convolution before it (the backbone is frozen
  and always in eval mode), and it runs channels-last, the layout cuDNN and oneDNN prefer.
- Head, the big saving: the reference upsamples every backbone layer to fh x fw, concatenates
  (C channels), pools 3x3, applies the C x C adaptor, then the seg head's C -> 1024 conv and the
  dec head's 5x5 conv on all C channels at full feature resolution (~72 of ~96 real GFLOPs
  at 256 x 256). Upsampling, pooling, the adaptor, the seg conv, both head BatchNorms and the
  5x5 conv are all linear, and channel mixing commutes with per-channel spatial maps. So each
  backbone layer is first reduced to the head's channels *at its own, lower resolution* with
  one GEMM (folded weights W_seg * A and W_dec * A), and only then resized. The resizing
  (bilinear align_corners=True, then the 3x3 average with zero padding counted) is separable
  into a height and a width matrix; for the 5x5 conv each kernel tap becomes a shifted copy
  of those matrices, so the whole dec conv ends in two small batched GEMMs that never build
  the 25-fold expanded map. Adaptor and conv biases pass through the zero-padded 5x5 conv as a
  precomputed spatially varying bias map.
- Anomaly map: bilinear upscaling (align_corners=False), reflect padding and the separable
  25 x 25 Gaussian are again per-axis linear maps: one H x fh and one W x fw matrix, so the
  map is `M_h @ map @ M_w^T` (two tiny GEMMs, exportable to ONNX as MatMul).
- Precision: backbone and reductions run in `dtype` (fp16/bf16 on GPU); the seg head's last
  1024 -> 1 product, the dec head's tail, the pooling, `fc_score` and the anomaly map run in
  float32, so half precision only rounds the heavy parts.
- GPU: optional torch.compile, CUDA graphs per batch size (static input, one replay per batch,
  no Python per image) and pinned host memory with non-blocking copies (`infer_from_host`).
"""

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.supersimplenet import SuperSimpleNet

Outputs = tuple[Tensor, Tensor]


# ---------------------------------------------------------------- BatchNorm folding (backbone)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval-mode bn -> one conv with bias; computed in float64, stored float32."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    conv_bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(
        (conv.weight.detach().double() * scale.view(-1, 1, 1, 1)).float(), requires_grad=False
    )
    folded.bias = nn.Parameter(
        ((conv_bias - bn.running_mean.double()) * scale + bn.bias.detach().double()).float(), requires_grad=False
    )
    return folded


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) children of `parent` that run back to back in a ResNet.

    torchvision ResNets pair `convK` with `bnK` (stem and blocks) and use Sequential(conv, bn)
    for the shortcut's downsampling.
    """
    children = parent._modules
    pairs = []
    for name, child in children.items():
        if isinstance(child, nn.Conv2d) and name.startswith("conv"):
            bn_name = "bn" + name[len("conv"):]
            if isinstance(children.get(bn_name), nn.BatchNorm2d):
                pairs.append((name, bn_name))
    if isinstance(parent, nn.Sequential):
        names = list(children)
        for first, second in zip(names, names[1:]):
            if isinstance(children[first], nn.Conv2d) and isinstance(children[second], nn.BatchNorm2d):
                pairs.append((first, second))
    return pairs


def fold_backbone_batchnorms(backbone: nn.ModuleDict) -> nn.ModuleDict:
    """A copy of the frozen ResNet stages with every BatchNorm folded away (replaced by Identity)."""
    folded = copy.deepcopy(backbone).eval()
    for parent in list(folded.modules()):
        for conv_name, bn_name in _conv_bn_pairs(parent):
            parent._modules[conv_name] = fold_batchnorm(parent._modules[conv_name], parent._modules[bn_name])
            parent._modules[bn_name] = nn.Identity()
    leftover = [name for name, module in folded.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ValueError(f"cannot fold BatchNorm layers {leftover[:3]}: not directly after a convolution")
    return folded.requires_grad_(False)


# ---------------------------------------------------------------- separable linear maps (float64)


def resize_matrix(in_size: int, out_size: int, align_corners: bool) -> Tensor:
    """out_size x in_size matrix of torch's 1-D bilinear resize (built by resizing one-hot rows)."""
    one_hots = torch.eye(in_size, dtype=torch.float64).view(in_size, 1, in_size, 1)
    resized = F.interpolate(one_hots, size=(out_size, 1), mode="bilinear", align_corners=align_corners)
    return resized.view(in_size, out_size).T.contiguous()


def box_average_matrix(size: int, kernel: int) -> Tensor:
    """size x size matrix of a 1-D stride-1 average of `kernel` taps, zero padding counted."""
    one_hots = torch.eye(size, dtype=torch.float64).view(size, 1, size)
    pooled = F.avg_pool1d(one_hots, kernel, stride=1, padding=kernel // 2, count_include_pad=True)
    return pooled.view(size, size).T.contiguous()


def shift_matrix(size: int, offset: int) -> Tensor:
    """size x size matrix S with (S x)[i] = x[i + offset], zero outside: one tap of a zero-padded conv."""
    return torch.diag(torch.ones(size - abs(offset), dtype=torch.float64), diagonal=offset)


def shifted_stack(resize: Tensor, offsets: range) -> Tensor:
    """out x in resize matrix -> out x (in * taps): column (i, k) is tap k's shifted copy of column i."""
    out_size = resize.shape[0]
    return torch.stack([shift_matrix(out_size, offset) @ resize for offset in offsets], dim=2).reshape(out_size, -1)


def blur_resize_matrix(in_size: int, out_size: int, kernel_1d: Tensor, padding: int) -> Tensor:
    """out_size x in_size matrix of: bilinear resize (align_corners=False), reflect pad, 1-D blur."""
    one_hots = torch.eye(in_size, dtype=torch.float64).view(in_size, 1, in_size, 1)
    resized = F.interpolate(one_hots, size=(out_size, 1), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, 0, padding, padding), mode="reflect")
    blurred = F.conv2d(padded, kernel_1d.double().view(1, 1, -1, 1))
    return blurred.view(in_size, out_size).T.contiguous()


def separable_kernel(kernel_2d: Tensor) -> Tensor:
    """K x K outer-product kernel -> its 1-D factor (row sums: the factor sums to one)."""
    kernel_2d = kernel_2d.detach().double().reshape(kernel_2d.shape[-2:])
    factor = kernel_2d.sum(dim=1)
    if not torch.allclose(torch.outer(factor, factor), kernel_2d, atol=1e-7):
        raise ValueError("the anomaly-map blur kernel is not separable; the fast path needs a Gaussian")
    return factor


# ---------------------------------------------------------------- the fast model


class FastSuperSimpleNet(nn.Module):
    """Images B x 3 x H x W -> (anomaly_map B x 1 x H x W float32, score_logits B float32).

    Built by `build_fast_model`; inference only (no training forward, no gradients).
    """

    def __init__(self, model: SuperSimpleNet, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.device = torch.device(device)
        self.dtype = dtype
        self.image_size = tuple(model.image_size)
        self.layers = list(model.feature_extractor.layers)
        self.fh, self.fw = model.fh, model.fw
        head = model.discriminator
        self.seg_slope = float(head.seg[2].negative_slope)

        # folded on a CPU float32 copy: the caller's model is left as it is
        stages = fold_backbone_batchnorms(model.feature_extractor.backbone).cpu().float()
        layer_sizes = self._layer_sizes(stages)
        self.stages = stages.to(self.device, dtype).to(memory_format=torch.channels_last)
        weights = fold_head(model, layer_sizes)
        low = {"dtype": dtype, "device": self.device}
        full = {"dtype": torch.float32, "device": self.device}
        # per backbone layer: channel reductions (compute dtype) and the separable resize matrices
        self.seg_reduce = [w.to(**low) for w in weights["seg_reduce"]]
        self.dec_reduce = [w.to(**low) for w in weights["dec_reduce"]]
        self.seg_width_maps = [w.to(**low) for w in weights["seg_width"]]
        self.dec_width_maps = [w.to(**low) for w in weights["dec_width"]]
        self.seg_height_map = weights["seg_height"].to(**low)
        self.dec_height_map = weights["dec_height"].to(**low)
        self.seg_bias_row = weights["seg_bias"].repeat(self.fw).view(1, 1, -1).to(**low)
        # the float32 tail
        self.seg_out = weights["seg_out"].to(**full)
        self.dec_map_weight = weights["dec_map_weight"].to(**full)
        self.dec_bias_map = weights["dec_bias_map"].to(**full)
        self.fc_weight = weights["fc_weight"].to(**full)
        self.fc_bias = weights["fc_bias"].to(**full)
        self.map_height = weights["map_height"].to(**full)
        self.map_width_t = weights["map_width"].T.contiguous().to(**full)
        self.dec_channels = weights["dec_bias_map"].shape[-1]
        self.taps = weights["dec_map_weight"].shape[-1]  # dec-head kernel size (5)
        self.dec_padding = self.taps // 2
        self.run_compute: Callable[[Tensor], Outputs] = self.compute  # build_fast_model may compile it
        self.graphs: CudaGraphs | None = None

    def _layer_sizes(self, stages: nn.ModuleDict) -> list[tuple[int, int, int]]:
        """(channels, height, width) of each chosen backbone layer, from one probe forward."""
        with torch.inference_mode():
            outputs = run_stages(stages, torch.zeros(1, 3, *self.image_size), self.layers)
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
        layer_outputs = run_stages(self.stages, images, self.layers)

        seg_parts, dec_parts = [], []
        for index, layer in enumerate(layer_outputs):
            # channels-last: B x h x w x C is a free view, so each reduction is a single GEMM
            rows = layer.permute(0, 2, 3, 1)
            _, height, width, _ = rows.shape
            seg = rows @ self.seg_reduce[index]  # B x h x w x 1024
            seg = self.seg_width_maps[index] @ seg.reshape(batch * height, width, -1)  # (B h) x fw x 1024
            seg_parts.append(seg.reshape(batch, height, -1))
            dec = rows @ self.dec_reduce[index]  # B x h x w x (kx, 128 out, ky)
            # contract (w, kx): (B h) x fw x (128, ky)
            dec = self.dec_width_maps[index] @ dec.reshape(batch * height, width * self.taps, -1)
            dec = dec.reshape(batch, height, self.fw, self.dec_channels, self.taps).permute(0, 1, 4, 2, 3)
            dec_parts.append(dec.reshape(batch, height * self.taps, -1))  # B x (h, ky) x (fw, 128)

        # one GEMM per head sums over layers: they are stacked along the contracted axis
        seg_hidden = torch.baddbmm(
            self.seg_bias_row, self.seg_height_map.expand(batch, -1, -1), torch.cat(seg_parts, dim=1)
        )
        seg_hidden = F.leaky_relu(seg_hidden, self.seg_slope)
        anomaly_map = seg_hidden.view(batch, self.fh, self.fw, -1).float() @ self.seg_out  # B x fh x fw

        dec = torch.bmm(self.dec_height_map.expand(batch, -1, -1), torch.cat(dec_parts, dim=1))
        map_term = F.conv2d(anomaly_map.unsqueeze(1), self.dec_map_weight, padding=self.dec_padding)
        dec = dec.view(batch, self.fh, self.fw, -1).float() + self.dec_bias_map + map_term.permute(0, 2, 3, 1)
        dec = F.relu(dec)

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
        full_map = self.map_height @ anomaly_map @ self.map_width_t
        return full_map.unsqueeze(1), score

    def infer_from_host(self, images: Tensor) -> Outputs:
        """Host images -> host outputs: copy in, forward, copy both outputs back (the timed unit)."""
        with torch.inference_mode():
            if self.device.type == "cpu":
                return self.run_compute(images)
            if not images.is_pinned():
                images = images.pin_memory()  # page-locked memory lets the copy run asynchronously
            if self.graphs is not None:
                return copy_to_host(self.graphs.replay(images))
            return copy_to_host(self.run_compute(images.to(self.device, non_blocking=True)))


def run_stages(stages: nn.ModuleDict, images: Tensor, layers: list[str]) -> list[Tensor]:
    """Run the ResNet stages in order; return the outputs of `layers`, in that order."""
    outputs = {}
    x = images
    for name, stage in stages.items():
        x = stage(x)
        if name in layers:
            outputs[name] = x
    return [outputs[name] for name in layers]


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


# ---------------------------------------------------------------- head folding (float64 algebra)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval BatchNorm as y = scale * x + shift."""
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale, bn.bias.detach().double() - bn.running_mean.double() * scale


def fold_head(model: SuperSimpleNet, layer_sizes: list[tuple[int, int, int]]) -> dict:
    """All head weights of the fast path, float64 on CPU; see the module docstring for the algebra.

    layer_sizes: (channels, height, width) per backbone layer, in the order they are concatenated.
    """
    adaptor = model.feature_adaptor.projection
    seg_conv, seg_bn, _, seg_last = model.discriminator.seg
    dec_conv, dec_bn, _ = model.discriminator.dec_head
    fc = model.discriminator.fc_score
    pool_kernel = model.feature_extractor.pooler.kernel_size
    fh, fw = model.fh, model.fw
    kernel = dec_conv.kernel_size[0]
    if pool_kernel % 2 == 0 or kernel % 2 == 0 or dec_conv.kernel_size[0] != dec_conv.kernel_size[1]:
        raise ValueError("the fast path needs an odd patch_size and a square, odd dec-head kernel")

    def d(t: Tensor) -> Tensor:
        return t.detach().double().cpu()

    adapt = d(adaptor.weight)[:, :, 0, 0]  # C x C
    adapt_bias = d(adaptor.bias)
    channels = adapt.shape[0]

    seg_scale, seg_shift = _bn_scale_shift(seg_bn)
    seg_weight = d(seg_conv.weight)[:, :, 0, 0]  # 1024 x C
    seg_full = seg_scale[:, None] * (seg_weight @ adapt)
    seg_bias = seg_scale * (seg_weight @ adapt_bias + d(seg_conv.bias)) + seg_shift

    dec_scale, dec_shift = _bn_scale_shift(dec_bn)
    dec_weight = d(dec_conv.weight) * dec_scale.view(-1, 1, 1, 1)  # 128 x (C + 1) x 5 x 5
    dec_cls = dec_weight[:, :channels]
    dec_bias_map = (dec_scale * d(dec_conv.bias) + dec_shift).view(1, 1, -1).expand(fh, fw, -1).clone()
    if model.adapt_cls_features:
        # the adaptor's bias through the zero-padded conv: the conv of a constant image
        bias_kernel = torch.einsum("ocyx,c->oyx", dec_cls, adapt_bias).unsqueeze(1)
        bias_image = F.conv2d(torch.ones(1, 1, fh, fw, dtype=torch.float64), bias_kernel, padding=kernel // 2)
        dec_bias_map += bias_image[0].permute(1, 2, 0)
        dec_cls = torch.einsum("ocyx,cd->odyx", dec_cls, adapt)
    # journal variant (adapt_cls_features False): the dec head reads raw features; nothing to fold

    offsets = range(-(kernel // 2), kernel // 2 + 1)
    pool_h, pool_w = box_average_matrix(fh, pool_kernel), box_average_matrix(fw, pool_kernel)
    weights: dict = {"seg_reduce": [], "dec_reduce": [], "seg_width": [], "dec_width": []}
    seg_heights, dec_heights = [], []
    start = 0
    for layer_channels, height, width in layer_sizes:
        part = slice(start, start + layer_channels)
        start += layer_channels
        weights["seg_reduce"].append(seg_full[:, part].T.contiguous())
        # columns ordered (kx, out, ky): kx next to the width axis, ky kept for the height GEMM
        weights["dec_reduce"].append(dec_cls[:, part].permute(1, 3, 0, 2).reshape(layer_channels, -1))
        height_map = pool_h @ resize_matrix(height, fh, align_corners=True)  # fh x h
        width_map = pool_w @ resize_matrix(width, fw, align_corners=True)  # fw x w
        seg_heights.append(height_map)
        weights["seg_width"].append(width_map)
        # tap k of the 5x5 conv reads position i + k - 2: a shifted copy of the resize matrix
        dec_heights.append(shifted_stack(height_map, offsets))
        weights["dec_width"].append(shifted_stack(width_map, offsets))
    if start != channels:
        raise ValueError(f"backbone layers give {start} channels, the head expects {channels}")
    weights["seg_height"] = torch.cat(seg_heights, dim=1)
    weights["dec_height"] = torch.cat(dec_heights, dim=1)
    weights["seg_bias"] = seg_bias
    weights["seg_out"] = d(seg_last.weight)[0, :, 0, 0]
    weights["dec_map_weight"] = dec_weight[:, channels:]
    weights["dec_bias_map"] = dec_bias_map
    weights["fc_weight"] = d(fc.weight)
    weights["fc_bias"] = d(fc.bias)

    map_generator = model.anomaly_map_generator
    blur = separable_kernel(map_generator.kernel)
    out_h, out_w = map_generator.output_size
    weights["map_height"] = blur_resize_matrix(fh, out_h, blur, map_generator.padding)
    weights["map_width"] = blur_resize_matrix(fw, out_w, blur, map_generator.padding)
    return weights
