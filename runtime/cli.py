"""Hydra entry points that answer a bad command line with one readable line.

Hydra reports an unknown key, a wrong type or a missing config-group option over several lines
(and a hint about HYDRA_FULL_ERROR). `hydra_cli` composes the config once up front with the same
overrides; if that fails it prints `error: <one line>` and exits 2 before any work starts. Then
it hands over to Hydra as usual (run dirs, multirun, launchers). Multirun command lines are
checked by Hydra itself, per job.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from runtime.errors import ConfigError, UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
_ABSENT = object()


def one_line(exc: BaseException) -> str:
    """Condense a Hydra/OmegaConf error into one sentence.

    Hydra wraps the real reason of a failed override in `__cause__` and says only "Could not
    override 'foo'." or "Error merging override n=abc"; the cause (an unknown key, a value of the
    wrong type) is what the user needs, so it is reported instead, with the override.
    """
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        if m := re.match(r"Error merging override (.+)", first):
            reason = re.sub(r" \([^()\s]+\)$", "", one_line(cause))  # the override already names the key
            return reason if reason.startswith("unknown config key") else f"cannot set {m.group(1)}: {reason}"
        if first.startswith("Could not override"):
            return one_line(cause)
    key = re.search(r"full_key: (\S+)", text)
    if isinstance(exc, MissingMandatoryValue) and key:
        return f"{key.group(1)}=... is required"
    if m := re.search(r"Key '([^']+)' (?:is )?not in (?:struct|'\w+')", text):
        return f"unknown config key '{(key.group(1) if key else m.group(1))}' (check the spelling; `--cfg job` prints the valid keys)"
    if m := re.search(r"Could not find '([^']+)'", text):
        options = re.search(r"Available options in '[^']+':\s*\n((?:\s+\S+\n?)+)", text)
        avail = ", ".join(options.group(1).split()) if options else ""
        return f"no config '{m.group(1)}'" + (f"; available: {avail}" if avail else "")
    return f"{first} ({key.group(1)})" if key and key.group(1) not in first else first


def precheck(config_name: str, argv: list[str]) -> None:
    """Compose `config_name` with the command line's overrides; raise ConfigError on failure."""
    if any(a.startswith("-") for a in argv):  # --multirun, --help, --cfg ...: leave to Hydra
        return
    overrides = [a for a in argv if "=" in a or a.startswith(("~", "+"))]
    bad = [a for a in argv if a not in overrides]
    if bad:
        raise ConfigError(f"cannot parse {bad[0]!r}: arguments are key=value overrides")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
            cfg = compose(config_name, overrides=overrides)
            OmegaConf.to_object(cfg)
            _check_appended_keys(config_name, overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(one_line(e)) from None


def _check_appended_keys(config_name: str, overrides: list[str]) -> None:
    """Refuse `+key=value` / `++key=value` for a key the schema lacks: Hydra appends it even to a
    typed config and the dataclass conversion then drops it without a word (`hydra.*` keys are
    Hydra's own and left alone)."""
    appended = [o.lstrip("+").split("=", 1)[0] for o in overrides if o.startswith("+")]
    appended = [key for key in appended if not key.startswith("hydra.")]
    if not appended:
        return
    base = compose(config_name, overrides=[o for o in overrides if not o.startswith("+")])
    for key in appended:
        if OmegaConf.select(base, key.split("@")[0], default=_ABSENT, throw_on_missing=False) is _ABSENT:
            raise ConfigError(f"unknown config key '{key}' (check the spelling; `--cfg job` prints the valid keys)")


def hydra_cli(config_name: str, hydra_main: Callable[[], None]) -> None:
    """Run `hydra_main` (a function decorated with @hydra.main) after the one-line precheck."""
    try:
        precheck(config_name, sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()
