"""One line per failure at the top of every entry point: a UserError exits 2, a Ctrl-C exits 130,
anything else (a bug) keeps its traceback."""
from __future__ import annotations

import pytest

from runtime.errors import ConfigError, exit_on_user_error


def run(exc: BaseException) -> None:
    with exit_on_user_error():
        raise exc


def test_user_error_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as stop:
        run(ConfigError("n=0 must be >= 1"))
    assert stop.value.code == 2 and capsys.readouterr().err == "error: n=0 must be >= 1\n"


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    with pytest.raises(SystemExit) as stop:
        run(KeyboardInterrupt())
    err = capsys.readouterr().err
    assert stop.value.code == 130 and err.count("\n") == 1
    assert err.startswith("error: interrupted; nothing was half-written") and err.rstrip().endswith("rerun the same command to start again")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run(ZeroDivisionError("bug"))
