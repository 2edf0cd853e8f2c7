"""Optional Weights & Biases logging (works offline with WANDB_MODE=offline)."""

from typing import Any

from common.errors import UserError


class WandbLogger:
    """Thin wrapper: one wandb run per unit; `log(dict)` per epoch."""

    def __init__(self, project: str, name: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
        self._wandb = wandb
        self._run = wandb.init(project=project, name=name, config=config, reinit=True)

    def log(self, values: dict[str, Any]) -> None:
        self._run.log(values)

    def finish(self) -> None:
        self._run.finish()
