"""SuperSimpleNet against docs/method.md (Head, Anomaly generator, Optimisation, Checkpoints): checkpoint format, module hyper-parameters, initialisation,
inference and training forwards, the anomaly generator's rules and checkpoint I/O. (The optimiser
and schedule are tested with the training step, tests/engine/test_fit.py.)"""

import copy
import math
import os
import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import model.supersimplenet as ssn_module
from common.config import default_config
from common.errors import UserError
from common.loss import focal_loss
from model.supersimplenet import AnomalyGenerator, AnomalyMapGenerator, SuperSimpleNet



# docs/method.md, Checkpoints: the 19 checkpoint keys, in state-dict order.
EXPECTED_KEYS = [
    "feature_adaptor.projection.weight",
    "feature_adaptor.projection.bias",
    "discriminator.seg.0.weight",
    "discriminator.seg.0.bias",
    "discriminator.seg.1.weight",
    "discriminator.seg.1.bias",
    "discriminator.seg.1.running_mean",
    "discriminator.seg.1.running_var",
    "discriminator.seg.1.num_batches_tracked",
    "discriminator.seg.3.weight",
    "discriminator.dec_head.0.weight",
    "discriminator.dec_head.0.bias",
    "discriminator.dec_head.1.weight",
    "discriminator.dec_head.1.bias",
    "discriminator.dec_head.1.running_mean",
    "discriminator.dec_head.1.running_var",
    "discriminator.dec_head.1.num_batches_tracked",
    "discriminator.fc_score.weight",
    "discriminator.fc_score.bias",
]


def expected_shapes(c: int) -> dict[str, tuple[int, ...]]:
    return {
        "feature_adaptor.projection.weight": (c, c, 1, 1),
        "feature_adaptor.projection.bias": (c,),
        "discriminator.seg.0.weight": (1024, c, 1, 1),
        "discriminator.seg.0.bias": (1024,),
        "discriminator.seg.1.weight": (1024,),
        "discriminator.seg.1.bias": (1024,),
        "discriminator.seg.1.running_mean": (1024,),
        "discriminator.seg.1.running_var": (1024,),
        "discriminator.seg.1.num_batches_tracked": (),
        "discriminator.seg.3.weight": (1, 1024, 1, 1),
        "discriminator.dec_head.0.weight": (128, c + 1, 5, 5),
        "discriminator.dec_head.0.bias": (128,),
        "discriminator.dec_head.1.weight": (128,),
        "discriminator.dec_head.1.bias": (128,),
        "discriminator.dec_head.1.running_mean": (128,),
        "discriminator.dec_head.1.running_var": (128,),
        "discriminator.dec_head.1.num_batches_tracked": (),
        "discriminator.fc_score.weight": (1, 258),
        "discriminator.fc_score.bias": (1,),
    }


@pytest.fixture(scope="module")
def wrn50_model() -> SuperSimpleNet:
    """The default (WRN50, 256x256) model with random backbone weights; built once (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = default_config("mvtec", "icpr")
    config["pretrained"] = False
    model = SuperSimpleNet.from_config((256, 256), config)
    torch.set_num_threads(threads)
    return model


_BUILT: dict = {}


def tiny_model(config: dict, seed: int = 0, **overrides) -> SuperSimpleNet:
    """A resnet18 model (32x32 unless image_size is given: 8x8 features), built once per settings, then copied."""
    overrides.setdefault("image_size", [32, 32])
    key = (seed, repr(sorted(overrides.items())))
    if key not in _BUILT:
        torch.manual_seed(seed)
        settings = {**config, **overrides}
        _BUILT[key] = SuperSimpleNet.from_config(tuple(settings["image_size"]), settings)
    return copy.deepcopy(_BUILT[key])


def images(batch: int, size=(32, 32), seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


# --- checkpoint format and architecture --------------------------------------------------------


def test_default_model_checkpoint_keys_order_and_shapes(wrn50_model):
    state = wrn50_model.trainable_state_dict()
    assert list(state.keys()) == EXPECTED_KEYS
    shapes = expected_shapes(1536)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    # every other state-dict entry belongs to the frozen backbone
    others = [k for k in wrn50_model.state_dict() if k not in state]
    assert others and all(k.startswith("feature_extractor.") for k in others)


def test_default_model_feature_size(wrn50_model):
    assert (wrn50_model.fh, wrn50_model.fw) == (64, 64)
    assert wrn50_model.feature_extractor.feature_dim == (1536, 64, 64)


def test_resnet18_checkpoint_keys_and_shapes(tiny_config):
    model = tiny_model(tiny_config, image_size=[64, 64])
    state = model.trainable_state_dict()
    assert list(state.keys()) == EXPECTED_KEYS
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(384)
    assert (model.fh, model.fw) == (16, 16)
    assert (tiny_model(tiny_config).fh, tiny_model(tiny_config).fw) == (8, 8)


def test_journal_variant_has_the_same_checkpoint_layout(tiny_config):
    model = tiny_model(tiny_config, adapt_cls_features=False)
    state = model.trainable_state_dict()
    assert list(state.keys()) == EXPECTED_KEYS
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(384)


def test_module_types_and_hyper_parameters(wrn50_model):
    c = 1536
    projection = wrn50_model.feature_adaptor.projection
    assert type(projection) is nn.Conv2d
    assert (projection.in_channels, projection.out_channels) == (c, c)
    assert projection.kernel_size == (1, 1) and projection.stride == (1, 1) and projection.bias is not None

    seg = wrn50_model.discriminator.seg
    assert type(seg) is nn.Sequential and len(seg) == 4
    assert type(seg[0]) is nn.Conv2d
    assert (seg[0].in_channels, seg[0].out_channels, seg[0].kernel_size) == (c, 1024, (1, 1))
    assert seg[0].bias is not None
    assert type(seg[1]) is nn.BatchNorm2d and seg[1].num_features == 1024
    assert seg[1].eps == 1e-5 and seg[1].momentum == 0.1 and seg[1].affine and seg[1].track_running_stats
    assert type(seg[2]) is nn.LeakyReLU and seg[2].negative_slope == 0.2
    assert type(seg[3]) is nn.Conv2d
    assert (seg[3].in_channels, seg[3].out_channels, seg[3].kernel_size) == (1024, 1, (1, 1))
    assert seg[3].bias is None

    dec = wrn50_model.discriminator.dec_head
    assert type(dec) is nn.Sequential and len(dec) == 3
    assert type(dec[0]) is nn.Conv2d
    assert (dec[0].in_channels, dec[0].out_channels, dec[0].kernel_size) == (c + 1, 128, (5, 5))
    assert dec[0].padding == "same" and dec[0].stride == (1, 1) and dec[0].bias is not None
    assert type(dec[1]) is nn.BatchNorm2d and dec[1].num_features == 128
    assert type(dec[2]) is nn.ReLU

    fc = wrn50_model.discriminator.fc_score
    assert type(fc) is nn.Linear and (fc.in_features, fc.out_features) == (258, 1) and fc.bias is not None

    # generator modules carry no parameters and nothing in the state dict
    for name in ("anomaly_generator", "anomaly_map_generator"):
        module = getattr(wrn50_model, name)
        assert list(module.parameters()) == []
        assert list(module.state_dict().keys()) == []


def xavier_std(weight: torch.Tensor) -> float:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    return math.sqrt(2.0 / (fan_in + fan_out))


@pytest.mark.parametrize(
    "name, tolerance",
    [
        ("feature_adaptor.projection.weight", 0.01),
        ("discriminator.seg.0.weight", 0.01),
        ("discriminator.seg.3.weight", 0.1),
        ("discriminator.dec_head.0.weight", 0.01),
        ("discriminator.fc_score.weight", 0.2),
    ],
)
def test_xavier_normal_weight_statistics(wrn50_model, name, tolerance):
    weight = wrn50_model.trainable_state_dict()[name].double()
    target = xavier_std(weight)
    assert abs(weight.std().item() / target - 1) < tolerance, (weight.std().item(), target)
    assert abs(weight.mean().item()) < 4 * target / math.sqrt(weight.numel())
    if weight.numel() > 100_000:
        # normal, not uniform: excess kurtosis ~0 (a uniform draw gives -1.2)
        centred = weight - weight.mean()
        kurtosis = (centred**4).mean() / (centred**2).mean() ** 2 - 3
        assert abs(kurtosis.item()) < 0.1


def test_batchnorm_and_bias_initialisation(wrn50_model):
    for bn in (wrn50_model.discriminator.seg[1], wrn50_model.discriminator.dec_head[1]):
        assert torch.equal(bn.weight.data, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias.data, torch.zeros_like(bn.bias))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    # biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)): not zeroed, within the bound
    for layer, fan_in in (
        (wrn50_model.feature_adaptor.projection, 1536),
        (wrn50_model.discriminator.seg[0], 1536),
        (wrn50_model.discriminator.dec_head[0], 1537 * 25),
        (wrn50_model.discriminator.fc_score, 258),
    ):
        bound = 1 / math.sqrt(fan_in)
        assert layer.bias.abs().max().item() <= bound
        assert layer.bias.abs().max().item() > 0
    projection_bias = wrn50_model.feature_adaptor.projection.bias.double()
    assert abs(projection_bias.std().item() / (1 / math.sqrt(1536) / math.sqrt(3)) - 1) < 0.1


def test_rectangular_image_feature_size(tiny_config):
    model = tiny_model(tiny_config, image_size=[640, 232])
    # resnet18: 640x232 -> conv1 320x116 -> maxpool 160x58 -> layer2 80x29; features are twice layer2
    assert (model.fh, model.fw) == (160, 58)
    assert model.anomaly_generator.feature_height == 160 and model.anomaly_generator.feature_width == 58


# --- inference --------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_eval_forward_shapes(tiny_config, batch):
    model = tiny_model(tiny_config).eval()
    with torch.no_grad():
        anomaly_map, score = model(images(batch))
    assert anomaly_map.shape == (batch, 1, 32, 32)
    assert score.shape == (batch,)


def test_eval_forward_shapes_rectangular(tiny_config):
    model = tiny_model(tiny_config, image_size=[64, 32]).eval()
    assert (model.fh, model.fw) == (16, 8)
    with torch.no_grad():
        anomaly_map, score = model(images(2, size=(64, 32)))
    assert anomaly_map.shape == (2, 1, 64, 32)
    assert score.shape == (2,)


def capture_outputs(module: nn.Module, store: dict, key: str):
    def hook(_module, inputs, output):
        store[key + "_in"] = inputs
        store[key] = output

    return module.register_forward_hook(hook)


def test_anomaly_map_is_torchvision_blur_of_bilinear_upscale(tiny_config):
    model = tiny_model(tiny_config).eval()
    store: dict = {}
    capture_outputs(model.discriminator, store, "disc")
    with torch.no_grad():
        anomaly_map, score = model(images(2))
    raw_map, raw_score = store["disc"]
    assert raw_map.shape == (2, 1, 8, 8)
    assert torch.equal(score, raw_score)
    upscaled = F.interpolate(raw_map, size=(32, 32), mode="bilinear", align_corners=False)
    reference = torchvision.transforms.GaussianBlur(kernel_size=25, sigma=4.0)(upscaled)
    assert (anomaly_map - reference).abs().max().item() <= 1e-6 * max(1.0, reference.abs().max().item())
    # the blur matters: the unblurred upscale is clearly different
    assert (anomaly_map - upscaled).abs().max().item() > 1e-3


def test_anomaly_map_generator_alone_matches_torchvision_on_a_rectangle():
    generator = AnomalyMapGenerator(output_size=(40, 70))
    maps = torch.zeros(2, 1, 10, 7)
    maps[0, 0, 0, 0] = 5.0  # a corner spike exercises the reflect padding
    maps[1] = torch.randn(1, 10, 7, generator=torch.Generator().manual_seed(3))
    out = generator(maps)
    upscaled = F.interpolate(maps, size=(40, 70), mode="bilinear", align_corners=False)
    reference = torchvision.transforms.GaussianBlur(kernel_size=25, sigma=4.0)(upscaled)
    assert out.shape == (2, 1, 40, 70)
    assert (out - reference).abs().max().item() <= 1e-6


# --- training forward -------------------------------------------------------------------------


def train_batch(batch: int, fh: int = 8, fw: int = 8):
    mask = torch.zeros(batch, 1, fh, fw)
    label = torch.zeros(batch)
    return mask, label


@pytest.mark.parametrize("batch", [1, 2])
def test_train_forward_doubles_the_batch_with_noise(tiny_config, batch):
    model = tiny_model(tiny_config).train()
    mask, label = train_batch(batch)
    mask[0, 0, 2:4, 2:4] = 1
    label[0] = 1
    torch.manual_seed(5)
    map_logits, score, new_mask, new_label = model(images(batch), mask, label)
    assert map_logits.shape == (2 * batch, 1, 8, 8)
    assert score.shape == (2 * batch,)
    assert new_mask.shape == (2 * batch, 1, 8, 8)
    assert new_label.shape == (2 * batch,)
    # GT is kept in both copies
    assert torch.all(new_mask[0][mask[0] > 0] == 1) and torch.all(new_mask[batch][mask[0] > 0] == 1)
    assert new_label[0] == 1 and new_label[batch] == 1


def test_train_forward_without_noise_keeps_the_batch(tiny_config):
    model = tiny_model(tiny_config, noise=False).train()
    mask, label = train_batch(3)
    mask[1, 0, 3:6, 3:6] = 1
    label[1] = 1
    map_logits, score, new_mask, new_label = model(images(3), mask, label)
    assert map_logits.shape == (3, 1, 8, 8)
    assert score.shape == (3,)
    assert torch.equal(new_mask, mask)
    assert torch.equal(new_label, label)


def test_backbone_frozen_and_in_eval_mode_after_train(tiny_config):
    model = tiny_model(tiny_config)
    model.train()
    backbone_modules = list(model.feature_extractor.modules())
    backbone_modules = [m for m in backbone_modules if m is not model.feature_extractor]
    assert backbone_modules and all(not m.training for m in backbone_modules if list(m.parameters()))
    assert all(not m.training for m in model.feature_extractor.backbone.modules())
    assert all(not p.requires_grad for p in model.feature_extractor.parameters())
    # the trainable head is in training mode
    assert model.discriminator.seg[1].training and model.feature_adaptor.training

    running = {k: v.clone() for k, v in model.feature_extractor.state_dict().items()}
    inputs = images(2).requires_grad_(True)
    features = model.feature_extractor(inputs)
    assert not features.requires_grad
    mask, label = train_batch(2)
    model(images(2), mask, label)
    for key, value in model.feature_extractor.state_dict().items():
        assert torch.equal(value, running[key]), key  # BN statistics of the backbone never move

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    head = {id(p) for p in model.feature_adaptor.parameters()} | {id(p) for p in model.discriminator.parameters()}
    assert trainable == head


def score_loss_grads(model: SuperSimpleNet) -> dict[str, torch.Tensor | None]:
    model.train()
    mask, label = train_batch(2)
    torch.manual_seed(11)
    _, score, _, new_label = model(images(2), mask, label)
    model.zero_grad(set_to_none=True)
    focal_loss(torch.sigmoid(score), new_label).backward()
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def test_stop_grad_true_blocks_score_loss_from_seg_head(tiny_config):
    assert tiny_config["stop_grad"] is True
    model = tiny_model(tiny_config)
    grads = score_loss_grads(model)
    seg = {k: g for k, g in grads.items() if k.startswith("discriminator.seg.")}
    assert len(seg) == 5
    assert all(g is None or torch.count_nonzero(g) == 0 for g in seg.values())
    # the score loss still trains the detection branch and the adaptor
    assert torch.count_nonzero(grads["discriminator.dec_head.0.weight"]) > 0
    assert torch.count_nonzero(grads["discriminator.fc_score.weight"]) > 0
    assert torch.count_nonzero(grads["feature_adaptor.projection.weight"]) > 0


def test_stop_grad_false_lets_score_loss_reach_seg_head(tiny_config):
    model = tiny_model(tiny_config, stop_grad=False)
    grads = score_loss_grads(model)
    for key in ("discriminator.seg.0.weight", "discriminator.seg.1.weight", "discriminator.seg.3.weight"):
        assert grads[key] is not None and torch.count_nonzero(grads[key]) > 0, key


def hooked_forward(model: SuperSimpleNet, *args):
    store: dict = {}
    handles = [
        capture_outputs(model.feature_extractor, store, "raw"),
        capture_outputs(model.feature_adaptor, store, "adapted"),
        capture_outputs(model.discriminator.seg, store, "seg"),
        capture_outputs(model.discriminator.dec_head, store, "dec"),
    ]
    try:
        with torch.no_grad():
            out = model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return store, out


@pytest.mark.parametrize("adapt_cls_features", [True, False])
def test_eval_classification_branch_input(tiny_config, adapt_cls_features):
    model = tiny_model(tiny_config, **({} if adapt_cls_features else {"adapt_cls_features": False})).eval()
    store, _ = hooked_forward(model, images(2))
    seg_in = store["seg_in"][0]
    dec_in = store["dec_in"][0]
    c = 384
    assert dec_in.shape == (2, c + 1, 8, 8)
    assert torch.equal(seg_in, store["adapted"])  # the seg head always sees adapted features
    expected_cls = store["adapted"] if adapt_cls_features else store["raw"]
    assert torch.equal(dec_in[:, :c], expected_cls)
    assert torch.equal(dec_in[:, c:], store["seg"])  # the map is the last channel
    # raw and adapted features really differ, so the check above distinguishes the variants
    assert not torch.allclose(store["raw"], store["adapted"])


def test_score_head_pooling_order(tiny_config):
    """score = fc_score([max(dec_out), mean(dec_out), max(map), mean(map)]): the checkpoint's fc layout."""
    model = tiny_model(tiny_config).eval()
    store, (_, score) = hooked_forward(model, images(3))
    dec_out, anomaly_map = store["dec"], store["seg"]
    assert dec_out.shape == (3, 128, 8, 8)
    pooled = torch.cat(
        [dec_out.amax(dim=(2, 3)), dec_out.mean(dim=(2, 3)), anomaly_map.amax(dim=(2, 3)), anomaly_map.mean(dim=(2, 3))],
        dim=1,
    )
    fc = model.discriminator.fc_score
    expected = pooled @ fc.weight.detach().T + fc.bias.detach()
    assert torch.allclose(score, expected[:, 0], rtol=1e-5, atol=1e-5)
    swapped = torch.cat([pooled[:, 128:256], pooled[:, :128], pooled[:, 257:], pooled[:, 256:257]], dim=1)
    assert not torch.allclose(score, (swapped @ fc.weight.detach().T + fc.bias.detach())[:, 0], atol=1e-3)


@pytest.mark.parametrize("adapt_cls_features", [True, False])
def test_train_noise_reaches_both_branches(tiny_config, adapt_cls_features):
    model = tiny_model(tiny_config, **({} if adapt_cls_features else {"adapt_cls_features": False})).train()
    model.anomaly_generator.perlin = False  # the SimpleNet scheme: a known noise mask
    mask, label = train_batch(2)
    torch.manual_seed(2)
    store, _ = hooked_forward(model, images(2), mask, label)
    c = 384
    seg_in = store["seg_in"][0]
    cls_in = store["dec_in"][0][:, :c]
    adapted2 = torch.cat([store["adapted"]] * 2)
    raw2 = torch.cat([store["raw"]] * 2)
    seg_noise = seg_in - adapted2
    if adapt_cls_features:
        assert torch.equal(cls_in, seg_in)
    else:
        cls_noise = cls_in - raw2
        # the same noise on raw and adapted features (up to float rounding of x + n - x)
        scale = max(raw2.abs().max().item(), adapted2.abs().max().item())
        assert torch.allclose(cls_noise, seg_noise, rtol=0, atol=4 * scale * 2**-23)
        assert torch.equal(cls_noise[:2], torch.zeros_like(cls_noise[:2]))
    # perlin off: the first copy is clean, the second fully noised with std ~ noise_std
    assert torch.equal(seg_noise[:2], torch.zeros_like(seg_noise[:2]))
    # 49 152 draws: relative sd of the sample std 0.32%, 0.36% measured; 1.5% is 4.7 sd
    assert abs(seg_noise[2:].std().item() / 0.015 - 1) < 0.015


# --- anomaly generator ------------------------------------------------------------------------


def generator(fh=8, fw=8, **kwargs) -> AnomalyGenerator:
    settings = dict(noise_std=0.015, perlin=False, perlin_thr=0.2, no_anomaly="empty", bad=True, overlap=True)
    settings.update(kwargs)
    return AnomalyGenerator(feature_height=fh, feature_width=fw, **settings)


def hand_made_batch(channels=16, fh=8, fw=8):
    """3 samples: normal, anomalous with a 3x2 GT block, normal."""
    features = torch.randn(3, channels, fh, fw, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(3, 1, fh, fw)
    mask[1, 0, 2:5, 3:5] = 1
    label = torch.tensor([0.0, 1.0, 0.0])
    return features, mask, label


def noise_of(noised: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    return noised - torch.cat((features, features))


def test_generator_simplenet_scheme_duplicates_and_noises_second_copy():
    features, mask, label = hand_made_batch()
    torch.manual_seed(0)
    noised, new_mask, new_label, _ = generator()(features, mask, label)
    assert noised.shape == (6, 16, 8, 8) and new_mask.shape == (6, 1, 8, 8) and new_label.shape == (6,)
    assert torch.equal(noised[:3], features)
    assert torch.all(noise_of(noised, features)[3:] != 0)
    assert torch.equal(new_mask[:3], mask)
    assert torch.equal(new_mask[3:], torch.ones(3, 1, 8, 8))
    assert new_label.tolist() == [0, 1, 0, 1, 1, 1]


def test_generator_bad_false_keeps_anomalous_samples_clean():
    features, mask, label = hand_made_batch()
    torch.manual_seed(0)
    noised, new_mask, new_label, _ = generator(bad=False)(features, mask, label)
    noise = noise_of(noised, features)
    assert torch.equal(noise[1], torch.zeros_like(noise[1])) and torch.equal(noise[4], torch.zeros_like(noise[4]))
    assert torch.all(noise[3] != 0) and torch.all(noise[5] != 0)
    assert torch.equal(new_mask[4], mask[1])  # no noise mask added to the anomalous sample
    assert new_label.tolist() == [0, 1, 0, 1, 1, 1]


def test_generator_overlap_false_keeps_gt_region_clean():
    features, mask, label = hand_made_batch()
    torch.manual_seed(0)
    noised, new_mask, new_label, _ = generator(overlap=False)(features, mask, label)
    noise = noise_of(noised, features)
    gt = mask[1, 0] > 0
    assert torch.all(noise[4][:, gt] == 0)
    assert torch.all(noise[4][:, ~gt] != 0)
    assert torch.equal(new_mask[4], torch.ones(1, 8, 8))  # GT + noise mask cover everything
    assert torch.all(noise[3] != 0)


def test_generator_overlap_true_noises_the_gt_region():
    features, mask, label = hand_made_batch()
    torch.manual_seed(0)
    noised, _, _, _ = generator(overlap=True)(features, mask, label)
    assert torch.all(noise_of(noised, features)[4] != 0)


def test_generator_noise_statistics_and_sharing():
    features = torch.zeros(4, 64, 8, 8)
    other = torch.randn(4, 64, 8, 8)
    mask, label = torch.zeros(4, 1, 8, 8), torch.zeros(4)
    torch.manual_seed(1)
    a, _, _, b = generator()(features, mask, label, raw=other)
    noise = a[4:]  # features are zero: the output is the noise itself
    # 16 384 draws: sd of the mean 1.2e-4 (1.3e-4 measured), relative sd of the std 0.55% (0.49% measured)
    assert abs(noise.mean().item()) < 5e-4
    assert abs(noise.std().item() / 0.015 - 1) < 0.02
    # the same noise tensor is added to every feature tensor
    assert torch.allclose(b - torch.cat((other, other)), a, rtol=0, atol=1e-6)


def test_generator_perlin_noise_only_inside_perlin_mask_and_label_rule():
    torch.manual_seed(3)
    batch = 8
    features = torch.randn(batch, 8, 8, 8)
    mask = torch.zeros(batch, 1, 8, 8)
    mask[0, 0, :2, :2] = 1
    label = torch.zeros(batch)
    label[0] = 1
    label[1] = 1  # anomalous without a GT mask (label only)
    noised, new_mask, new_label, _ = generator(perlin=True, no_anomaly="empty")(features, mask, label)
    noise = noise_of(noised, features)
    has_noise = (noise != 0).any(dim=1, keepdim=True).float()
    gt2 = torch.cat((mask, mask))
    # new mask = (GT + noise mask) > 0, and noise exactly where the noise mask is
    assert torch.equal(new_mask, ((gt2 + has_noise) > 0).float())
    assert torch.all((noise != 0).all(dim=1) == (noise != 0).any(dim=1))  # a position is noised in all channels
    label2 = torch.cat((label, label))
    expected_label = ((label2 > 0) | new_mask.flatten(1).any(dim=1)).float()
    assert torch.equal(new_label, expected_label)
    # with Perlin, the first copy is not forced clean, and some samples stay clean ("empty")
    clean = ~has_noise.flatten(1).any(dim=1)
    assert has_noise[:batch].sum() > 0
    assert clean.any()
    assert new_label[1] == 1 and new_label[batch + 1] == 1


@pytest.mark.parametrize("no_anomaly, threshold, replaced_value", [("empty", -2.0, 0.0), ("full", 2.0, 1.0)])
def test_generator_no_anomaly_replaces_about_half(no_anomaly, threshold, replaced_value):
    # threshold -2 (resp. 2) makes every Perlin mask all ones (all zeros): only a replacement changes it
    batch = 500
    features, mask, label = torch.zeros(batch, 2, 8, 8), torch.zeros(batch, 1, 8, 8), torch.zeros(batch)
    torch.manual_seed(4)
    _, new_mask, _, _ = generator(perlin=True, perlin_thr=threshold, no_anomaly=no_anomaly)(features, mask, label)
    flat = new_mask.flatten(1)
    replaced = (flat == replaced_value).all(dim=1)
    kept = (flat == 1 - replaced_value).all(dim=1)
    assert torch.all(replaced | kept)
    # Binomial(1000, 0.5): sd 0.016, so +-0.06 is 3.8 sd; a rate of 0.3 or 0.7 is 12.6 sd away
    assert abs(replaced.float().mean().item() - 0.5) < 0.06


def test_generator_other_no_anomaly_keeps_perlin_masks():
    batch = 16
    features, mask, label = torch.zeros(batch, 2, 8, 8), torch.zeros(batch, 1, 8, 8), torch.zeros(batch)
    torch.manual_seed(4)
    _, new_mask, _, _ = generator(perlin=True, perlin_thr=-2.0, no_anomaly="none")(features, mask, label)
    assert torch.equal(new_mask, torch.ones(2 * batch, 1, 8, 8))


def test_perlin_masks_are_binary_and_threshold_reduces_them():
    gen_low = generator(fh=20, fw=29, perlin=True, perlin_thr=0.2, no_anomaly="none")
    gen_high = generator(fh=20, fw=29, perlin=True, perlin_thr=0.6, no_anomaly="none")
    assert (gen_low.perlin_height, gen_low.perlin_width) == (32, 32)
    assert (generator(fh=64, fw=64).perlin_height, generator(fh=64, fw=64).perlin_width) == (64, 64)
    assert (generator(fh=160, fw=58).perlin_height, generator(fh=160, fw=58).perlin_width) == (256, 64)
    torch.manual_seed(9)
    low = gen_low.perlin_masks(40)
    torch.manual_seed(9)
    high = gen_high.perlin_masks(40)
    assert low.shape == (40, 1, 20, 29) and high.shape == (40, 1, 20, 29)
    assert set(low.unique().tolist()) <= {0, 1} and set(high.unique().tolist()) <= {0, 1}
    # same noise, higher threshold: a subset, strictly fewer ones
    assert torch.all(high <= low)
    assert high.sum() < low.sum()
    assert 0 < low.float().mean() < 1


def test_perlin_mask_scales_grid_and_resize(monkeypatch):
    calls = []
    known = torch.linspace(-1, 1, 32 * 32).reshape(32, 32)

    def fake_perlin(shape, res):
        calls.append((tuple(shape), tuple(res)))
        return known.clone()

    monkeypatch.setattr(ssn_module, "rand_perlin_2d", fake_perlin)
    gen = generator(fh=20, fw=29, perlin=True, perlin_thr=0.1, no_anomaly="none")
    torch.manual_seed(0)
    masks = gen.perlin_masks(300)
    assert all(shape == (32, 32) for shape, _ in calls)
    scales_a = {res[0] for _, res in calls}
    scales_b = {res[1] for _, res in calls}
    assert scales_a == scales_b == {1, 2, 4, 8, 16, 32}
    resized = F.interpolate(known[None, None], size=(20, 29), mode="bilinear", align_corners=False)
    expected = (resized > 0.1).long()
    assert all(torch.equal(m.long(), expected[0]) for m in masks)


def test_perlin_scales_x_and_y_are_drawn_independently(monkeypatch):
    calls = []

    def recording(shape, res):
        calls.append(tuple(res))
        return torch.zeros(shape)

    monkeypatch.setattr(ssn_module, "rand_perlin_2d", recording)
    gen = generator(fh=32, fw=32, perlin=True, no_anomaly="none")  # a 32 x 32 grid: no scale is clamped
    torch.manual_seed(0)
    draws = 2000
    gen.perlin_masks(draws)
    assert len(calls) == draws
    scales = [1, 2, 4, 8, 16, 32]
    counts = {(a, b): calls.count((a, b)) for a in scales for b in scales}
    assert sum(counts.values()) == draws
    # every one of the 36 pairs, each about 1/36 of the draws (Binomial(2000, 1/36): mean 55.6, sd 7.3);
    # equal scales (a shared draw) would leave 30 pairs empty
    assert min(counts.values()) >= 25 and max(counts.values()) <= 86, counts
    equal = sum(counts[(s, s)] for s in scales)
    assert abs(equal / draws - 1 / 6) < 0.035  # Binomial(2000, 1/6): sd 0.0083


def test_perlin_masks_on_feature_maps_smaller_than_the_largest_scale(monkeypatch):
    # a 6x5 feature map has an 8x8 Perlin grid, which cannot hold 16 or 32 cells: those draws are clamped
    gen = generator(fh=6, fw=5, perlin=True, perlin_thr=0.0, no_anomaly="none")
    assert (gen.perlin_height, gen.perlin_width) == (8, 8)
    torch.manual_seed(0)
    masks = gen.perlin_masks(60)  # the real noise: must not fail
    assert masks.shape == (60, 1, 6, 5) and set(masks.unique().tolist()) <= {0, 1}
    calls = []
    real = ssn_module.rand_perlin_2d

    def recording(shape, res):
        calls.append(tuple(res))
        return real(shape, res)

    monkeypatch.setattr(ssn_module, "rand_perlin_2d", recording)
    torch.manual_seed(0)
    gen.perlin_masks(60)
    assert {r for pair in calls for r in pair} == {1, 2, 4, 8}


# --- checkpoint I/O ---------------------------------------------------------------------------


class ForeignObject:
    def __init__(self):
        self.value = 3


def _write_marker(path):
    with open(path, "w") as handle:
        handle.write("pwned")
    return 0


class Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


def test_save_load_round_trip(tiny_config, tmp_path):
    source = tiny_model(tiny_config)
    with torch.no_grad():
        for parameter in source.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.rand_like(parameter))
        source.discriminator.seg[1].running_mean.add_(0.5)
        source.discriminator.seg[1].num_batches_tracked.fill_(7)
    path = source.save_model(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "weights.pt"
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["weights.pt"]  # no temp files left

    loaded = torch.load(path, weights_only=True)
    assert type(loaded) is OrderedDict
    assert list(loaded.keys()) == EXPECTED_KEYS
    assert not any(k.startswith("feature_extractor") for k in loaded)

    target = tiny_model(tiny_config)
    assert not torch.equal(target.feature_adaptor.projection.weight, source.feature_adaptor.projection.weight)
    target.load_model(path)
    for key, value in source.trainable_state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key



def test_saved_bytes_are_deterministic(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    first = model.save_model(tmp_path / "a").read_bytes()
    second = model.save_model(tmp_path / "b").read_bytes()
    assert first == second


def test_save_overwrites_atomically(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    model.save_model(tmp_path)
    model.save_model(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["weights.pt"]


def assert_single_line_user_error(model, path):
    with pytest.raises(UserError) as info:
        model.load_model(path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def good_state(tiny_config):
    return tiny_model(tiny_config).trainable_state_dict()


def test_load_missing_file(tiny_config, tmp_path):
    message = assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "nope" / "weights.pt")
    assert "weights.pt" in message


def test_load_missing_key(tiny_config, tmp_path):
    state = good_state(tiny_config)
    del state["discriminator.fc_score.bias"]
    torch.save(state, tmp_path / "weights.pt")
    message = assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "weights.pt")
    assert "discriminator.fc_score.bias" in message


def test_load_unexpected_key(tiny_config, tmp_path):
    state = good_state(tiny_config)
    state["discriminator.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "weights.pt")
    message = assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "weights.pt")
    assert "discriminator.extra.weight" in message


def test_load_backbone_keys_are_unexpected(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert_single_line_user_error(model, tmp_path / "weights.pt")


def test_load_mis_shaped_tensor(tiny_config, tmp_path):
    state = good_state(tiny_config)
    state["feature_adaptor.projection.bias"] = torch.zeros(383)
    torch.save(state, tmp_path / "weights.pt")
    message = assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "weights.pt")
    assert "feature_adaptor.projection.bias" in message


def test_load_wrn50_checkpoint_into_resnet18_model(wrn50_model, tiny_config, tmp_path):
    wrn50_model.save_model(tmp_path)
    assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "weights.pt")


def test_load_random_bytes(tiny_config, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(os.urandom(4096))
    assert_single_line_user_error(tiny_model(tiny_config), path)


def test_load_empty_file(tiny_config, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"")
    assert_single_line_user_error(tiny_model(tiny_config), path)


def test_load_truncated_zip(tiny_config, tmp_path):
    model = tiny_model(tiny_config)
    full = model.save_model(tmp_path / "full")
    data = full.read_bytes()
    assert zipfile.is_zipfile(full)
    for fraction in (0.5, 0.9):
        path = tmp_path / f"weights_{fraction}.pt"
        path.write_bytes(data[: int(len(data) * fraction)])
        assert_single_line_user_error(model, path)


def test_load_pickle_with_foreign_object(tiny_config, tmp_path):
    state = dict(good_state(tiny_config))
    state["discriminator.fc_score.bias"] = ForeignObject()
    torch.save(state, tmp_path / "weights.pt")
    assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "weights.pt")


def test_load_non_dict_payload(tiny_config, tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "weights.pt")
    assert_single_line_user_error(tiny_model(tiny_config), tmp_path / "weights.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True])
def test_load_malicious_pickle_does_not_execute(tiny_config, tmp_path, legacy):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "weights.pt"
    payload = {"feature_adaptor.projection.weight": Malicious(marker)}
    if legacy:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    else:
        torch.save(payload, path)
    assert not marker.exists()
    assert_single_line_user_error(tiny_model(tiny_config), path)
    assert not marker.exists()
