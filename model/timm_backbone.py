"""timm backbones (`backbone: timm:<model name>`, docs/backbones.md): any timm model that builds
with `features_only=True`; `layers` are its feature indices (timm's `out_indices`), and each
feature's channels and stride come from timm's `feature_info`.

Weights, in this order: a local state-dict file (`backbone_weights`), timm's pretrained weights
from the local Hugging Face cache (or timm's torch.hub cache for weights only published by URL),
or random ones (pretrained=false). Nothing here downloads: a file that is not in the caches is
one UserError naming it and where it belongs. Every file is read without running code in it
(model/weights_file.py) and loaded by mapping the feature extractor's keys onto the whole
model's, so a file saved from the whole model (classifier head included) fits.
"""

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common.errors import UserError
from common.fileio import file_digest
from model.weights_file import (UnusableWeights, check_weights_file, load_used_weights, read_state_dict,
                                weights_file_path)

PYTORCH_WEIGHTS_NAME = "pytorch_model.bin"  # what timm falls back to when a repository has no safetensors file
SAFE_WEIGHTS_NAME = "model.safetensors"


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("timm backbones need the timm package: install the requirements with "
                        "`.venv/bin/pip install -r requirements.txt`") from None
    return timm


class TimmFeatureLayers(nn.Module):
    """Images B x 3 x H x W -> the timm model's features at `indices`, in the order of `indices`,
    each B x C_i x h_i x w_i (NCHW, whatever layout the timm model gives them in).

    `features` is timm's features_only model built with the indices sorted (it returns them in
    network order)."""

    def __init__(self, features: nn.Module, indices: list[int], channels_last_output: bool):
        super().__init__()
        self.features = features
        ascending = sorted(indices)
        self.order = [ascending.index(index) for index in indices]
        self.channels_last_output = channels_last_output

    def forward(self, images: Tensor) -> list[Tensor]:
        outputs = self.features(images)
        if self.channels_last_output:
            outputs = [output.permute(0, 3, 1, 2) for output in outputs]
        return [outputs[position] for position in self.order]


# ---------------------------------------------------------------- checks (meta device: nothing allocated)


def _meta_model(name: str, **kwargs: Any) -> nn.Module:
    """timm's model `name` on the meta device (shapes only); a UserError when timm cannot build it."""
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f"close names: {', '.join(close)}; " if close else ""
        listing = "python -c \"import timm; print(timm.list_models('*resnet*'))\""
        raise UserError(f"backbone timm:{name} is not a timm model ({hint}timm {timm.__version__} has "
                        f"{len(timm.list_models())} models: {listing})")
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as error:  # timm raises assorted types for what a model cannot do
        what = "cannot give feature maps (timm's features_only fails" if kwargs.get("features_only") else \
            "cannot be built (timm fails"
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise UserError(f"backbone timm:{name} {what}: {detail}); choose a CNN such as timm:resnet18 or "
                        "timm:efficientnet_b0") from None


def feature_info(name: str) -> list[dict[str, Any]]:
    """timm's feature_info of `name`: one dict per feature index with `num_chs` (channels),
    `reduction` (stride) and `module` (the module that gives it)."""
    return [dict(info) for info in _meta_model(name, features_only=True).feature_info.info]


def describe_features(info: list[dict[str, Any]]) -> str:
    """'0 (64 ch, stride 2), 1 (64 ch, stride 4), ...': the feature indices a model offers."""
    return ", ".join(f"{index} ({f['num_chs']} ch, stride {f['reduction']})" for index, f in enumerate(info))


def check_timm_backbone(name: str, layers: list, backbone_weights: str = "") -> None:
    """Model `name` exists in timm, builds with features_only, `layers` are distinct feature indices in
    range, and `backbone_weights` (when given) fits it; a UserError of one line otherwise."""
    info = feature_info(name)
    available = f"timm:{name} has feature indices {describe_features(info)}"
    wrong = [v for v in layers if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(info)]
    if not layers or wrong:
        raise UserError(f"layers {layers} do not fit: {available}; give distinct indices, e.g. layers=[2,3]")
    if len(set(layers)) != len(layers):
        raise UserError(f"layers {layers} repeat an index: {available}; give each index once")
    if backbone_weights:
        features = _meta_model(name, features_only=True, out_indices=tuple(sorted(layers)))
        prune_unused_blocks(features)
        full_model = _meta_model(name)
        known = {key: tensor.shape for key, tensor in full_model.state_dict().items()}
        used = {library_key: features.state_dict()[key].shape
                for key, library_key in library_keys(features, known, name).items()}
        check_weights_file(backbone_weights, used, known)


def library_keys(features: nn.Module, known: dict[str, torch.Size], name: str) -> dict[str, str]:
    """Each state-dict key of timm's features_only model -> the whole model's key for that tensor.

    timm's wrappers keep the whole model's module names, prefix them (`model.`, `body.`) or join the
    first two levels with '_' (`stages.0` -> `stages_0`); this undoes that."""
    mapping = {}
    for key in features.state_dict():
        candidates = [key] + [key[len(prefix):] for prefix in ("model.", "body.") if key.startswith(prefix)]
        head, _, rest = key.partition(".")
        candidates += [f"{head[:i]}.{head[i + 1:]}.{rest}" for i, c in enumerate(head) if c == "_"]
        found = [candidate for candidate in candidates if candidate in known]
        if not found:
            raise UserError(f"backbone_weights cannot be used with timm:{name}: its feature extractor's {key} has no "
                            "counterpart in the whole model's state dict; use pretrained weights or random ones")
        mapping[key] = found[0]
    return mapping


def prune_unused_blocks(features: nn.Module) -> None:
    """timm's EfficientNet and MobileNetV3 feature models run every block even past the last feature
    asked for: drop those blocks (as the torchvision extractor drops layer4 when it is not used)."""
    stage_outputs = getattr(features, "_stage_out_idx", None)
    blocks = getattr(features, "blocks", None)
    if stage_outputs and isinstance(blocks, nn.Sequential) and getattr(features, "feature_hooks", 1) is None:
        features.blocks = blocks[: max(stage_outputs)]


# ---------------------------------------------------------------- building


def build_timm_layers(
    name: str, layers: list[int], pretrained: bool, backbone_weights: str = ""
) -> tuple[TimmFeatureLayers, dict[str, str]]:
    """The features of timm's `name` at feature indices `layers`, and where its weights came from
    (`weights_source`: kind file, timm or random; path and sha256 of the file read). The caller has
    run `check_timm_backbone` (model/backbone.py `check_backbone`)."""
    timm = _timm()
    features = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(sorted(layers)))
    prune_unused_blocks(features)
    if backbone_weights:
        path = weights_file_path(backbone_weights)
        _load(features, name, path, f"backbone_weights file {path}", "give the state dict of this timm model")
        source = {"kind": "file", "path": str(path), "sha256": file_digest(path)}
    elif pretrained:
        path, origin, tagged_name = pretrained_weights_file(name)
        _load(features, name, path, f"timm weights file {path}", "delete it and download it again")
        source = {"kind": "timm", "name": tagged_name, "origin": origin, "path": str(path), "sha256": file_digest(path)}
    else:
        source = {"kind": "random"}
    output_format = str(getattr(features, "output_fmt", "NCHW"))
    return TimmFeatureLayers(features, list(layers), output_format.endswith("NHWC")), source


def _load(features: nn.Module, name: str, path: Path, shown_as: str, remedy: str) -> None:
    full_model = _meta_model(name)
    known = {key: tensor.shape for key, tensor in full_model.state_dict().items()}
    try:
        load_used_weights(features, library_keys(features, known, name), read_state_dict(path), known)
    except UnusableWeights as problem:
        raise UserError(f"{shown_as} {problem}; {remedy}") from None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def pretrained_weights_file(name: str) -> tuple[Path, str, str]:
    """(path, origin, model name with its pretrained tag) of timm's pretrained weights for `name` in the
    local caches, as timm would use them: the Hugging Face hub repository (model.safetensors, else pytorch_model.bin), else the file
    of the weights' URL in $TORCH_HOME/hub/checkpoints. A UserError naming the file when absent."""
    timm = _timm()
    try:
        config = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # a tag that does not exist
        tags = ", ".join(timm.list_pretrained(name.split(".")[0] + ".*")) or "none"
        raise UserError(f"backbone timm:{name}: {error} (pretrained: {tags})") from None
    if config is None or not (config.hf_hub_id or config.url):
        raise UserError(f"timm has no pretrained weights for {name}: set pretrained=false (random weights) or "
                        "backbone_weights=FILE")
    from huggingface_hub import try_to_load_from_cache

    tagged_name = f"{config.architecture}.{config.tag}" if config.tag else config.architecture
    cache = hf_cache_dir()
    repository, _, revision = (config.hf_hub_id or "").partition("@")
    filenames = [config.hf_hub_filename] if config.hf_hub_filename else [SAFE_WEIGHTS_NAME, PYTORCH_WEIGHTS_NAME]
    if repository:
        for filename in filenames:
            found = try_to_load_from_cache(repository, filename, cache_dir=cache, revision=revision or None)
            if isinstance(found, str):
                return Path(found), f"hf-hub {repository}/{filename}", tagged_name
    if config.url:
        target = Path(torch.hub.get_dir()) / "checkpoints" / config.url.rsplit("/", 1)[-1]
        if target.is_file():
            return target, config.url, tagged_name
    if repository:
        folder = cache / f"models--{repository.replace('/', '--')}"
        raise UserError(
            f"timm weights for {name} ({repository}) are not in the local Hugging Face cache: expected "
            f"{folder}/snapshots/<revision>/{filenames[0]} (HF_HUB_CACHE={cache}); fetch them where there is internet "
            f"with `hf download {repository} {filenames[0]} --cache-dir {cache}` and copy {folder}, or set "
            "backbone_weights=FILE, or pretrained=false for random weights")
    raise UserError(f"timm weights for {name} are not available offline: place {target.name} from {config.url} at "
                    f"{target}, or set backbone_weights=FILE, or pretrained=false for random weights")
