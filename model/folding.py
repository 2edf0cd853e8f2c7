"""The fast path's algebra: every weight and matrix of `FastSuperSimpleNet`, folded out of a
frozen eval `SuperSimpleNet` (docs/method.md: "Feature extractor", "Head", "Anomaly map").

All of it is exact linear algebra, computed in float64 on the CPU; the runtime model
(model/fast_inference.py) only casts these tensors and multiplies by them. Notation, per image:

    X_l    C_l x h_l x w_l    output of backbone layer l; C = sum_l C_l channels in all
    F      C x fh x fw        features: F_l[c] = H_l @ X_l[c] @ W_l^T  (resize, then box average)
    Z      C x fh x fw        adapted features: Z = A F + a  (A: C x C, a: C; a 1x1 conv)
    seg    map = w2 . leaky_relu(bn1(conv1(Z)))                 1024 hidden channels
    dec    D = relu(bn2(conv5x5([Z or F; map])))                128 channels, zero padding 2
    score  fc([max D, mean D, max map, mean map])
    out    blur(pad(upscale(map))) = M_h @ map @ M_w^T          H x W

Channel mixing (A, conv1, the 5x5 conv's channel sum) commutes with per-channel spatial maps
(H_l, W_l, the conv's taps), so each layer is first reduced to the head's channels at its own,
lower resolution, and only then resized: that is the fast path's saving.
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.supersimplenet import AnomalyMapGenerator, SuperSimpleNet


def as_float64(t: Tensor) -> Tensor:
    """A frozen weight as a float64 CPU tensor, the precision every fold is computed in."""
    return t.detach().double().cpu()


# ---------------------------------------------------------------- BatchNorm


def batchnorm_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval BatchNorm as a per-channel affine map: bn(x)[c] == scale[c] * x[c] + shift[c].

        scale = gamma / sqrt(running_var + eps)     C
        shift = beta - running_mean * scale         C

    float64, on the BatchNorm's device.
    """
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    shift = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    return scale, shift


def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv followed by an eval BatchNorm as one conv: bn(conv(x)) == folded(x).

        W' = scale[:, None, None, None] * W     C_out x C_in x k x k (each output filter scaled)
        b' = scale * b + shift                  C_out (b = 0 for a conv without bias)

    Computed in float64, stored float32 (frozen).
    """
    scale, shift = batchnorm_scale_shift(bn)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(conv)
    weight = scale.view(-1, 1, 1, 1) * conv.weight.detach().double()
    folded.weight = nn.Parameter(weight.float(), requires_grad=False)
    folded.bias = nn.Parameter((scale * bias + shift).float(), requires_grad=False)
    return folded


def conv_batchnorm_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) children of `parent` that run back to back in a torchvision ResNet:
    `convK` then `bnK` (stem and blocks), and Sequential(conv, bn) (the shortcut's downsampling)."""
    children = parent._modules
    pairs = []
    for name, child in children.items():
        if isinstance(child, nn.Conv2d) and name.startswith("conv"):
            bn_name = "bn" + name[len("conv"):]
            if type(children.get(bn_name)) is nn.BatchNorm2d:  # not a subclass with more in its forward
                pairs.append((name, bn_name))
    if isinstance(parent, nn.Sequential):
        names = list(children)
        for first, second in zip(names, names[1:]):
            if isinstance(children[first], nn.Conv2d) and type(children[second]) is nn.BatchNorm2d:
                pairs.append((first, second))
    return pairs


def fold_backbone_batchnorms(backbone: nn.ModuleDict) -> nn.ModuleDict:
    """A frozen copy of the ResNet stages in which every (conv, bn) pair is one folded conv and
    the bn an Identity: stages(x) == folded(x) up to rounding. The original is left unchanged."""
    folded = copy.deepcopy(backbone).eval()
    for parent in list(folded.modules()):
        for conv_name, bn_name in conv_batchnorm_pairs(parent):
            parent._modules[conv_name] = fold_conv_batchnorm(parent._modules[conv_name], parent._modules[bn_name])
            parent._modules[bn_name] = nn.Identity()
    leftover = [name for name, module in folded.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ValueError(f"cannot fold BatchNorm layers {leftover[:3]}: not directly after a convolution")
    return folded.requires_grad_(False)


# ---------------------------------------------------------------- 1-D linear maps as matrices


def resize_matrix(in_size: int, out_size: int, align_corners: bool) -> Tensor:
    """R, out_size x in_size: torch's 1-D bilinear resize, resize(v) == R @ v (built by resizing one-hot rows)."""
    one_hots = torch.eye(in_size, dtype=torch.float64).view(in_size, 1, in_size, 1)
    resized = F.interpolate(one_hots, size=(out_size, 1), mode="bilinear", align_corners=align_corners)
    return resized.view(in_size, out_size).T.contiguous()


def box_average_matrix(size: int, kernel: int) -> Tensor:
    """P, size x size: stride-1 average of `kernel` taps with zero padding counted, avg(v) == P @ v."""
    one_hots = torch.eye(size, dtype=torch.float64).view(size, 1, size)
    pooled = F.avg_pool1d(one_hots, kernel, stride=1, padding=kernel // 2, count_include_pad=True)
    return pooled.view(size, size).T.contiguous()


def shift_matrix(size: int, offset: int) -> Tensor:
    """S_k, size x size: (S_k @ v)[i] == v[i + k] (zero outside), one tap of a zero-padded conv."""
    return torch.diag(torch.ones(size - abs(offset), dtype=torch.float64), diagonal=offset)


def shifted_stack(matrix: Tensor, offsets: range) -> Tensor:
    """M~ = [S_k @ M for k in offsets], out x (in * taps), column (i, k) = (S_k @ M)[:, i].

    For a 1-D zero-padded conv with taps t_k after the map M:
        sum_k t_k * (S_k @ M @ v) == M~ @ (v (x) t)     with (v (x) t)[(i, k)] = v[i] * t_k,
    so a K x K conv after a separable resize is one GEMM per axis over (position, tap).
    """
    out_size = matrix.shape[0]
    return torch.stack([shift_matrix(out_size, offset) @ matrix for offset in offsets], dim=2).reshape(out_size, -1)


def feature_resize_maps(
    layer_size: tuple[int, int], feature_size: tuple[int, int], patch_size: int
) -> tuple[Tensor, Tensor]:
    """The feature extractor's spatial work on one layer channel: pool(upsample(x)) == H @ x @ W^T.

        H = P_fh @ R(h -> fh)     fh x h          W = P_fw @ R(w -> fw)     fw x w

    R: bilinear resize, align_corners=True; P: the patch_size x patch_size average, separable.
    """
    (height, width), (fh, fw) = layer_size, feature_size
    heights = box_average_matrix(fh, patch_size) @ resize_matrix(height, fh, align_corners=True)
    widths = box_average_matrix(fw, patch_size) @ resize_matrix(width, fw, align_corners=True)
    return heights, widths


def separable_kernel(kernel_2d: Tensor) -> Tensor:
    """k (K,) with kernel_2d == outer(k, k): the row sums, since k sums to one; refuses a non-separable kernel."""
    kernel_2d = kernel_2d.detach().double().reshape(kernel_2d.shape[-2:])
    factor = kernel_2d.sum(dim=1)
    if not torch.allclose(torch.outer(factor, factor), kernel_2d, atol=1e-7):
        raise ValueError("the anomaly-map blur kernel is not separable; the fast path needs a Gaussian")
    return factor


def blur_resize_matrix(in_size: int, out_size: int, kernel_1d: Tensor, padding: int) -> Tensor:
    """M, out_size x in_size: blur_k(reflect_pad(R(in -> out) @ v)) == M @ v, R with align_corners=False."""
    one_hots = torch.eye(in_size, dtype=torch.float64).view(in_size, 1, in_size, 1)
    resized = F.interpolate(one_hots, size=(out_size, 1), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, 0, padding, padding), mode="reflect")
    blurred = F.conv2d(padded, kernel_1d.double().view(1, 1, -1, 1))
    return blurred.view(in_size, out_size).T.contiguous()


def anomaly_map_matrices(generator: AnomalyMapGenerator, feature_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(M_h H x fh, M_w W x fw) with generator(map) == M_h @ map @ M_w^T: the Gaussian is outer(k, k)."""
    blur = separable_kernel(generator.kernel)
    (out_h, out_w), (fh, fw) = generator.output_size, feature_size
    return (
        blur_resize_matrix(fh, out_h, blur, generator.padding),
        blur_resize_matrix(fw, out_w, blur, generator.padding),
    )


# ---------------------------------------------------------------- the head


def fold_seg_head(model: SuperSimpleNet) -> tuple[Tensor, Tensor, Tensor]:
    """(G, g, w2): the seg head with the adaptor folded in, map == w2 . leaky_relu(G F + g) per position.

        G  = diag(s) @ W1 @ A         1024 x C    (W1, b1: the first 1x1 conv; s, t: its BatchNorm)
        g  = s * (W1 @ a + b1) + t    1024
        w2                            1024        the last, bias-free 1x1 conv
    """
    conv1, bn1, _, conv2 = model.discriminator.seg
    adapt = as_float64(model.feature_adaptor.projection.weight)[:, :, 0, 0]
    adapt_bias = as_float64(model.feature_adaptor.projection.bias)
    scale, shift = (t.cpu() for t in batchnorm_scale_shift(bn1))
    weight = as_float64(conv1.weight)[:, :, 0, 0]
    folded = scale[:, None] * (weight @ adapt)
    bias = scale * (weight @ adapt_bias + as_float64(conv1.bias)) + shift
    return folded, bias, as_float64(conv2.weight)[0, :, 0, 0]


def fold_dec_head(model: SuperSimpleNet) -> tuple[Tensor, Tensor, Tensor]:
    """(K_F, K_m, beta): bn2(conv5x5([cls; map])) == K_F * F + K_m * map + beta, * the zero-padded conv.

        K'   = s[:, None, None, None] * K    128 x (C + 1) x 5 x 5   (conv K, b; BatchNorm s, t)
        K_m  = K'[:, C:]                     128 x 1 x 5 x 5          applied to the map at run time
      ICPR (cls = Z = A F + a):
        K_F[o, d] = sum_c K'[o, c] A[c, d]   128 x C x 5 x 5
        beta = s * b + t + K'[:, :C] * a     fh x fw x 128: the conv of the constant image a,
                                             which varies near the zero-padded border
      journal (cls = F): K_F = K'[:, :C] and beta = s * b + t at every position.
    """
    conv, bn, _ = model.discriminator.dec_head
    channels = conv.in_channels - 1
    scale, shift = (t.cpu() for t in batchnorm_scale_shift(bn))
    weight = scale.view(-1, 1, 1, 1) * as_float64(conv.weight)
    cls_weight = weight[:, :channels]
    bias_map = (scale * as_float64(conv.bias) + shift).view(1, 1, -1).expand(model.fh, model.fw, -1).clone()
    if model.adapt_cls_features:
        adapt = as_float64(model.feature_adaptor.projection.weight)[:, :, 0, 0]
        adapt_bias = as_float64(model.feature_adaptor.projection.bias)
        bias_kernel = torch.einsum("ocyx,c->oyx", cls_weight, adapt_bias).unsqueeze(1)
        constant = torch.ones(1, 1, model.fh, model.fw, dtype=torch.float64)
        bias_map += F.conv2d(constant, bias_kernel, padding=conv.kernel_size[0] // 2)[0].permute(1, 2, 0)
        cls_weight = torch.einsum("ocyx,cd->odyx", cls_weight, adapt)
    return cls_weight, weight[:, channels:], bias_map


@dataclass
class FoldedHead:
    """Everything the fast path multiplies by, float64 on the CPU (built by `fold_head`).

    Per backbone layer l (lists, in the order the feature extractor concatenates them):
      seg_reduce[l]  C_l x 1024            G_l^T: G's columns of layer l's channels
      seg_width[l]   fw x w_l              W_l
      dec_reduce[l]  C_l x (5 * 128 * 5)   K_F's block of layer l, columns ordered (kx, out, ky)
      dec_width[l]   fw x (w_l * 5)        shifted_stack(W_l): width positions and kx taps
    Shared by all layers (the contracted axis stacks the layers, so one GEMM sums over them):
      seg_height     fh x sum_l h_l        [H_1 | H_2 | ...]
      dec_height     fh x sum_l (h_l * 5)  [shifted_stack(H_1) | ...]: height positions and ky taps
    The float32 tail:
      seg_bias 1024 (g), seg_out 1024 (w2), dec_map_weight 128 x 1 x 5 x 5 (K_m),
      dec_bias_map fh x fw x 128 (beta), fc_weight 1 x 258, fc_bias 1,
      map_height H x fh (M_h), map_width W x fw (M_w).
    """

    seg_reduce: list[Tensor]
    seg_width: list[Tensor]
    dec_reduce: list[Tensor]
    dec_width: list[Tensor]
    seg_height: Tensor
    dec_height: Tensor
    seg_bias: Tensor
    seg_out: Tensor
    dec_map_weight: Tensor
    dec_bias_map: Tensor
    fc_weight: Tensor
    fc_bias: Tensor
    map_height: Tensor
    map_width: Tensor


def fold_head(model: SuperSimpleNet, layer_sizes: list[tuple[int, int, int]]) -> FoldedHead:
    """The head split per backbone layer (layer_sizes: (C_l, h_l, w_l) each), so that

        seg pre-activation  G F + g      == sum_l H_l @ (X_l G_l^T) @ W_l^T + g
        dec pre-activation  K_F * F      == sum_l H~_l @ (X_l K_l) @ W~_l^T
                                            (H~, W~: shifted_stack over the 5 taps per axis)

    where X_l G_l^T and X_l K_l are the per-position channel reductions at layer resolution.
    """
    dec_conv = model.discriminator.dec_head[0]
    kernel, patch_size = dec_conv.kernel_size[0], model.feature_extractor.pooler.kernel_size
    if patch_size % 2 == 0 or kernel % 2 == 0 or dec_conv.kernel_size[0] != dec_conv.kernel_size[1]:
        raise ValueError("the fast path needs an odd patch_size and a square, odd dec-head kernel")
    seg_weight, seg_bias, seg_out = fold_seg_head(model)
    dec_weight, dec_map_weight, dec_bias_map = fold_dec_head(model)
    offsets = range(-(kernel // 2), kernel // 2 + 1)  # tap k reads position i + k

    seg_reduce, seg_width, dec_reduce, dec_width, seg_heights, dec_heights = [], [], [], [], [], []
    start = 0
    for channels, height, width in layer_sizes:
        block = slice(start, start + channels)
        start += channels
        heights, widths = feature_resize_maps((height, width), (model.fh, model.fw), patch_size)
        seg_reduce.append(seg_weight[:, block].T.contiguous())
        seg_width.append(widths)
        seg_heights.append(heights)
        # kx next to the width axis for the width GEMM, ky kept for the height GEMM
        dec_reduce.append(dec_weight[:, block].permute(1, 3, 0, 2).reshape(channels, -1))
        dec_width.append(shifted_stack(widths, offsets))
        dec_heights.append(shifted_stack(heights, offsets))
    if start != seg_weight.shape[1]:
        raise ValueError(f"backbone layers give {start} channels, the head expects {seg_weight.shape[1]}")

    fc = model.discriminator.fc_score
    map_height, map_width = anomaly_map_matrices(model.anomaly_map_generator, (model.fh, model.fw))
    return FoldedHead(
        seg_reduce=seg_reduce,
        seg_width=seg_width,
        dec_reduce=dec_reduce,
        dec_width=dec_width,
        seg_height=torch.cat(seg_heights, dim=1),
        dec_height=torch.cat(dec_heights, dim=1),
        seg_bias=seg_bias,
        seg_out=seg_out,
        dec_map_weight=dec_map_weight,
        dec_bias_map=dec_bias_map,
        fc_weight=as_float64(fc.weight),
        fc_bias=as_float64(fc.bias),
        map_height=map_height,
        map_width=map_width,
    )
