"""Stop requests that arrive before training starts: train.py installs these handlers first
thing (before importing torch), so a SIGTERM/SIGUSR1 during imports or data loading is
remembered instead of killing the process; the training loop then stops after its first
epoch, writes resume.pt and exits as preempted. Torch-free on purpose."""

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[str] = []


def _remember(number, _frame) -> None:
    _received.append(signal.Signals(number).name)


def install_early_handlers() -> None:
    for number in STOP_SIGNALS:
        signal.signal(number, _remember)


def early_signal() -> str | None:
    """The name of a stop signal received since install_early_handlers, or None."""
    return _received[0] if _received else None
