"""Training speed of SuperSimpleNet: images per second of one training step, reference vs ours.

In: options (device, steps, batch, image size, backbone, precision); random weights, random images.
Out: printed images/s of the reference step (float32 eager, as published) and of ours
(BatchNorms of the frozen backbone folded, channels-last, plus autocast: fp16 with a GradScaler
on CUDA by default, bf16 on request), their
ratio, and the first step's loss of each from the same seed as a sanity check of the arithmetic.

A step is what training does per batch: train-mode forward with feature noise, the SuperSimpleNet
loss, backward, AdamW step (engine.fit.build_optimizer). Mask all zero, labels 0.
    python perf/train_speed.py --device cpu --steps 2 --batch 2 --image-size 256 256
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from timeit import default_timer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from inside perf/ too

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from common.config import default_config  # noqa: E402
from common.device import resolve_device  # noqa: E402
from common.errors import UserError, exit_on_user_error  # noqa: E402
from common.loss import downsample_mask, supersimplenet_loss  # noqa: E402
from engine.fit import build_optimizer  # noqa: E402
from model.supersimplenet import SuperSimpleNet  # noqa: E402
from model.folding import fold_backbone_batchnorms  # noqa: E402

AUTOCAST_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
SEED = 0


@dataclass
class Trainer:
    """A model with its optimizer and how its step runs."""

    model: SuperSimpleNet
    optimizer: torch.optim.Optimizer
    channels_last: bool
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    clip_grad: bool


def build_trainer(config: dict, device: torch.device, fast: bool, precision: str) -> Trainer:
    """Seeded model + optimizer; `fast` folds the frozen backbone and adds channels-last and autocast."""
    torch.manual_seed(SEED)
    model = SuperSimpleNet.from_config(tuple(config["image_size"]), config).to(device).train()
    autocast_dtype = AUTOCAST_DTYPES[precision] if fast else None
    if fast:
        # exact: the backbone is frozen and always in eval mode; checkpoints never hold it
        model.feature_extractor.backbone = fold_backbone_batchnorms(model.feature_extractor.backbone)
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = build_optimizer(model, config)
    # fp16 gradients can underflow; a GradScaler keeps them representable (bf16 has fp32's range)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    return Trainer(model, optimizer, fast, autocast_dtype, scaler, config["clip_grad"])


def training_step(trainer: Trainer, images: Tensor, mask: Tensor, label: Tensor) -> float:
    """One optimisation step on images B x 3 x H x W, mask B x 1 x fh x fw, label B; returns the loss."""
    if trainer.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    trainer.optimizer.zero_grad()
    with torch.autocast(images.device.type, dtype=trainer.autocast_dtype, enabled=trainer.autocast_dtype is not None):
        map_logits, score_logits, new_mask, new_label = trainer.model(images, mask, label)
    # the loss stays float32 and outside autocast (binary_cross_entropy is not autocast-safe)
    loss = supersimplenet_loss(map_logits.float(), score_logits.float(), new_mask, new_label)
    if trainer.scaler is not None:
        trainer.scaler.scale(loss).backward()
        trainer.scaler.unscale_(trainer.optimizer)
    else:
        loss.backward()
    if trainer.clip_grad:
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
    if trainer.scaler is not None:
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
    else:
        trainer.optimizer.step()
    return float(loss.detach())


def synthetic_batch(model: SuperSimpleNet, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Random images, an all-zero ground truth downsampled as in training, labels 0."""
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randn(batch, 3, *model.image_size, generator=generator).to(device)
    mask = downsample_mask(torch.zeros(batch, *model.image_size, device=device), model.fh, model.fw)
    return images, mask, torch.zeros(batch, device=device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per path (20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (2 on CUDA, 1 on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (32, the paper's, on CUDA; 2 on CPU)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=[256, 256])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--precision", choices=list(AUTOCAST_DTYPES), default=None,
                        help="autocast dtype of our step: fp16 on CUDA, fp32 (channels-last only) on CPU by default")
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[torch.device, dict]:
    """Checked device and run settings (defaults depend on the device)."""
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    settings = {
        "steps": args.steps if args.steps is not None else (20 if on_gpu else 3),
        "warmup": args.warmup if args.warmup is not None else (2 if on_gpu else 1),
        "batch": args.batch if args.batch is not None else (32 if on_gpu else 2),
        "precision": args.precision or ("fp16" if on_gpu else "fp32"),
    }
    if settings["steps"] < 1 or settings["warmup"] < 0 or settings["batch"] < 1:
        raise UserError("--steps and --batch must be at least 1, --warmup at least 0")
    if min(args.image_size) < 32:
        raise UserError(f"--image-size must be at least 32 x 32, got {args.image_size[0]} x {args.image_size[1]}")
    if settings["precision"] == "fp16" and not on_gpu:
        raise UserError("--precision fp16 trains with a CUDA GradScaler; on the CPU use fp32 or bf16")
    return device, settings


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, settings = resolve(args)
    config = default_config("mvtec")
    config.update(backbone=args.backbone, pretrained=False, image_size=list(args.image_size), batch=settings["batch"])
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    trainers = {
        "reference": build_trainer(config, device, fast=False, precision="fp32"),
        "ours": build_trainer(config, device, fast=True, precision=settings["precision"]),
    }
    images, mask, label = synthetic_batch(trainers["reference"].model, settings["batch"], device)
    print(f"training step speed on {device}, {args.backbone} at {args.image_size[0]}x{args.image_size[1]}, "
          f"batch {settings['batch']} (x2 after feature noise), random weights (pretrained=False)")
    print("reference: float32 eager; ours: folded backbone, channels-last"
          + (f" + {settings['precision']} autocast" if settings["precision"] != "fp32" else "")
          + f"; {settings['warmup']} warm-up + {settings['steps']} timed steps each, interleaved")

    first_loss = {}
    for name, trainer in trainers.items():
        torch.manual_seed(SEED)  # same noise for both: the first losses must agree
        first_loss[name] = training_step(trainer, images, mask, label)
    for _ in range(settings["warmup"]):
        for trainer in trainers.values():
            training_step(trainer, images, mask, label)
    seconds = {name: 0.0 for name in trainers}
    for _ in range(settings["steps"]):
        for name, trainer in trainers.items():
            synchronize(device)
            start = default_timer()
            training_step(trainer, images, mask, label)
            synchronize(device)
            seconds[name] += default_timer() - start

    speed = {name: settings["batch"] * settings["steps"] / seconds[name] for name in trainers}
    for name in trainers:
        print(f"{name:<9}: {speed[name]:8.2f} images/s   first-step loss {first_loss[name]:.5f}")
    print(f"ours / reference: x{speed['ours'] / speed['reference']:.2f} images/s; "
          f"first-step loss difference {abs(first_loss['ours'] - first_loss['reference']):.2g}")
    print("note: speed only; whether the trained model's metrics hold needs a full training run with train.py")


if __name__ == "__main__":
    main()
