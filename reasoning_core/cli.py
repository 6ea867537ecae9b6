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

from reasoning_core.errors import ConfigError, UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def one_line(exc: BaseException) -> str:
    """Condense a Hydra/OmegaConf error into one sentence."""
    text = str(exc).strip()
    key = re.search(r"full_key: (\S+)", text)
    if isinstance(exc, MissingMandatoryValue) and key:
        return f"{key.group(1)}=... is required"
    if m := re.search(r"Key '([^']+)' is not in struct", text):
        return f"unknown config key '{(key.group(1) if key else m.group(1))}' (check the spelling; `--cfg job` prints the valid keys)"
    if m := re.search(r"Could not find '([^']+)'", text):
        options = re.search(r"Available options in '[^']+':\s*\n((?:\s+\S+\n?)+)", text)
        avail = ", ".join(options.group(1).split()) if options else ""
        return f"no config '{m.group(1)}'" + (f"; available: {avail}" if avail else "")
    first = text.splitlines()[0] if text else type(exc).__name__
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
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(one_line(e)) from None


def hydra_cli(config_name: str, hydra_main: Callable[[], None]) -> None:
    """Run `hydra_main` (a function decorated with @hydra.main) after the one-line precheck."""
    try:
        precheck(config_name, sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    hydra_main()
