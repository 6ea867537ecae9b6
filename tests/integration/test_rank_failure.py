"""A rank that fails stops every rank of a 2-process gloo job promptly, with its message.

Test hypothesis: when rank 1 raises inside a checkpoint save (injected with the documented test
hook RRDYN_FAULT_INJECT=save:rank1), `fail_together` tells rank 0 through the CPU group, so both
processes exit non-zero within seconds of the fault (the budget is 30 s; without the mechanism
rank 0 would sit in the checkpoint gather until the 30-minute process-group timeout). Rank 1
prints its own exception; rank 0 prints exactly one line naming rank 1 and that message.

The two ranks are started with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*)
rather than by torchrun itself: torchrun kills the surviving workers as soon as one fails, which
would hide a rank left hanging, and it does not report each worker's exit status and stderr.
The fault time is read from metrics.jsonl, which rank 0 appends to just before the save. The last
test runs the same fault under torchrun itself.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from runtime.dist import FAULT_ENV
from tests.integration.helpers import REPO, cli_env, read_metrics, tiny_overrides

pytestmark = pytest.mark.dist
BUDGET_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(args: list[str], world: int, **env: str) -> list[subprocess.Popen]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        rank_env = cli_env(OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env)
        procs.append(subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=REPO, env=rank_env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> list[float]:
    """Exit time (time.time()) of each process; kills them all if `timeout` passes."""
    ended: list[float | None] = [None] * len(procs)
    deadline = time.monotonic() + timeout
    while None in ended and time.monotonic() < deadline:
        for i, proc in enumerate(procs):
            if ended[i] is None and proc.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.02)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    assert None not in ended, f"rank(s) {[i for i, t in enumerate(ended) if t is None]} still running after {timeout} s (killed)"
    return ended


def test_a_rank_failing_in_a_checkpoint_save_stops_both_ranks(sudoku4, tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_overrides(sudoku4, run_dir, "max_steps=6", "checkpoint_interval=2")
    procs = _start_ranks(args, 2, **{FAULT_ENV: "save:rank1"})
    ended = _wait_all(procs, timeout=180)
    errs = [proc.stderr.read() for proc in procs]
    where = "".join(f"\n--- rank {r} stderr:\n{e[-2000:]}" for r, e in enumerate(errs))

    # the fault fired at the first save (step 2), just after rank 0 logged that step
    assert [r["step"] for r in read_metrics(run_dir) if "train/loss" in r] == [1, 2], where
    fault_at = (run_dir / "metrics.jsonl").stat().st_mtime
    delays = [t - fault_at for t in ended]
    print(f"exit after the fault: rank 0 {delays[0]:.2f} s, rank 1 {delays[1]:.2f} s")
    assert max(delays) < BUDGET_S, (delays, where)

    assert all(proc.returncode != 0 for proc in procs), ([p.returncode for p in procs], where)
    message = f"injected fault at save on rank 1 ({FAULT_ENV} test hook)"
    assert message in errs[1], where
    rank0_lines = errs[0].strip().splitlines()
    assert procs[0].returncode == 2 and "Traceback" not in errs[0], where
    assert rank0_lines == [f"error: rank 1 failed during checkpoint save: RuntimeError: {message}"], where
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # nothing half-saved was published


def test_without_the_hook_variable_the_same_run_finishes(sudoku4, tmp_path):
    """The hook is inert when unset (or set for another site): the same 2-rank run saves normally."""
    run_dir = tmp_path / "run"
    procs = _start_ranks(tiny_overrides(sudoku4, run_dir, "max_steps=4", "checkpoint_interval=2"), 2,
                         **{FAULT_ENV: "nowhere:rank1"})
    _wait_all(procs, timeout=180)
    errs = [proc.stderr.read() for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert (run_dir / "checkpoints" / "last.pt").exists()
    assert os.environ.get(FAULT_ENV) is None  # the test process itself never carries the hook


def test_under_torchrun_the_job_fails_with_the_rank_message(sudoku4, tmp_path):
    """The same fault under torchrun itself: the job exits non-zero well within the budget and the
    failing rank's message is in the output (torchrun may SIGTERM rank 0 once rank 1 has died, so
    rank 0's own line is not required here; the test above checks it)."""
    run_dir = tmp_path / "run"
    args = tiny_overrides(sudoku4, run_dir, "max_steps=6", "checkpoint_interval=2")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "pretrain.py", *args],
                          cwd=REPO, env=cli_env(OMP_NUM_THREADS="1", **{FAULT_ENV: "save:rank1"}), capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)
    ended = time.time()
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert f"RuntimeError: injected fault at save on rank 1 ({FAULT_ENV} test hook)" in output, output[-3000:]
    assert ended - (run_dir / "metrics.jsonl").stat().st_mtime < BUDGET_S
    print(f"torchrun job: {time.monotonic() - start:.1f} s in all, {ended - (run_dir / 'metrics.jsonl').stat().st_mtime:.2f} s after the fault")
