"""One error type for everything a user can fix (bad path, bad config, bad file).

Entry points catch it and print its message as one line, then exit non-zero;
anything else is a bug and keeps its traceback.
"""

import argparse
import functools
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input: the message says what, which file and what to do."""


EXIT_USER_ERROR = 2
# a run stopped by a signal (SIGTERM, SIGUSR1: preemption) after saving what it needs to resume
EXIT_PREEMPTED = 3


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error: ...` line and exit code 2, like every other error."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {message} (see {self.prog} --help)\n")


class Preempted(Exception):
    """A run was asked to stop and saved its state; the message says how to continue."""


def one_line(error: UserError) -> str:
    """The user-facing message. A DataLoader worker re-raises a UserError with the worker's
    traceback in its text; the original message is then the last line, after the type name."""
    text = str(error).strip()
    if "Original Traceback" not in text:
        return " ".join(text.splitlines())
    last = text.splitlines()[-1]
    return last.split(f"{UserError.__name__}: ", 1)[-1]


def exit_on_user_error(main: Callable[..., None]) -> Callable[..., None]:
    """Wrap a CLI `main` so a UserError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Preempted as stopped:
            print(f"stopped: {stopped}", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
