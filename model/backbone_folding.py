"""BatchNorm folding for any backbone (timm's too), found by watching one forward pass rather than
by module names: a BatchNorm is folded into the convolution before it when, on a probe image, its
input is exactly that convolution's output tensor and no other module reads that tensor. What does
not fold (LayerNorm, GroupNorm, a BatchNorm after a pooling or an addition) runs as it is. The
torchvision ResNet stages keep their name-based folding (model/folding.py
`fold_backbone_batchnorms`), which folds every one of their BatchNorms.

The folded copy is checked against the original on the probe: should it differ (a convolution's
output also read outside any module, which a forward hook cannot see), the backbone runs unfolded.
"""

import copy
import re
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model.folding import fold_conv_batchnorm

# largest |folded - original| on the probe, relative to the largest output value (measured ~1e-6)
FOLD_CHECK_TOLERANCE = 1e-4


@dataclass
class FoldingReport:
    """What the folding did: BatchNorms folded, and the normalisation layers left as they are by type."""

    folded: int = 0
    left: dict[str, int] = field(default_factory=dict)
    unfolded_reason: str = ""  # set when the folded copy failed its check and the original is used

    @property
    def complete(self) -> bool:
        return not self.left and not self.unfolded_reason

    def describe(self) -> str:
        """One line: e.g. '49 BatchNorms folded into their convolutions; 18 LayerNorm run as they are'."""
        if self.unfolded_reason:
            return f"backbone runs unfolded ({self.unfolded_reason})"
        text = f"{self.folded} BatchNorm{'s' if self.folded != 1 else ''} folded into their convolutions"
        if self.left:
            text += "; " + ", ".join(f"{count} {name}" for name, count in sorted(self.left.items()))
            text += " run as they are"
        return text


def _foldable_conv(module: nn.Module) -> bool:
    """Convolutions whose forward is linear in their weight and bias (weight-standardising ones are not)."""
    return type(module) is nn.Conv2d or type(module).__name__ == "Conv2dSame"


def _batchnorm_act_class():
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None
    return BatchNormAct2d


def _foldable_norm(module: nn.Module) -> bool:
    """An eval BatchNorm on running statistics: torch's own, or timm's BatchNorm + drop + activation."""
    kinds = tuple(kind for kind in (nn.BatchNorm2d, _batchnorm_act_class()) if kind is not None)
    return (type(module) in kinds and module.track_running_stats and module.running_mean is not None
            and module.running_var is not None and module.weight is not None and module.bias is not None)


def traced_conv_batchnorm_pairs(module: nn.Module, probe: Tensor) -> list[tuple[str, str]]:
    """(conv name, norm name) of every foldable BatchNorm that, in `module(probe)`, reads exactly the
    output tensor of one foldable convolution which no other module reads; convolutions and norms
    called more than once are left out."""
    produced: dict[int, str] = {}  # id(conv output) -> conv name
    readers: dict[int, list[str]] = defaultdict(list)  # id(tensor) -> names of the modules that read it
    calls: dict[str, int] = defaultdict(int)
    alive: list[Tensor] = []  # every tensor seen stays alive until the end, so no id is reused

    def on_output(name: str):
        def hook(_module, _inputs, output):
            produced[id(output)] = name
            alive.append(output)
        return hook

    def on_input(name: str):
        def hook(_module, inputs):
            calls[name] += 1
            for tensor in inputs:
                if isinstance(tensor, Tensor):
                    readers[id(tensor)].append(name)
                    alive.append(tensor)
        return hook

    handles = []
    for name, child in module.named_modules():
        if name and _foldable_conv(child):
            handles.append(child.register_forward_hook(on_output(name)))
        handles.append(child.register_forward_pre_hook(on_input(name)))
    try:
        with torch.no_grad():
            module(probe)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for tensor_id, conv_name in produced.items():
        names = readers.get(tensor_id, [])
        if (len(names) == 1 and calls[conv_name] == 1 and calls[names[0]] == 1
                and _foldable_norm(module.get_submodule(names[0]))):
            pairs.append((conv_name, names[0]))
    return sorted(pairs)


def _without_batchnorm(norm: nn.Module) -> nn.Module:
    """What is left of a norm once its affine map is in the convolution: nothing, or timm's drop + act."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(norm.drop, norm.act)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _leftover_norms(module: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for child in module.modules():
        if re.search(r"Norm(Act)?([123]d)?$", type(child).__name__):
            counts[type(child).__name__] += 1
    return dict(counts)


def fold_traced_batchnorms(backbone: nn.Module, probe: Tensor) -> tuple[nn.Module, FoldingReport]:
    """A frozen eval copy of `backbone` with every traced (conv, BatchNorm) pair folded, and a report.
    `probe`: one input image, 1 x 3 x H x W float32 (at the model's input size). The original is
    left unchanged; the copy gives the same outputs on the probe (else the unfolded copy is returned)."""
    original = copy.deepcopy(backbone).cpu().float().eval().requires_grad_(False)
    folded = copy.deepcopy(original)
    pairs = traced_conv_batchnorm_pairs(folded, probe)
    for conv_name, norm_name in pairs:
        conv, norm = folded.get_submodule(conv_name), folded.get_submodule(norm_name)
        _set_submodule(folded, conv_name, fold_conv_batchnorm(conv, norm))
        _set_submodule(folded, norm_name, _without_batchnorm(norm))
    folded.requires_grad_(False)
    with torch.no_grad():
        expected, actual = original(probe), folded(probe)
    difference = max((a - e).abs().max().item() for a, e in zip(actual, expected))
    scale = max(max(e.abs().max().item() for e in expected), 1.0)
    if not difference <= FOLD_CHECK_TOLERANCE * scale:
        return original, FoldingReport(left=_leftover_norms(original), unfolded_reason=(
            f"folding its BatchNorms changed its outputs by {difference:.2g}"))
    return folded, FoldingReport(folded=len(pairs), left=_leftover_norms(folded))
