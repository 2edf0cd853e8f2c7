"""Preemption-safe training: `resume.pt` beside a unit's `weights.pt` holds everything a run needs
to continue exactly where it stopped (trainable weights, optimiser, scheduler, the next epoch, the
data order's state and every random generator), so that a resumed run ends with the same
`weights.pt`, byte for byte on the CPU, as an uninterrupted one. SIGTERM and SIGUSR1 (Slurm's
warning before preemption) ask the loop to stop at the end of the current epoch."""

import contextlib
import io
import random
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from common.errors import UserError
from common.fileio import atomic_path
from datamodules.sampling import BalancedSupervisedSampler
from engine.signals import STOP_SIGNALS, early_signal

RESUME_NAME = "resume.pt"
RESUME_FORMAT = 1


def resume_path(checkpoint_dir: Path) -> Path:
    return Path(checkpoint_dir) / RESUME_NAME


class StopRequest:
    """Set by SIGTERM/SIGUSR1 while training; the loop checks it at the end of every epoch."""

    def __init__(self) -> None:
        self.signal_name: str | None = early_signal()  # one that arrived before training started

    def __bool__(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def listening(self) -> Iterator["StopRequest"]:
        def handler(number, _frame):
            self.signal_name = signal.Signals(number).name

        previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
        try:
            yield self
        finally:
            for number, old in previous.items():
                signal.signal(number, old)


def _numpy_state() -> dict[str, Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
            "has_gauss": has_gauss, "cached": cached}


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["position"], state["has_gauss"], state["cached"]))


def _python_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_python_state(state: dict[str, Any]) -> None:
    random.setstate((state["version"], tuple(state["internal"]), state["gauss"]))


def _sampler_state(loader: torch.utils.data.DataLoader) -> dict[str, Any]:
    state: dict[str, Any] = {"loader_generator": loader.generator.get_state()}
    sampler = loader.sampler
    if isinstance(sampler, BalancedSupervisedSampler):
        state["draw_counts"] = torch.from_numpy(sampler.normal_draw_counts.copy())
        state["epochs_drawn"] = sampler.epochs_drawn
        # numpy's PCG64 state: two 128-bit integers, kept as text for the weights-only loader
        bit_state = sampler.rng.bit_generator.state
        state["rng"] = {"bit_generator": bit_state["bit_generator"],
                        "state": str(bit_state["state"]["state"]), "inc": str(bit_state["state"]["inc"]),
                        "has_uint32": bit_state["has_uint32"], "uinteger": bit_state["uinteger"]}
    return state


def _set_sampler_state(loader: torch.utils.data.DataLoader, state: dict[str, Any]) -> None:
    loader.generator.set_state(state["loader_generator"])
    sampler = loader.sampler
    if isinstance(sampler, BalancedSupervisedSampler):
        sampler.normal_draw_counts = state["draw_counts"].numpy().copy()
        sampler.epochs_drawn = state["epochs_drawn"]
        rng = state["rng"]
        sampler.rng.bit_generator.state = {
            "bit_generator": rng["bit_generator"],
            "state": {"state": int(rng["state"]), "inc": int(rng["inc"])},
            "has_uint32": rng["has_uint32"], "uinteger": rng["uinteger"],
        }


def save_resume(path: Path, next_epoch: int, model, optimizer, scheduler, loader, fingerprint: dict) -> None:
    """Write `resume.pt` atomically: the state after `next_epoch` finished epochs."""
    state = {
        "format": RESUME_FORMAT,
        "fingerprint": fingerprint,
        "next_epoch": next_epoch,
        "model": model.trainable_state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "data": _sampler_state(loader),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": _numpy_state(),
        "python_rng": _python_state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_resume(path: Path, model, optimizer, scheduler, loader, fingerprint: dict) -> int:
    """Restore everything from `resume.pt`; returns the epoch to continue with. A file of another
    configuration (different settings) or a damaged one is a UserError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises assorted types for damaged or foreign files
        raise UserError(f"{path} cannot be loaded safely ({type(error).__name__}); delete it to start the unit "
                        "from epoch 0") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise UserError(f"{path} is not a SuperSimpleNet resume file; delete it to start the unit from epoch 0")
    if state["fingerprint"] != fingerprint:
        changed = sorted(k for k in set(fingerprint) | set(state["fingerprint"])
                         if fingerprint.get(k) != state["fingerprint"].get(k))
        raise UserError(f"{path} was written with other settings ({', '.join(changed[:5])}); rerun with the "
                        "same settings, or delete it to start the unit from epoch 0")
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    assert not unexpected and all(k.startswith("feature_extractor") for k in missing)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_sampler_state(loader, state["data"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    _set_numpy_state(state["numpy_rng"])
    _set_python_state(state["python_rng"])
    return int(state["next_epoch"])
