"""engine/fit.py where the parts meet: the training step against hand computations (which
parameters move and by how much, which mask and weights the loss sees, gradient clipping), the
journal step (align_corners, is_segmented, loss weights), run settings reaching the anomaly
generator through `SuperSimpleNet.from_config`, fit_unit's step options, the optimiser and the
learning-rate schedule."""

import copy

import numpy as np
import pytest
import torch

import engine.fit as fit_module
import model.supersimplenet as ssn_module
from common.config import default_config
from datamodules.base import DatasetSplit, Sample
from engine.fit import StepOptions, build_optimizer, fit_unit, step_loss, train_step
from engine.outputs import TrainLayout
from tests.engine.helpers import (
    CPU,
    FEATURES,
    SIZE,
    expected_feature_mask,
    gt_band_mask,
    hand_loss,
    make_batch,
    tiny_model,
    write_rgb,
)

JOURNAL = {"adapt_cls_features": False}  # the journal model: classification branch on raw features


@pytest.fixture
def config(tiny_config) -> dict:
    return {**tiny_config, "image_size": [SIZE, SIZE]}


def record_forward(model):
    """Record the model's training forward: its arguments (images, mask, label) and outputs
    (map_logits, score_logits, mask, label)."""
    calls = []
    handle = model.register_forward_hook(lambda _m, args, output: calls.append((args, output)))
    return calls, handle


def supervised_batch(**kwargs) -> dict:
    """Sample 0 anomalous with `gt_band_mask`, sample 1 normal."""
    return make_batch([1, 0], masks=[gt_band_mask(), torch.zeros(SIZE, SIZE)], **kwargs)


def seg_gradients(model) -> dict[str, torch.Tensor | None]:
    return {name: p.grad for name, p in model.discriminator.seg.named_parameters()}


# --- one optimiser step ----------------------------------------------------------------------


@pytest.mark.parametrize("journal", [False, True])
def test_one_step_moves_exactly_the_trainable_parameters_by_the_adamw_rule(config, journal):
    model = tiny_model(config, **(JOURNAL if journal else {}))
    optimizer, _ = build_optimizer(model, config)
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    calls, handle = record_forward(model)
    torch.manual_seed(3)
    loss = train_step(model, supervised_batch(), optimizer, CPU, StepOptions(clip_grad=False, journal=journal))
    handle.remove()

    # the returned loss is the loss of what the model produced
    (_, (map_logits, score_logits, mask, label)), = calls
    assert loss == pytest.approx(hand_loss(map_logits, score_logits, mask, label), rel=1e-5)

    # frozen backbone: parameters and buffers untouched
    frozen = [name for name in before if name.startswith("feature_extractor.")]
    assert frozen
    for name in frozen:
        assert torch.equal(model.state_dict()[name], before[name]), name

    # every trainable parameter took AdamW's first step with its group's lr and weight decay:
    # p <- p (1 - lr wd) - lr g / (|g| + eps)   (bias-corrected first and second moments are g and g^2)
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 13
    for name, parameter in trainable:
        group = groups[id(parameter)]
        lr, decay = group["lr"], group["weight_decay"]
        old = before[name].double()
        grad = parameter.grad.double()
        expected = old * (1 - lr * decay) - lr * grad / (grad.abs() + 1e-8)
        moved = (parameter.detach().double() - old).abs().max().item()
        assert moved > 0.5 * lr, name  # a real step, not a rounding
        error = (parameter.detach().double() - expected).abs().max().item()
        assert error < 1e-3 * lr + 2e-7 * old.abs().max().item(), (name, error, lr)


@pytest.mark.parametrize("journal", [False, True])
def test_step_loss_sees_the_downsampled_gt_mask(config, journal):
    # without the anomaly generator, the mask the loss sees is the GT mask itself
    model = tiny_model(config, noise=False, **(JOURNAL if journal else {}))
    calls, handle = record_forward(model)
    loss = step_loss(model, supervised_batch(), CPU, journal)
    handle.remove()
    (args, (map_logits, score_logits, mask, label)), = calls
    expected = torch.stack([expected_feature_mask(align_corners=journal), torch.zeros(FEATURES, FEATURES)])[:, None]
    assert torch.equal(args[1], expected)
    assert torch.equal(mask, expected)
    assert label.tolist() == [1.0, 0.0]
    assert loss.item() == pytest.approx(hand_loss(map_logits, score_logits, expected, label), rel=1e-5)
    # the mask matters to the loss: an empty mask gives a clearly different value
    without_mask = hand_loss(map_logits, score_logits, torch.zeros_like(expected), label)
    assert abs(without_mask - loss.item()) > 0.01


@pytest.mark.parametrize("journal", [False, True])
def test_step_with_the_generator_keeps_the_gt_mask_in_both_copies(config, journal):
    model = tiny_model(config, **(JOURNAL if journal else {}))
    calls, handle = record_forward(model)
    torch.manual_seed(5)
    loss = step_loss(model, supervised_batch(), CPU, journal)
    handle.remove()
    (args, (map_logits, score_logits, mask, label)), = calls
    gt = expected_feature_mask(align_corners=journal)
    assert torch.equal(args[1][0, 0], gt)
    assert mask.shape == (4, 1, FEATURES, FEATURES)
    for copy_index in (0, 2):  # sample 0 and its noised copy
        assert torch.all(mask[copy_index, 0][gt > 0] == 1)
    assert label[0] == 1 and label[2] == 1
    assert loss.item() == pytest.approx(hand_loss(map_logits, score_logits, mask, label), rel=1e-5)


@pytest.mark.parametrize("journal", [False, True])
def test_clip_grad_scales_the_gradient_to_norm_one(config, journal):
    plain = tiny_model(config, **(JOURNAL if journal else {}))
    clipped = copy.deepcopy(plain)
    batch = supervised_batch()
    for model, clip in ((plain, False), (clipped, True)):
        optimizer, _ = build_optimizer(model, config)
        torch.manual_seed(7)  # the same anomaly-generator draws for both
        train_step(model, batch, optimizer, CPU, StepOptions(clip_grad=clip, journal=journal))

    def gradients(model):
        return {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}

    raw, scaled = gradients(plain), gradients(clipped)
    assert raw.keys() == scaled.keys() and len(raw) >= 8
    raw_norm = torch.sqrt(sum((g**2).sum() for g in raw.values())).item()
    scaled_norm = torch.sqrt(sum((g**2).sum() for g in scaled.values())).item()
    assert raw_norm > 5  # far above 1 (about 50 measured), so clipping must act
    assert scaled_norm == pytest.approx(1.0, abs=2e-4)  # float32 sums: 4e-5 measured
    for name, g in raw.items():  # the same direction: every gradient divided by the total norm
        assert torch.allclose(scaled[name], g / raw_norm, rtol=1e-4, atol=1e-9), name


# --- the journal step --------------------------------------------------------------------------


def test_journal_step_with_unsegmented_samples_leaves_the_seg_head_without_gradient(config):
    assert config["stop_grad"] is True  # the score loss does not reach the seg head either
    model = tiny_model(config, **JOURNAL)
    batch = make_batch([1, 1], masks=[gt_band_mask(), gt_band_mask()], is_segmented=[False, False])
    calls, handle = record_forward(model)
    torch.manual_seed(2)
    loss = step_loss(model, batch, CPU, journal=True)
    handle.remove()
    loss.backward()
    (_, (map_logits, score_logits, mask, label)), = calls
    seg = seg_gradients(model)
    assert len(seg) == 5
    assert all(g is None or torch.count_nonzero(g) == 0 for g in seg.values()), seg.keys()
    assert torch.count_nonzero(model.discriminator.fc_score.weight.grad) > 0
    # only the score term is left
    none = torch.zeros(4, dtype=torch.bool)
    assert loss.item() == pytest.approx(hand_loss(map_logits, score_logits, mask, label, selected=none), rel=1e-5)

    # the same batch with its masks marked segmented does train the seg head
    model = tiny_model(config, **JOURNAL)
    torch.manual_seed(2)
    step_loss(model, {**batch, "is_segmented": torch.tensor([True, True])}, CPU, journal=True).backward()
    assert torch.count_nonzero(model.discriminator.seg[3].weight.grad) > 0


def test_journal_step_counts_the_maps_of_segmented_samples_and_their_copies_only(config):
    model = tiny_model(config, **JOURNAL)
    batch = make_batch([1, 1], masks=[gt_band_mask(), gt_band_mask()], is_segmented=[True, False])
    calls, handle = record_forward(model)
    torch.manual_seed(4)
    loss = step_loss(model, batch, CPU, journal=True).item()
    handle.remove()
    (_, (map_logits, score_logits, mask, label)), = calls
    selected = torch.tensor([True, False, True, False])  # the batch, then its noised copy
    assert loss == pytest.approx(hand_loss(map_logits, score_logits, mask, label, selected=selected), rel=1e-5)
    for wrong in (None, torch.tensor([True, True, False, False])):
        assert abs(hand_loss(map_logits, score_logits, mask, label, selected=wrong) - loss) > 1e-3


def test_journal_weight_map_is_downsampled_and_weights_the_map_terms(config):
    model = tiny_model(config, **JOURNAL)
    # weights rising linearly along x: bilinear resizing with align_corners=True keeps them linear,
    # 1 + 3x/31 at source column x -> 1 + 3j/7 at feature column j
    ramp = 1 + 3 * torch.arange(SIZE, dtype=torch.float32) / (SIZE - 1)
    weights = torch.stack([ramp.expand(SIZE, SIZE), torch.ones(SIZE, SIZE)])
    feature_ramp = (1 + 3 * torch.arange(FEATURES, dtype=torch.float64) / (FEATURES - 1)).expand(FEATURES, FEATURES)
    expected_weight = torch.stack([feature_ramp, torch.ones(FEATURES, FEATURES, dtype=torch.float64)])[:, None]
    expected_weight = torch.cat([expected_weight, expected_weight])  # repeated for the noised copy

    calls, handle = record_forward(model)
    torch.manual_seed(6)
    weighted = step_loss(model, supervised_batch(loss_weight=weights), CPU, journal=True).item()
    handle.remove()
    (_, (map_logits, score_logits, mask, label)), = calls
    assert weighted == pytest.approx(
        hand_loss(map_logits, score_logits, mask, label, weight=expected_weight), rel=1e-5
    )
    unweighted = hand_loss(map_logits, score_logits, mask, label)
    assert abs(weighted - unweighted) > 0.05 * unweighted


def test_icpr_step_ignores_is_segmented_and_loss_weight(config):
    model = tiny_model(config)
    batch = supervised_batch(is_segmented=[False, False], loss_weight=torch.full((2, SIZE, SIZE), 3.0))
    calls, handle = record_forward(model)
    torch.manual_seed(8)
    loss = step_loss(model, batch, CPU, journal=False).item()
    handle.remove()
    (_, (map_logits, score_logits, mask, label)), = calls
    assert loss == pytest.approx(hand_loss(map_logits, score_logits, mask, label), rel=1e-5)


# --- run settings reach the anomaly generator --------------------------------------------------


def record_generator(model):
    """Record the anomaly generator's inputs and outputs during a training forward."""
    calls = []
    handle = model.anomaly_generator.register_forward_hook(lambda _m, args, output: calls.append((args, output)))
    return calls, handle


def column_ramp_perlin(monkeypatch):
    """Replace the Perlin noise with a column ramp: value -0.875 + 0.25 j at column j (8 x 8, the
    Perlin grid of 8 x 8 features, so the resize is the identity)."""
    ramp = (-0.875 + 0.25 * torch.arange(FEATURES, dtype=torch.float32)).expand(FEATURES, FEATURES).clone()
    calls = []

    def fake(shape, res):
        calls.append(tuple(res))
        assert tuple(shape) == (FEATURES, FEATURES)
        return ramp.clone()

    monkeypatch.setattr(ssn_module, "rand_perlin_2d", fake)
    return calls


def test_noise_std_setting_reaches_the_generator(config):
    model = SuperSimpleNet_from(config, noise_std=0.05, no_anomaly="none", perlin_thr=-0.9)
    calls, handle = record_generator(model)
    torch.manual_seed(0)
    model(make_batch([0] * 4)["image"], torch.zeros(4, 1, FEATURES, FEATURES), torch.zeros(4))
    handle.remove()
    ((adapted, _, _, _), (noised, new_mask, _, _)), = calls
    noise = noised - torch.cat((adapted, adapted))
    inside = noise.permute(1, 0, 2, 3)[:, new_mask[:, 0] > 0]  # channels x noised positions
    assert inside.numel() > 100_000
    # ~200 000 draws: the sample std has a relative sd of 0.16% (0.2% measured at most over 4 seeds),
    # the mean an sd of 1.1e-4; the bounds are about 4 sd. The default 0.015 is far outside.
    assert inside.std().item() == pytest.approx(0.05, rel=0.006)
    assert abs(inside.mean().item()) < 0.0005
    assert torch.all(noise.permute(1, 0, 2, 3)[:, new_mask[:, 0] == 0] == 0)


def test_perlin_thr_setting_reaches_the_generator(config, monkeypatch):
    column_ramp_perlin(monkeypatch)
    # ramp values -0.875 ... 0.875; > -0.3 holds from column 3 on (-0.125); the default 0.2 would start at 5
    model = SuperSimpleNet_from(config, perlin_thr=-0.3, no_anomaly="none")
    calls, handle = record_generator(model)
    torch.manual_seed(0)
    model(make_batch([0] * 3)["image"], torch.zeros(3, 1, FEATURES, FEATURES), torch.zeros(3))
    handle.remove()
    (_, (_, new_mask, new_label, _)), = calls
    expected = torch.zeros(FEATURES, FEATURES)
    expected[:, 3:] = 1
    assert torch.equal(new_mask, expected.expand(6, 1, FEATURES, FEATURES))
    assert new_label.tolist() == [1.0] * 6


@pytest.mark.parametrize("no_anomaly, replacement", [("empty", 0.0), ("full", 1.0), ("none", None)])
def test_no_anomaly_setting_reaches_the_generator_at_rate_one_half(config, monkeypatch, no_anomaly, replacement):
    column_ramp_perlin(monkeypatch)
    # "empty" is the default; "full" and "none" show that the setting arrives
    model = tiny_model(config, perlin_thr=0.0, no_anomaly=no_anomaly)  # ramp mask: columns 4-7
    perlin = torch.zeros(FEATURES, FEATURES, dtype=torch.int64)
    perlin[:, 4:] = 1
    torch.manual_seed(1)
    draws = 4000
    masks = model.anomaly_generator.perlin_masks(draws)[:, 0]
    kept = (masks == perlin).flatten(1).all(dim=1)
    if replacement is None:
        assert kept.all()
        return
    replaced = (masks == int(replacement)).flatten(1).all(dim=1)
    assert torch.all(kept ^ replaced)
    # Binomial(4000, 1/2): sd 0.008, so +-0.03 is 3.8 sd; a rate of 0.3 or 0.7 is 25 sd away
    assert abs(replaced.float().mean().item() - 0.5) < 0.03


def test_no_anomaly_in_the_training_forward(config, monkeypatch):
    column_ramp_perlin(monkeypatch)
    model = SuperSimpleNet_from(config, perlin_thr=0.0, no_anomaly="full")
    calls, handle = record_generator(model)
    torch.manual_seed(3)
    model(make_batch([0] * 16)["image"], torch.zeros(16, 1, FEATURES, FEATURES), torch.zeros(16))
    handle.remove()
    (_, (_, new_mask, _, _)), = calls
    full = new_mask.flatten(1).all(dim=1)
    assert 6 <= int(full.sum()) <= 26  # Binomial(32, 1/2) +- 3.5 sd; "empty" or "none" give 0


def SuperSimpleNet_from(config: dict, **settings):
    """A tiny model built through SuperSimpleNet.from_config from the settings dict with `settings`
    changed; each must differ from its default, or a setting lost on the way would go unseen."""
    for name, value in settings.items():
        assert value != config[name], f"{name}={value} is the default"
    return tiny_model(config, **settings)


# --- fit_unit: the run's settings reach the step ----------------------------------------------


def tiny_split(root) -> DatasetSplit:
    rng = np.random.default_rng(0)
    train = [
        Sample(write_rgb(root / "train" / "good" / f"{i}.png", rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)), "", 0)
        for i in range(2)
    ]
    test = [
        Sample(write_rgb(root / "test" / "good" / "0.png", rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)), "", 0),
        Sample(write_rgb(root / "test" / "bad" / "1.png", rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)), "", 1),
    ]
    return DatasetSplit("tiny", "cat", train, test, (SIZE, SIZE), info={"pixel_metrics": False})


@pytest.mark.parametrize("version, clip_grad", [("icpr", True), ("icpr", False), ("jims", True)])
def test_fit_unit_passes_clip_grad_and_version_to_every_step(tmp_path, monkeypatch, version, clip_grad):
    config = default_config("mvtec", version)
    config.update(
        backbone="resnet18", pretrained=False, image_size=[SIZE, SIZE], batch=2, epochs=2, num_workers=0,
        clip_grad=clip_grad, eval_step_size=100,
    )
    seen = []
    real_step = fit_module.train_step

    def recording_step(model, batch, optimizer, device, options):
        seen.append((options, model.adapt_cls_features))
        return real_step(model, batch, optimizer, device, options)

    monkeypatch.setattr(fit_module, "train_step", recording_step)
    layout = TrainLayout(tmp_path / "results", "tiny")
    values, _, tag = fit_unit(tiny_split(tmp_path / "data"), config, CPU, layout, save_figures=False, progress=False)
    assert len(seen) == 2  # 2 epochs of one batch
    assert all(options == StepOptions(clip_grad=clip_grad, journal=version == "jims") for options, _ in seen)
    assert all(adapt is (version == "icpr") for _, adapt in seen)
    assert tag == "random"
    assert values["P-AUROC"] is None
    assert (layout.checkpoint_dir("cat") / "weights.pt").is_file()


# --- optimiser and schedule -------------------------------------------------------------------


def test_optimizer_groups(config):
    model = tiny_model(config)
    config = {**config, "adapt_lr": 1e-4, "seg_lr": 2e-4, "dec_lr": 3e-4, "epochs": 300, "gamma": 0.4}
    optimizer, scheduler = build_optimizer(model, config)
    assert type(optimizer) is torch.optim.AdamW
    assert type(scheduler) is torch.optim.lr_scheduler.MultiStepLR
    groups = optimizer.param_groups
    assert len(groups) == 3
    assert [g["lr"] for g in groups] == [1e-4, 2e-4, 3e-4]
    assert [g["weight_decay"] for g in groups] == [0.01, 1e-5, 1e-5]
    ids = [[id(p) for p in g["params"]] for g in groups]
    assert set(ids[0]) == {id(p) for p in model.feature_adaptor.parameters()}
    assert set(ids[1]) == {id(p) for p in model.discriminator.seg.parameters()}
    assert set(ids[2]) == {id(p) for p in model.discriminator.dec_head.parameters()} | {
        id(p) for p in model.discriminator.fc_score.parameters()
    }
    flat = [i for group in ids for i in group]
    assert len(flat) == len(set(flat))  # each parameter once
    assert set(flat) == {id(p) for p in model.parameters() if p.requires_grad}


def lr_per_epoch(model, config, epochs):
    optimizer, scheduler = build_optimizer(model, {**config, "epochs": epochs})
    history = []
    for _ in range(epochs):
        history.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return history


def test_schedule_300_epochs(config):
    model = tiny_model(config)
    config = {**config, "adapt_lr": 1e-4, "seg_lr": 2e-4, "dec_lr": 2e-4, "gamma": 0.4}
    history = lr_per_epoch(model, config, 300)
    base = [1e-4, 2e-4, 2e-4]
    assert history[0] == base
    assert history[239] == base
    assert history[240] == pytest.approx([v * 0.4 for v in base], rel=1e-12)
    assert history[269] == pytest.approx([v * 0.4 for v in base], rel=1e-12)
    assert history[270] == pytest.approx([v * 0.16 for v in base], rel=1e-12)
    assert history[299] == pytest.approx([v * 0.16 for v in base], rel=1e-12)
    changes = [e for e in range(1, 300) if history[e] != history[e - 1]]
    assert changes == [240, 270]


def test_schedule_float_milestones_never_decay(config):
    model = tiny_model(config)
    config = {**config, "adapt_lr": 1e-4, "seg_lr": 2e-4, "dec_lr": 2e-4, "gamma": 0.4}
    history = lr_per_epoch(model, config, 12)  # milestones 9.6 and 10.8: never reached
    assert all(lrs == [1e-4, 2e-4, 2e-4] for lrs in history)
    history = lr_per_epoch(model, config, 10)  # milestones 8.0 and 9.0: whole numbers, they decay
    changes = [e for e in range(1, 10) if history[e] != history[e - 1]]
    assert changes == [8, 9]
