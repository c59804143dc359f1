"""Dynamic batching inside a worker process (NVIDIA Triton's ``dynamic_batching``).

Image services get one task per request. In a pool run with ``--pool threads``, each task runs
in its own thread and hands its input to the process's :class:`DynamicBatcher`; a single
thread gathers the inputs that arrive within ``max_delay`` seconds of the first (at most
``max_size``), runs the model once on all of them, and gives every caller its own output. Each
request stays its own task, with its own claim, status, result and notification; only the
forward pass is shared. In a prefork pool (one task per process) a batch is simply one input.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class BatchPolicy:
    """How long the first input of a batch waits for company, and how big a batch gets."""

    max_size: int = 16
    max_delay: float = 0.005


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    done: threading.Event = field(default_factory=threading.Event)
    result: Out | None = None
    error: BaseException | None = None
    batch_size: int = 0


class DynamicBatcher(Generic[In, Out]):
    """Run ``fn(list_of_inputs) -> list_of_outputs`` on batches of concurrent submissions."""

    def __init__(self, fn: Callable[[list[In]], Sequence[Out]], policy: BatchPolicy) -> None:
        self._fn, self._policy = fn, policy
        self._queue: queue.Queue[_Pending[In, Out]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0  # for benchmarks and tests: how the inputs were grouped
        self.items = 0

    def submit(self, item: In) -> Out:
        """Block until ``item``'s batch has run; its output, or the batch's exception."""
        return self.map([item])[0]

    def map(self, items: Sequence[In]) -> list[Out]:
        """Submit several inputs at once (they may share a batch); their outputs in order."""
        return self.run(items)[0]

    def run(self, items: Sequence[In]) -> tuple[list[Out], int]:
        """Like :meth:`map`, plus the size of the largest batch the inputs ran in (what a
        task reports as ``BatchSize``)."""
        pendings: list[_Pending[In, Out]] = [_Pending(item) for item in items]
        self._ensure_thread()
        for pending in pendings:
            self._queue.put(pending)
        for pending in pendings:
            pending.done.wait()
        for pending in pendings:
            if pending.error is not None:
                raise pending.error
        outputs: list[Out] = [p.result for p in pendings]  # type: ignore[misc]
        return outputs, max(p.batch_size for p in pendings)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
                self._thread.start()

    def _gather(self) -> list[_Pending[In, Out]]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self._policy.max_delay
        while len(batch) < self._policy.max_size:
            remaining = deadline - time.monotonic()
            try:  # past the deadline, still take what is already waiting (up to max_size)
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            try:
                outputs = self._fn([p.item for p in batch])
                if len(outputs) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} gave {len(outputs)} outputs")
                for pending, output in zip(batch, outputs, strict=True):
                    pending.result = output
            except BaseException as exc:  # every caller of the batch sees the failure
                for pending in batch:
                    pending.error = exc
            finally:
                self.batches += 1
                self.items += len(batch)
                for pending in batch:
                    pending.batch_size = len(batch)
                    pending.done.set()
