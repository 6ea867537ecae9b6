"""Device selection and the few torch.distributed helpers the entry points need.

Library code calls `resolve_device()` once and never hard-codes "cuda". A run launched by
torchrun (which sets LOCAL_RANK, RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) gets one process
group: nccl on CUDA, gloo on CPU. Without those variables everything is a single process and every
helper here degrades to a no-op or an identity, so the same code path runs on a laptop.

As in the official recipe there is no DDP wrapper: gradients are summed with
`all_reduce_sum_` after backward of the loss already divided by the global batch.

NCCL-safe by construction (issue 14):
- the process group has an explicit timeout (`launcher.dist_timeout_minutes`);
- Python objects (configs, per-rank checkpoint state, evaluation arrays, error messages) travel
  through a CPU group: on NCCL a gloo group created once beside the default group, on CPU the
  default (gloo) group itself. They never pass through GPU memory, and a rank that waits there
  (e.g. while rank 0 builds the dataset) is not watched by NCCL's watchdog;
- `fail_together` wraps a section every rank runs (a training step, a checkpoint save, an
  evaluation shard, the dataset build): a rank that raises inside it tells the others, which stop
  with one line naming that rank and its message instead of hanging in the next collective.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from runtime.errors import ConfigError, UserError

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_MINUTES = 30.0
FAULT_ENV = "RRDYN_FAULT_INJECT"

# Set by init_distributed: the gloo group beside an nccl default group (None: use the default
# group, which is gloo already).
_cpu_group: Any = None


class RankFailure(UserError):
    """Another rank raised inside a `fail_together` section; this rank stops too (one line)."""


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu", "cuda", "cuda:N" are checked and returned."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was requested but CUDA is not available on this machine; "
            "use device=cpu or device=auto"
        )
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu or cuda")
    return device


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; `device` is the device this rank computes on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    is_main: bool = True
    device: torch.device = torch.device("cpu")


def is_distributed() -> bool:
    """True when a default process group is up."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Join the torchrun job if there is one, else describe a single process.

    With LOCAL_RANK in the environment: init the default group (nccl for a CUDA `device`, gloo
    otherwise) from the env:// variables with a collective timeout of `timeout_minutes` and, on
    CUDA, bind this process to GPU LOCAL_RANK; with nccl also create the CPU (gloo) group, same
    timeout, that object collectives use. Calling it again returns the same description without
    re-initialising.
    """
    global _cpu_group
    if not timeout_minutes > 0:
        raise ConfigError(f"launcher.dist_timeout_minutes={timeout_minutes} must be > 0")
    if "LOCAL_RANK" not in os.environ:
        return DistInfo(device=device)
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(
            f"LOCAL_RANK is set but {', '.join(missing)} is not; launch several processes with "
            "torchrun, or unset LOCAL_RANK for a single process"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} "
                "CUDA device(s); start at most that many processes per node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not is_distributed():
        # torch.distributed.nn binds the default group as a default argument (`group=group.WORLD`)
        # when first imported, and torch imports it lazily (e.g. torch.use_deterministic_algorithms
        # -> torch._dynamo -> fsdp). Imported after the group exists, it holds the group forever:
        # destroy_process_group cannot free it, its gloo threads outlive `cleanup`, and their
        # teardown at interpreter exit sometimes aborts the process ("terminate called without an
        # active exception", exit -6). Imported now, the defaults are None.
        import torch.distributed.nn  # noqa: F401, PLC0415

        timeout = datetime.timedelta(minutes=timeout_minutes)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        # Every rank must create the group, in the same order, right after the default one.
        _cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    rank = dist.get_rank()
    return DistInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=dist.get_world_size(),
        is_main=rank == 0,
        device=device,
    )


def get_rank() -> int:
    """This process's rank: the process group's, else $RANK (set by torchrun), else 0."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def cpu_group() -> Any:
    """The group object collectives use: the gloo group beside nccl, else None (the default
    group, which is gloo then)."""
    return _cpu_group


def barrier() -> None:
    """Wait for every rank (on the CPU group); a no-op in a single process."""
    if is_distributed():
        dist.barrier(group=_cpu_group)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank `src`'s `obj` on every rank (picklable objects; e.g. a resolved config).
    Goes through the CPU group: the pickle never visits GPU memory."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_cpu_group)
    return box[0]


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj` on rank `dst` in rank order (None elsewhere), through the CPU group;
    `[obj]` in a single process. Used for per-rank checkpoint state."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst, group=_cpu_group)
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj` on every rank, in rank order, through the CPU group."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_cpu_group)
    return out


def inject_fault(site: str) -> None:
    """TEST HOOK, inert unless $RRDYN_FAULT_INJECT is set: with `RRDYN_FAULT_INJECT=<site>:rank<r>`
    (e.g. `save:rank1`) raise RuntimeError at `site` on rank r, so a multi-process test can make
    exactly one rank fail where monkeypatching cannot reach. Sites: "step", "save", "eval"."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted == f"{site}:rank{get_rank()}":
        raise RuntimeError(f"injected fault at {site} on rank {get_rank()} ({FAULT_ENV} test hook)")


@contextlib.contextmanager
def fail_together(what: str) -> Iterator[None]:
    """Run a section on every rank; if any rank raises inside it, every rank stops.

    After the block every rank all-reduces one number (1 if it raised) on the CPU group: cheap
    enough for every step, and on nccl runs it keeps the wait out of NCCL's watchdog (rank 0 may
    spend minutes in a section, e.g. building the dataset, while the others wait here; the CPU
    group's timeout, `launcher.dist_timeout_minutes`, bounds that wait). Only when the sum is
    non-zero are the messages exchanged; then the rank that raised re-raises its own exception and every
    other rank raises `RankFailure` ("rank R failed during <what>: <Type>: <message>"), which the
    entry points print as one line and exit 2. Every rank must enter the same sections in the
    same order, and no collective may sit inside the block (a rank that raised before it would
    leave the others waiting there). A no-op wrapper in a single process.
    """
    if not is_distributed():
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 (re-raised below, after the other ranks know)
        error = e
    flag = torch.tensor([0.0 if error is None else 1.0])
    dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=_cpu_group)
    if flag.item() > 0:
        message = None if error is None else f"{type(error).__name__}: {error}".splitlines()[0]
        messages = all_gather_object(message)
        if error is not None:
            raise error
        rank, first = next((r, m) for r, m in enumerate(messages) if m is not None)
        raise RankFailure(f"rank {rank} failed during {what}: {first}")


@torch.no_grad()
def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over ranks, in place; one collective per (device, dtype) bucket.

    Used on gradients after backward of loss / global_batch, so the sum is the gradient of the
    global mean. A no-op in a single process.
    """
    if not is_distributed() or not tensors:
        return
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.device, t.dtype), []).append(t)
    for group in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        pieces = flat.split([t.numel() for t in group])
        torch._foreach_copy_(group, [piece.view_as(t) for piece, t in zip(pieces, group)])


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped (n, ...) tensors from all ranks along dim 0, in rank order.

    Returns (world * n, ...). Uses the single-tensor all-gather (gloo and nccl both support it)
    and falls back to the list form for backends that do not.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    tensor = tensor.contiguous()
    out = tensor.new_empty((world * tensor.shape[0], *tensor.shape[1:]))
    # torch >= 2.13 names it all_gather_single; older versions all_gather_into_tensor.
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    try:
        gather_single(out, tensor)
    except RuntimeError as e:
        # Old gloo builds reject the single-tensor form ("... does not support ..."); verified
        # supported by gloo and nccl on torch 2.13.
        if "support" not in str(e):
            raise
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor)
        out = torch.cat(parts)
    return out


def gather_arrays_to_rank0(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Concatenate each key's variable-length (n_rank, ...) arrays over ranks on rank 0.

    Used by sharded evaluation: each rank holds the results for its slice of examples (numpy,
    in host memory; they travel through the CPU group, never through GPU memory). Rank 0
    gets {key: concatenation in rank order}; other ranks get None. Every rank must pass the same
    keys; the trailing dimensions of a key must agree. In a single process it returns the input.
    """
    if not is_distributed():
        return {k: np.asarray(v) for k, v in arrays.items()}
    mine = {k: np.asarray(v) for k, v in arrays.items()}
    rank, world = dist.get_rank(), dist.get_world_size()
    received: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(mine, received, dst=0, group=_cpu_group)
    if rank != 0:
        return None
    keys = list(mine)
    for r, part in enumerate(received):
        if list(part) != keys:
            raise ValueError(f"rank {r} sent keys {sorted(part)}, rank 0 sent {sorted(keys)}")
    return {k: np.concatenate([part[k] for part in received], axis=0) for k in keys}


def cleanup() -> None:
    """Destroy the process group if one is up (call once at the end of an entry point)."""
    global _cpu_group
    if is_distributed():
        dist.destroy_process_group()
    _cpu_group = None
