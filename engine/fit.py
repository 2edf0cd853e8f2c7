"""The training loop of one unit: seed, loaders, optimiser, the training step, periodic
evaluation (monitoring only), the last-epoch checkpoint, the final evaluation and its files."""

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from common.errors import Preempted, UserError
from common.fileio import DiskFull, check_free_space
from common.loss import downsample_mask, downsample_weights, supersimplenet_loss
from common.seeding import seed_everything
from datamodules.base import DatasetSplit, MaskProcessing
from datamodules.sampling import make_train_loader
from deploy.calibrate import calibrate_on_normal_images
from engine.evaluate import check_finite, evaluate, format_metrics, make_test_loader, predict
from engine.outputs import TrainLayout, unit_output_bytes, write_figures, write_scores_json
from engine.resume import StopRequest, resume_path, save_resume, start_epoch
from model.card import backbone_description, backbone_weights_tag, make_card, write_model_card
from model.supersimplenet import SuperSimpleNet


def build_optimizer(
    model: SuperSimpleNet, config: dict[str, Any]
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.MultiStepLR]:
    """AdamW with the three published parameter groups, and MultiStepLR stepped once per epoch
    (docs/method.md, "Optimisation").

    Milestones: we pass the float products 0.8*epochs and 0.9*epochs exactly as the published
    code does. MultiStepLR compares them to the integer epoch counter, so when a product is not
    a whole number that milestone is never reached (e.g. 12 epochs: 9.6 and 10.8 never decay).
    Keeping this rule keeps published configurations bit-compatible.
    """
    optimizer = torch.optim.AdamW(
        [
            {"params": model.feature_adaptor.parameters(), "lr": config["adapt_lr"]},
            {"params": model.discriminator.seg_parameters(), "lr": config["seg_lr"], "weight_decay": 1e-5},
            {"params": model.discriminator.dec_parameters(), "lr": config["dec_lr"], "weight_decay": 1e-5},
        ]
    )
    epochs = config["epochs"]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[epochs * 0.8, epochs * 0.9], gamma=config["gamma"]
    )
    return optimizer, scheduler


@dataclass(frozen=True)
class StepOptions:
    """What changes between versions inside a training step."""

    clip_grad: bool
    journal: bool  # align_corners=True downsampling, is_segmented and loss weights


def step_loss(model: SuperSimpleNet, batch: dict[str, Any], device: torch.device, journal: bool) -> torch.Tensor:
    """The loss of one batch (docs/method.md, "Loss" and "Journal version"): GT masks (and
    journal loss weights) are downsampled to the feature size and duplicated with the batch."""
    images = batch["image"].to(device)
    mask = downsample_mask(batch["mask"].to(device), model.fh, model.fw, align_corners=journal)
    label = torch.as_tensor(batch["label"], device=device).float()
    map_logits, score_logits, mask, label = model(images, mask, label)
    if not journal:
        return supersimplenet_loss(map_logits, score_logits, mask, label)
    copies = map_logits.shape[0] // images.shape[0]  # 2 with the anomaly generator, 1 without
    is_segmented = torch.as_tensor(batch["is_segmented"], device=device).bool().repeat(copies)
    loss_weight = None
    if "loss_weight" in batch:
        loss_weight = downsample_weights(batch["loss_weight"].to(device), model.fh, model.fw).repeat(copies, 1, 1, 1)
    return supersimplenet_loss(map_logits, score_logits, mask, label, is_segmented, loss_weight)


def train_step(
    model: SuperSimpleNet, batch: dict[str, Any], optimizer: torch.optim.Optimizer, device: torch.device,
    options: StepOptions,
) -> float:
    """One optimiser step on `batch`; returns the loss."""
    optimizer.zero_grad()
    loss = step_loss(model, batch, device, options.journal)
    loss.backward()
    if options.clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


# settings that do not change what a unit learns; a resume file of other settings is refused
NOT_LEARNED = ("num_workers", "eval_step_size", "checkpoint_every", "wandb_project", "setup_name")


def fit_unit(
    split: DatasetSplit,
    config: dict[str, Any],
    device: torch.device,
    layout: TrainLayout,
    save_figures: bool = True,
    progress: bool = True,
    logger: Any = None,
    resume: str = "continue",
    regime: str = "",
    after_evaluation: Callable[..., Any] | None = None,
) -> tuple[dict[str, float | None], list[str], str]:
    """Train one model on `split`, save its last-epoch checkpoint, evaluate it once more and
    write its scores and figures. Returns (metrics, notes, backbone weights tag).

    `resume` is the --resume mode (engine/resume.py `start_epoch`). Every `checkpoint_every`
    epochs, and when SIGTERM/SIGUSR1 arrives (then at the end of the epoch, raising Preempted),
    `resume.pt` is written; it is removed by the caller once the unit's results are saved. Before
    the first epoch the results folder's free space is checked against what the unit will write;
    a write that still fails for lack of space is one UserError saying which resume.pt is kept.
    `after_evaluation(predictions, values, notes, thresholds, tag)` is called once the final
    evaluation is done (the run report's unit data)."""
    journal = config["version"] == "jims"
    checkpoint_dir = layout.checkpoint_dir(split.category)
    split.check_mask_sizes()
    split, calibration_images = split.hold_out_normals(config["calibration_split"], config["seed"])
    if calibration_images:
        print(f"  {len(calibration_images)} normal training images held back to calibrate thresholds")
    seed_everything(config["seed"])
    model = SuperSimpleNet.from_config(split.image_size, config).to(device)
    print(f"  backbone: {backbone_description(model)}; features {model.fh}x{model.fw}")
    trainable_bytes = sum(t.numel() * t.element_size() for t in model.trainable_state_dict().values())
    check_free_space(checkpoint_dir, unit_output_bytes(trainable_bytes, len(split.test), split.image_size, save_figures),
                     f"training {layout.dataset}/{split.category}")
    processing = MaskProcessing.from_config(config) if split.supervised else None
    train_loader = make_train_loader(
        split, config["batch"], config["num_workers"], config["flips"], config["seed"], processing
    )
    evaluation_loader = make_test_loader(split, config["batch"], config["num_workers"])
    optimizer, scheduler = build_optimizer(model, config)
    options = StepOptions(clip_grad=config["clip_grad"], journal=journal)

    fingerprint = {key: value for key, value in config.items() if key not in NOT_LEARNED}
    if config.get("backbone_weights"):  # the file's content, not only its name (absent: resume.pt of before)
        fingerprint["backbone_weights"] = [config["backbone_weights"], model.feature_extractor.weights_source["sha256"]]
    else:
        fingerprint.pop("backbone_weights", None)
    fingerprint.update(unit=split.category, image_size=list(split.image_size))
    saved_state = resume_path(checkpoint_dir)
    first_epoch, held_epochs = start_epoch(resume, saved_state, model, optimizer, scheduler, train_loader, fingerprint)
    saved_epoch = first_epoch if first_epoch else held_epochs  # what the resume.pt on disk holds

    def kept() -> str:
        if saved_state.is_file() and saved_epoch:
            return (f"{saved_state} is kept (epoch {saved_epoch} of {config['epochs']}): free some space, then run "
                    "the same command again to continue from it")
        return "no resume.pt was written yet for this unit: free some space, then run the same command again"

    epochs = config["epochs"]
    # without progress bars, a line every evaluation step and at least every tenth of the run
    line_every = min(config["eval_step_size"], max(1, math.ceil(epochs / 10)))
    started = time.perf_counter()
    epoch_bar = tqdm(range(first_epoch, epochs), desc=f"{split.category}", unit="epoch", disable=not progress,
                     initial=first_epoch, total=epochs)
    try:
        with StopRequest().listening() as stop:
            for epoch in epoch_bar:
                epoch_loss = train_epoch(model, train_loader, optimizer, device, options,
                                         f"{split.name}/{split.category}", epoch)
                epoch_bar.set_postfix(loss=f"{epoch_loss:.4f}")
                log = {"epoch": epoch + 1, "loss": epoch_loss}
                # periodic evaluation is for monitoring only: the checkpoint is always the last epoch
                if (epoch + 1) % config["eval_step_size"] == 0 and epoch + 1 < epochs:
                    values, _ = evaluate(predict(model, evaluation_loader, device, False, journal), split)
                    tqdm.write(f"  epoch {epoch + 1}/{epochs}: loss {epoch_loss:.4f}  {format_metrics(values)}")
                    log.update({k: v for k, v in values.items() if v is not None})
                elif not progress and ((epoch + 1) % line_every == 0 or epoch + 1 == epochs):
                    print(f"  epoch {epoch + 1}/{epochs}: loss {epoch_loss:.4f} ({time.perf_counter() - started:.0f} s)",
                          flush=True)
                if logger is not None:
                    logger.log(log)
                scheduler.step()
                # a resume.pt that holds more epochs (of an earlier run) is never replaced by one with fewer
                more_than_held = epoch + 1 > held_epochs
                if epoch + 1 < epochs and more_than_held and (stop or (epoch + 1) % config["checkpoint_every"] == 0):
                    save_resume(saved_state, epoch + 1, model, optimizer, scheduler, train_loader, fingerprint)
                    saved_epoch = epoch + 1
                if stop and epoch + 1 < epochs:
                    where = (f"{saved_state} holds epoch {epoch + 1} of {epochs}; run the same command again to "
                             "continue" if more_than_held else
                             f"{saved_state} of an earlier run holds more ({held_epochs} epochs) and is kept; this "
                             f"run's {epoch + 1} epoch(s) are not saved")
                    raise Preempted(f"{stop.signal_name} during {layout.dataset}/{split.category}: {where}")

        tag = backbone_weights_tag(model)
        checkpoint = model.save_model(checkpoint_dir)
        card = make_card(config, model, layout.dataset, split.category, tag, regime_record(split, regime))
        if calibration_images:
            card["thresholds"] = calibrate_on_normal_images(
                model, [s.image_path for s in calibration_images], split.image_size, device, journal=journal)
            print(f"  calibrated thresholds: image {card['thresholds']['image']:.4f}, "
                  f"pixel {card['thresholds']['pixel']:.4f}")
        write_model_card(checkpoint_dir, card)
        print(f"  checkpoint: {checkpoint} (+ model.yaml)")
        predictions = predict(model, evaluation_loader, device, progress, journal)
        check_finite(predictions, f"the model trained on {split.name}/{split.category}")
        values, notes = evaluate(predictions, split)
        write_scores_json(layout.scores_path(split.category), predictions, tag, config["version"], regime)
        if after_evaluation is not None:
            after_evaluation(predictions, values, notes, card["thresholds"], tag)
        if save_figures:
            write_figures(layout.figures_dir(split.category), predictions, progress=progress,
                          pixel_threshold=card["thresholds"].get("pixel"), maps_are_probabilities=journal)
    except DiskFull as full:
        raise UserError(f"{full}; {kept()}") from None
    return values, notes, tag


def regime_record(split: DatasetSplit, regime: str) -> dict[str, Any]:
    """What model.yaml says of the supervision: the regime's name and the training defects it had."""
    labels_only = len(split.train_weak)
    return {"name": regime, "defects_with_masks": len(split.train_anomalous) - labels_only,
            "defects_with_labels_only": labels_only, "normal_images": len(split.train_normal)}


def train_epoch(model: SuperSimpleNet, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                options: StepOptions, unit: str, epoch: int) -> float:
    """One pass over the training loader; returns the mean loss. A non-finite loss stops the unit
    before anything is written for it (files of earlier units and runs are kept)."""
    model.train()
    losses = [train_step(model, batch, optimizer, device, options) for batch in loader]
    epoch_loss = float(np.mean(losses)) if losses else float("nan")
    if not np.isfinite(epoch_loss):
        raise UserError(
            f"{unit}: the training loss became {epoch_loss} at epoch {epoch + 1}; no checkpoint was written for "
            "this unit (earlier files are kept): lower the learning rates or noise_std, or turn on clip_grad"
        )
    return epoch_loss
