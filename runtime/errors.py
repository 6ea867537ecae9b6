"""User-facing errors.

Every mistake a user can make at an entry point (a wrong path, a corrupt file, a config that does
not fit a checkpoint) raises `UserError` with one readable sentence. Entry points catch it, print
`error: <message>` on one line and exit with status 2; anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, or does not fit the model configuration."""


class DatasetError(UserError):
    """A dataset directory is missing, malformed, or does not fit the model."""


class ConfigError(UserError):
    """A configuration value is invalid or inconsistent with another one."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a `UserError` (and Hydra/OmegaConf config errors) into one line on stderr and exit 2,
    and a Ctrl-C that reaches the top (jobs without a safe stopping point of their own: a dataset
    build, an evaluation) into one line and exit 130. Those jobs write their outputs atomically,
    so an interrupt leaves no half-written file; training and the studies stop at their next step
    or batch instead (`runtime.signals`) and say how to resume."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was half-written (outputs are written atomically at the end): rerun the same command to start again",
              file=sys.stderr)
        sys.exit(130)
