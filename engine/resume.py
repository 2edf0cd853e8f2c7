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
from common.fileio import write_bytes_atomic
from datamodules.sampling import BalancedSupervisedSampler
from engine.signals import STOP_SIGNALS, early_signal

RESUME_NAME = "resume.pt"
RESUME_FORMAT = 1
# --resume: continue (default) goes on from a resume.pt of the same settings; auto also skips
# complete units and refuses a resume.pt of other settings (Slurm tasks); never starts over
RESUME_MODES = ("continue", "auto", "never")


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
    write_bytes_atomic(path, buffer.getvalue())


def read_resume(path: Path) -> dict[str, Any]:
    """The state in `resume.pt` (loaded weights-only, nothing else runs); a damaged or foreign file
    is a UserError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises assorted types for damaged or foreign files
        raise UserError(f"{path} cannot be loaded safely ({type(error).__name__}); delete it to start the unit "
                        "from epoch 0") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise UserError(f"{path} is not a SuperSimpleNet resume file; delete it to start the unit from epoch 0")
    return state


def changed_settings(state: dict[str, Any], fingerprint: dict) -> list[str]:
    """The settings (and unit, image size) in which `state` was written differently from `fingerprint`."""
    return sorted(k for k in set(fingerprint) | set(state["fingerprint"])
                  if fingerprint.get(k) != state["fingerprint"].get(k))


def restore_resume(state: dict[str, Any], model, optimizer, scheduler, loader) -> int:
    """Put everything of a `read_resume` state back; returns the epoch to continue with."""
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


def load_resume(path: Path, model, optimizer, scheduler, loader, fingerprint: dict) -> int:
    """Restore everything from `resume.pt`; returns the epoch to continue with. A file of another
    configuration (different settings) or a damaged one is a UserError naming it."""
    state = read_resume(path)
    changed = changed_settings(state, fingerprint)
    if changed:
        raise UserError(f"{path} was written with other settings ({', '.join(changed[:5])}); rerun with the "
                        "same settings, or delete it to start the unit from epoch 0")
    return restore_resume(state, model, optimizer, scheduler, loader)


def start_epoch(mode: str, path: Path, model, optimizer, scheduler, loader, fingerprint: dict) -> tuple[int, int]:
    """Where a unit starts, given `--resume mode` and the `resume.pt` at `path` (if any):
    (first epoch, epochs the existing resume.pt holds that this run must not overwrite with fewer).

    continue/auto: a resume.pt of the same settings is restored and training goes on from it (one
    line says so). One of other settings is an error under auto; under continue, and under never for
    any resume.pt, the run starts at epoch 0 and the old file is kept until this run has trained
    more epochs than it holds (one line says so): a re-run never throws partial training away."""
    if mode not in RESUME_MODES:
        raise ValueError(f"resume mode {mode!r} is not one of {RESUME_MODES}")
    if not path.is_file():
        return 0, 0
    if mode == "never":
        try:
            held = int(read_resume(path)["next_epoch"])
        except UserError:
            return 0, 0  # unreadable: nothing in it can be continued
        print(f"  note: {path} holds {held} epoch(s) of an earlier run; --resume never starts at epoch 1 and keeps "
              f"that file until this run has trained more (--resume continue would go on from it)")
        return 0, held
    state = read_resume(path)
    changed = changed_settings(state, fingerprint)
    if changed and mode == "auto":
        raise UserError(f"{path} was written with other settings ({', '.join(changed[:5])}); rerun with the "
                        "same settings, or delete it to start the unit from epoch 0")
    if changed:
        held = int(state["next_epoch"])
        print(f"  note: {path} holds {held} epoch(s) of a run with other settings ({', '.join(changed[:5])}); this "
              "run starts at epoch 1 and keeps that file until it has trained more")
        return 0, held
    first = restore_resume(state, model, optimizer, scheduler, loader)
    print(f"  resumed from {path} at epoch {first + 1}")
    return first, 0

