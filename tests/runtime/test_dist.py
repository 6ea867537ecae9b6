"""Device resolution and the distributed helpers, single-process and with two gloo ranks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from runtime import dist as rdist
from runtime.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world: int, port: int, args: tuple) -> None:
    """Child process: the torchrun environment for `rank`, then `fn(rank, world, *args)`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    info = rdist.init_distributed(torch.device("cpu"))
    try:
        fn(rank, world, *args)
    finally:
        if info.world_size > 1:
            rdist.cleanup()


def run_gloo(fn: Callable, world: int, *args) -> None:
    """Run `fn(rank, world, *args)` in `world` CPU processes joined by a gloo group.

    Forks where the platform allows it: a forked child starts in milliseconds with torch (and
    torch._dynamo, which every Optimizer imports) already loaded, where a spawned one spends
    5-10 s importing them on a busy 2-core machine. `fn` must be a module-level function (spawn
    pickles it by name); it reports results through files. A failure in any rank raises here.
    """
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _entry, args=(fn, world, _free_port(), args), nprocs=world, join=True, start_method=method
    )


def test_resolve_device():
    assert rdist.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert rdist.resolve_device("auto").type == expected
    assert rdist.resolve_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_resolve_device_cuda_without_cuda_is_config_error():
    with pytest.raises(ConfigError, match="'cuda' was requested but CUDA is not available"):
        rdist.resolve_device("cuda")


def test_resolve_device_rejects_nonsense():
    with pytest.raises(ConfigError, match="'gpu0' is not a device name"):
        rdist.resolve_device("gpu0")


def test_single_process_helpers(monkeypatch):
    """Without torchrun's variables everything is one process and the helpers are identities."""
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    info = rdist.init_distributed(torch.device("cpu"))
    assert info == rdist.DistInfo(rank=0, local_rank=0, world_size=1, is_main=True)
    assert rdist.get_rank() == 0
    rdist.barrier()
    assert rdist.broadcast_object({"a": 1}) == {"a": 1}
    t = torch.tensor([1.0, 2.0])
    rdist.all_reduce_sum_([t])
    assert t.tolist() == [1.0, 2.0]
    out = rdist.gather_arrays_to_rank0({"x": np.arange(3)})
    assert out["x"].tolist() == [0, 1, 2]


def test_partial_torchrun_environment_is_config_error(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="LOCAL_RANK is set but RANK, WORLD_SIZE, MASTER_ADDR"):
        rdist.init_distributed(torch.device("cpu"))


def _helpers_worker(rank: int, world: int, out_dir: str) -> None:
    info = rdist.init_distributed(torch.device("cpu"))  # second call: same description
    config = rdist.broadcast_object({"run": "abc"} if rank == 0 else None)
    grads = [torch.full((2, 2), rank + 1.0), torch.tensor([10.0 * rank]), torch.tensor([rank])]
    rdist.all_reduce_sum_(grads)
    rows = rdist.all_gather_rows(torch.tensor([[rank, rank + 10]], dtype=torch.int32))
    # Variable length per rank: rank 0 has 2 examples, rank 1 has 3.
    n = 2 + rank
    gathered = rdist.gather_arrays_to_rank0(
        {"idx": np.arange(n) + 100 * rank, "lam": np.full((n, 2), float(rank))}
    )
    rdist.barrier()
    torch.save(
        {"info": info, "config": config, "grads": grads, "rows": rows, "gathered": gathered},
        f"{out_dir}/rank{rank}.pt",
    )


@pytest.mark.dist
def test_two_gloo_ranks(tmp_path):
    """Test hypothesis: with two gloo ranks, broadcast copies rank 0's object, all_reduce_sum_
    sums every dtype bucket, all_gather_rows concatenates in rank order, and
    gather_arrays_to_rank0 concatenates variable-length arrays on rank 0 only."""
    run_gloo(_helpers_worker, 2, str(tmp_path))
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert r["info"] == rdist.DistInfo(rank=rank, local_rank=rank, world_size=2,
                                           is_main=rank == 0)
        assert r["config"] == {"run": "abc"}
        assert r["grads"][0].tolist() == [[3.0, 3.0], [3.0, 3.0]]
        assert r["grads"][1].tolist() == [10.0]
        assert r["grads"][2].tolist() == [1] and r["grads"][2].dtype == torch.int64
        assert r["rows"].tolist() == [[0, 10], [1, 11]]
    gathered = torch.load(tmp_path / "rank0.pt", weights_only=False)["gathered"]
    assert gathered["idx"].tolist() == [0, 1, 100, 101, 102]
    assert gathered["lam"].tolist() == [[0.0, 0.0]] * 2 + [[1.0, 1.0]] * 3
    assert torch.load(tmp_path / "rank1.pt", weights_only=False)["gathered"] is None


def _fail_together_worker(rank: int, world: int, out_dir: str) -> None:
    results = {"cpu_group": rdist.cpu_group(), "objects": rdist.all_gather_object(rank * 10),
               "gathered": rdist.gather_object({"rank": rank})}
    with rdist.fail_together("a quiet section"):  # nobody fails: nothing happens
        pass
    try:
        with rdist.fail_together("the test section"):
            if rank == 1:
                raise ValueError("disk on fire\nsecond line")
    except Exception as e:  # noqa: BLE001
        results["raised"] = (type(e).__name__, str(e))
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.mark.dist
def test_fail_together_names_the_failing_rank_on_the_others(tmp_path):
    """Test hypothesis: object collectives go through the default group on gloo (no side group);
    a rank raising inside `fail_together` re-raises its own exception, every other rank raises
    RankFailure naming it with the first line of its message, and no rank hangs."""
    run_gloo(_fail_together_worker, 2, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["cpu_group"] is None and r0["objects"] == r1["objects"] == [0, 10]
    assert r0["gathered"] == [{"rank": 0}, {"rank": 1}] and r1["gathered"] is None
    assert r1["raised"] == ("ValueError", "disk on fire\nsecond line")
    assert r0["raised"] == ("RankFailure", "rank 1 failed during the test section: ValueError: disk on fire")


def test_fault_hook_is_inert_unless_it_names_this_site_and_rank(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv(rdist.FAULT_ENV, raising=False)
    rdist.inject_fault("save")
    monkeypatch.setenv(rdist.FAULT_ENV, "save:rank1")
    rdist.inject_fault("save")  # this process is rank 0
    monkeypatch.setenv(rdist.FAULT_ENV, "save:rank0")
    rdist.inject_fault("step")
    with pytest.raises(RuntimeError, match=r"injected fault at save on rank 0 \(RRDYN_FAULT_INJECT test hook\)"):
        rdist.inject_fault("save")


def test_timeout_must_be_positive():
    with pytest.raises(ConfigError, match=r"launcher.dist_timeout_minutes=0 must be > 0"):
        rdist.init_distributed(torch.device("cpu"), timeout_minutes=0)


_CLEANUP_SCRIPT = """
import json, os, sys
import torch
from runtime import dist as rdist

rdist.init_distributed(torch.device("cpu"))
import torch.distributed.nn.functional as dnf  # torch imports it lazily, after init (e.g. use_deterministic_algorithms)
rdist.all_reduce_sum_([torch.ones(2)])
held = sorted(name for name, f in vars(dnf).items() if callable(f)
              and any(isinstance(d, torch.distributed.ProcessGroup) for d in (getattr(f, "__defaults__", None) or ())))
rdist.cleanup()
tasks = "/proc/self/task"
threads = [open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks)] if os.path.isdir(tasks) else []
print(json.dumps({"held": held, "threads": threads}))
"""


@pytest.mark.dist
def test_cleanup_frees_the_group_even_when_torch_binds_it_as_a_default(tmp_path):
    """Test hypothesis: `cleanup` really frees the gloo group. torch.distributed.nn binds
    `group.WORLD` as a default argument at its first import; imported after init (torch does this
    lazily), it kept the group and its gloo threads alive past destroy_process_group, and their
    teardown at interpreter exit aborted about 1 run in 30 ("terminate called without an active
    exception"). Fresh interpreters (a forked child would inherit the test process's imports)."""
    repo = Path(__file__).resolve().parents[2]
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, "-c", _CLEANUP_SCRIPT], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(r), "LOCAL_RANK": str(r),
                              "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)})
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report["held"] == []
        assert not [t for t in report["threads"] if "gloo" in t or "tcpstore" in t], report["threads"]
