"""The training loop of one unit (category) and its bookkeeping: seed, loaders, optimiser,
periodic evaluation, last-epoch checkpoint, final evaluation and result files."""

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.evaluation import (
    evaluate,
    format_metrics,
    predict,
    make_test_loader,
    write_figures,
    write_scores_json,
)
from common.loss import downsample_mask, supersimplenet_loss
from datamodules.base import DatasetSplit
from datamodules.sampling import make_train_loader
from model.supersimplenet import SuperSimpleNet, build_optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def backbone_description(model: SuperSimpleNet, config: dict[str, Any]) -> str:
    if model.uses_pretrained_backbone:
        return f"{config['backbone']} with ImageNet IMAGENET1K_V1 weights"
    return f"{config['backbone']} with RANDOM weights (pretrained=false): not comparable to the paper"


def backbone_weights_tag(model: SuperSimpleNet) -> str:
    return "imagenet" if model.uses_pretrained_backbone else "random"


@dataclass
class UnitOutputs:
    """Where one unit's files go."""

    checkpoint_dir: Path
    scores_path: Path
    figures_dir: Path


def train_step(
    model: SuperSimpleNet, batch: dict[str, Any], optimizer: torch.optim.Optimizer, device: torch.device, clip_grad: bool
) -> float:
    images = batch["image"].to(device)
    mask = downsample_mask(batch["mask"].to(device), model.fh, model.fw)
    label = torch.as_tensor(batch["label"], device=device).float()
    optimizer.zero_grad()
    map_logits, score_logits, mask, label = model(images, mask, label)
    loss = supersimplenet_loss(map_logits, score_logits, mask, label)
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def train_unit(
    split: DatasetSplit,
    config: dict[str, Any],
    device: torch.device,
    outputs: UnitOutputs,
    save_figures: bool = True,
    progress: bool = True,
    logger: Any = None,
) -> tuple[dict[str, float | None], list[str], str]:
    """Train one model on `split`, save its last-epoch checkpoint, evaluate it once more and
    write its scores and figures. Returns (metrics, notes, backbone weights tag)."""
    seed_everything(config["seed"])
    model = SuperSimpleNet(image_size=split.image_size, config=config).to(device)
    print(f"  backbone: {backbone_description(model, config)}; features {model.fh}x{model.fw}")
    train_loader = make_train_loader(split, config["batch"], config["num_workers"], config["flips"], config["seed"])
    evaluation_loader = make_test_loader(split, config["batch"], config["num_workers"])
    optimizer, scheduler = build_optimizer(model, config)

    epochs = config["epochs"]
    epoch_bar = tqdm(range(epochs), desc=f"{split.category}", unit="epoch", disable=not progress)
    for epoch in epoch_bar:
        model.train()
        losses = [train_step(model, batch, optimizer, device, config["clip_grad"]) for batch in train_loader]
        epoch_loss = float(np.mean(losses)) if losses else float("nan")
        epoch_bar.set_postfix(loss=f"{epoch_loss:.4f}")
        log = {"epoch": epoch + 1, "loss": epoch_loss}
        # periodic evaluation is for monitoring only: the checkpoint is always the last epoch
        if (epoch + 1) % config["eval_step_size"] == 0 and epoch + 1 < epochs:
            values, _ = evaluate(predict(model, evaluation_loader, device, progress=False), split)
            tqdm.write(f"  epoch {epoch + 1}: {format_metrics(values)}")
            log.update({k: v for k, v in values.items() if v is not None})
        if logger is not None:
            logger.log(log)
        scheduler.step()

    checkpoint = model.save_model(outputs.checkpoint_dir)
    print(f"  checkpoint: {checkpoint}")
    predictions = predict(model, evaluation_loader, device, progress=progress)
    values, notes = evaluate(predictions, split)
    tag = backbone_weights_tag(model)
    write_scores_json(outputs.scores_path, predictions, tag)
    if save_figures:
        write_figures(outputs.figures_dir, predictions, progress=progress)
    return values, notes, tag
