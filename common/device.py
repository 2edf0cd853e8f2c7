"""The one `--device` parser shared by train, eval and perf."""

import re

import torch

from common.errors import UserError


def resolve_device(requested: str | None) -> torch.device:
    """'auto' (or None): CUDA when available, else CPU; 'cpu', 'cuda' or 'cuda:N' as given."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested != "cpu" and not re.fullmatch(r"cuda(:\d+)?", requested):
        raise UserError(f"--device {requested}: use auto, cpu, cuda or cuda:N")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: PyTorch sees no CUDA GPU here; use --device cpu or auto")
    return torch.device(requested)
