"""Batch sampling in a background thread, a few batches ahead of the training step.

The sampler (puzzles/dataset.py) indexes memory-mapped arrays and collates with numpy, which
releases the GIL for most of the work, so a thread overlaps it with the model step. Each batch
travels with the sampler position *after* it (what `PuzzleDataset.state_dict` and the pass counter
read right when the batch was drawn): the trainer checkpoints the position of the last batch it
consumed, not of the ones fetched ahead, and a resume continues exactly where training was.

On CUDA the batch is copied into pinned (page-locked) memory in the thread, so the step's
host-to-device copy can be `non_blocking` and overlap the previous step's kernels.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch

_END = object()


@dataclass
class Prefetched:
    """One batch (CPU tensors, pinned when asked) and the sampler state right after it was drawn."""

    batch: dict[str, torch.Tensor]
    state: Any


class Prefetcher:
    """Iterate `source`, an iterator of (batch, state), `depth` items ahead in a daemon thread.

    An exception raised by `source` is re-raised by `__next__` in the consuming thread. `close()`
    stops the thread (also on garbage collection of an unfinished run); items fetched ahead are
    dropped, which is safe because the consumer records the state of what it used.
    """

    def __init__(self, source: Iterator[tuple[dict[str, torch.Tensor], Any]], depth: int = 2, pin_memory: bool = False):
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1")
        self._source, self._pin = source, pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for batch, state in self._source:
                if self._pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                if not self._put(Prefetched(batch, state)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            self._put(e)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Prefetched:
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the worker and wait for it (it finishes the batch it is drawing)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def __del__(self) -> None:
        self._stop.set()
