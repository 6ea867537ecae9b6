"""The README's bad-input table, run: every user mistake gives one line `error: ...` and exit 2.

Test hypothesis: for each row between `<!-- bad-input:begin -->` and `<!-- bad-input:end -->` in
README.md, running the command from the repository root (placeholders filled, leading VAR=value
words as environment) exits with status 2 and writes exactly one non-empty line to stderr, which
starts with `error: `, contains the row's excerpt and no traceback. The table is the
documentation, so a row cannot drift from what the program says.

A fresh interpreter spends about 2 s importing torch before it reads its command line, so the
rows run in forked children of a few helper interpreters (`Forkserver`) that have imported
torch, numpy and Hydra once; each child sets the row's environment, working directory, argv and
stdout/stderr and runs the entry point as `__main__` exactly as `python FILE` / `python -m
MODULE` does (runpy), and its exit status is the row's. `test_forkserver_matches_a_plain_python`
checks that against a plain `python` process. Every run is offline (HF_HUB_OFFLINE=1, an empty
hub cache in the scratch folder) with W&B disabled.
"""
from __future__ import annotations

import json
import os
import queue
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from puzzles.build import build_dataset
from puzzles.builders import MazeGenConfig, SudokuGenConfig
from runtime.lock import DirectoryLock

REPO = Path(__file__).resolve().parents[1]
FIXTURE_RUN = REPO / "tests" / "fixtures" / "official" / "trm_mlp" / "run"
BEGIN, END = "<!-- bad-input:begin -->", "<!-- bad-input:end -->"
ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")
WORKERS = 3
TIMEOUT_S = 180


@dataclass(frozen=True)
class Row:
    """One table row: what went wrong, the command and the excerpt of the expected error."""

    mistake: str
    command: str
    message: str


def table_rows(readme: Path = REPO / "README.md") -> list[Row]:
    """The rows of the table between the markers (header and separator skipped)."""
    text = readme.read_text()
    section = text[text.index(BEGIN) + len(BEGIN): text.index(END)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        rows.append(Row(cells[0], cells[1].strip("`"), cells[2].strip("`")))
    return rows


ROWS = table_rows()
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs os.fork (POSIX)")


def prepare_scratch(tmp: Path) -> None:
    """The bad inputs `{tmp}` stands for (listed in the README above the table)."""
    (tmp / "truncated").mkdir()
    data = (FIXTURE_RUN / "step_100").read_bytes()
    (tmp / "truncated" / "step_100").write_bytes(data[: len(data) // 2])
    shutil.copy(FIXTURE_RUN / "all_config.yaml", tmp / "truncated")
    (tmp / "noconfig").mkdir()
    shutil.copy(FIXTURE_RUN / "step_100", tmp / "noconfig")
    (tmp / "empty").mkdir()
    (tmp / "hf").mkdir()
    (tmp / "file.txt").write_text("not a folder\n")
    (tmp / "oldrun").mkdir()
    (tmp / "oldrun" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "experiment_name": "earlier"}))
    (tmp / "oldrun" / "checkpoints").mkdir()
    (tmp / "oldrun" / "checkpoints" / "step_0000010.pt").write_bytes(b"")
    build_dataset(MazeGenConfig(out=str(tmp / "maze"), size=5, min_path=2, n_train=2, n_test=2))
    build_dataset(SudokuGenConfig(out=str(tmp / "sudoku4"), size=4, givens=8, n_train=2, n_test=2))
    state = torch.load(FIXTURE_RUN / "step_100", map_location="cpu", weights_only=True)
    key = next(k for k in state if k.endswith("layers.0.mlp.down_proj.weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")  # one NaN weight: every state after the first sub-update is NaN
    for folder, payload in (("nan", state), ("code", {"w": RunsCode()})):
        (tmp / folder).mkdir()
        torch.save(payload, tmp / folder / "step_100")
        shutil.copy(FIXTURE_RUN / "all_config.yaml", tmp / folder)
    (tmp / "busy").mkdir()
    BUSY_LOCKS.append(DirectoryLock(tmp / "busy").acquire())  # held by this pytest process until it exits


class RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo this ran",))


BUSY_LOCKS: list[DirectoryLock] = []


def command_line(row: Row, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """(arguments after `python`, environment) of a row, placeholders filled."""
    words = shlex.split(row.command.replace("{tmp}", str(tmp)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf")}
    while words and ENV_WORD.match(words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words and words[0] == "python", f"a table command starts with python: {row.command}"
    return words[1:], env


# The helper interpreter: imports the slow libraries, then for each JSON job on stdin forks a child
# that runs `python ARGV` in-process and answers with the child's exit status.
FORKSERVER = r"""
import json, os, runpy, sys, traceback
import numpy, torch, hydra, omegaconf
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        argv, code = job["argv"], 0
        try:
            if argv[0] == "-m":
                sys.argv, sys.path[0] = argv[1:], job["cwd"]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv, sys.path[0] = list(argv), os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Forkserver:
    """One helper interpreter (see FORKSERVER); `run` is `subprocess.run(["python", *argv])`."""

    def __init__(self, folder: Path):
        self.folder = folder
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        # Its own process group, so a timeout can stop it together with a hanging child.
        self.proc = subprocess.Popen([sys.executable, "-c", FORKSERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=REPO, start_new_session=True)
        assert self._answer() == "ready"

    def _answer(self) -> str:
        """The server's next line, waiting at most TIMEOUT_S (then the server is stopped)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        if not ready:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise TimeoutError(f"no answer from the fork server within {TIMEOUT_S} s")
        return self.proc.stdout.readline().strip()

    def run(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.CompletedProcess:
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        job = {"cwd": str(REPO), "env": env, "argv": argv, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        code = int(self._answer())
        return subprocess.CompletedProcess(["python", *argv], code, out.read_text(), err.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_input")
    prepare_scratch(tmp)
    return tmp


@pytest.fixture(scope="module")
def results(scratch, tmp_path_factory):
    """Row -> Future of its finished process; every row is queued at once, WORKERS at a time."""
    logs = tmp_path_factory.mktemp("bad_input_logs")
    servers: queue.Queue[Forkserver] = queue.Queue()
    for _ in range(WORKERS):
        servers.put(Forkserver(logs))

    def run(i: int, row: Row) -> subprocess.CompletedProcess:
        server = servers.get()
        try:
            return server.run(*command_line(row, scratch), name=f"row{i:02d}")
        finally:
            servers.put(server)

    pool = ThreadPoolExecutor(max_workers=WORKERS)
    futures: dict[Row, Future] = {row: pool.submit(run, i, row) for i, row in enumerate(ROWS)}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    while not servers.empty():
        servers.get().close()


def test_table_covers_every_entry_point():
    """Test hypothesis: the table is there and names each user-facing entry point."""
    assert len(ROWS) >= 30
    commands = " ".join(r.command for r in ROWS)
    for entry in ("python pretrain.py", "python evaluate.py", "python -m diagnostics", "python -m puzzles.build", "python -m training.publish push"):
        assert entry in commands, entry
    assert len({r.command for r in ROWS}) == len(ROWS), "duplicate commands in the table"


@pytest.mark.parametrize("row", ROWS, ids=[f"{i:02d}-{re.sub(r'[^a-z0-9]+', '-', r.mistake.lower()).strip('-')[:40]}" for i, r in enumerate(ROWS)])
def test_bad_input_gives_one_line_error(row, results, scratch):
    proc = results[row].result()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    shown = f"command: {row.command}\nexit {proc.returncode}\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert row.message.replace("{tmp}", str(scratch)) in lines[0], shown


def test_forkserver_matches_a_plain_python(results, scratch):
    """Test hypothesis: the harness changes nothing a user sees. The first row, run by a plain
    `python` process, gives the same exit status, stdout and stderr as its forked run."""
    row = ROWS[0]
    argv, env = command_line(row, scratch)
    plain = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    forked = results[row].result()
    assert (plain.returncode, plain.stdout, plain.stderr) == (forked.returncode, forked.stdout, forked.stderr)
