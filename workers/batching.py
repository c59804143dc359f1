"""Dynamic batching inside a worker process (NVIDIA Triton's ``dynamic_batching``).

Image services get one task per request. In a pool run with ``--pool threads``, each task runs
in its own thread and hands its input to the process's :class:`DynamicBatcher`; a single
thread gathers the inputs that arrive within ``max_delay`` seconds of the first (at most
``max_size``), runs the model once on all of them, and gives every caller its own output. Each
request stays its own task, with its own claim, status, result and notification; only the
forward pass is shared. In a prefork pool (one task per process) a batch is simply one input.

A task that announces its input while it is still fetching and decoding it (:meth:`slot`)
lets the window close early: a batch whose inputs were all announced stops waiting as soon as
no announced input is still on its way, so a lone request pays no delay at all, and a burst
waits exactly for its own members (never longer than ``max_delay``). With ``caller_runs``, a
lone announced input (no batch running, queued or announced) runs in its caller's thread,
saving the hand-off to the batcher thread and back; whatever arrives meanwhile queues for
the batcher thread, so batches still run one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    announced: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: Out | None = None
    error: BaseException | None = None
    batch_size: int = 0


class Slot(Generic[In, Out]):
    """An announced place in a coming batch (see :meth:`DynamicBatcher.slot`)."""

    def __init__(self, batcher: DynamicBatcher[In, Out]) -> None:
        self._batcher = batcher
        self.open = True

    def run(self, items: Sequence[In]) -> tuple[list[Out], int]:
        """:meth:`DynamicBatcher.run` for the announced input (once per slot)."""
        if not self.open:
            raise RuntimeError("a slot runs once")
        self.open = False
        return self._batcher._run(items, announced=True)


class DynamicBatcher(Generic[In, Out]):
    """Run ``fn(list_of_inputs) -> list_of_outputs`` on batches of concurrent submissions."""

    def __init__(
        self,
        fn: Callable[[list[In]], Sequence[Out]],
        policy: BatchPolicy,
        *,
        caller_runs: bool = False,
    ) -> None:
        """``caller_runs``: a lone announced input runs in its caller's thread. Only for an
        ``fn`` that may run in any thread at no cost: an OpenMP runtime keeps a team of
        threads for every thread that starts a parallel region."""
        self._fn, self._policy, self._caller_runs = fn, policy, caller_runs
        self._cond = threading.Condition()
        self._queue: list[_Pending[In, Out]] = []
        self._expected = 0  # announced inputs not submitted yet
        self._busy = False  # a batch is running (in the batcher thread or its caller's)
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
        task reports as ``BatchSize``). Unannounced inputs keep the full ``max_delay``."""
        return self._run(items, announced=False)

    @contextmanager
    def slot(self) -> Iterator[Slot[In, Out]]:
        """Announce an input being prepared; run it with the slot's ``run``. Until it is
        submitted (or the block exits without submitting), batches being gathered wait for
        it, up to their ``max_delay``."""
        with self._cond:
            self._expected += 1
        slot: Slot[In, Out] = Slot(self)
        try:
            yield slot
        finally:
            if slot.open:  # preparing failed: nobody waits for this input any more
                self._withdraw()

    def _withdraw(self) -> None:
        with self._cond:
            self._expected -= 1
            self._cond.notify_all()

    def _run(self, items: Sequence[In], *, announced: bool) -> tuple[list[Out], int]:
        pendings: list[_Pending[In, Out]] = [_Pending(item, announced) for item in items]
        self._ensure_thread()
        with self._cond:
            if announced:
                self._expected -= 1
            # Alone (nothing running, waiting or announced): run in this thread. Handing a
            # lone input to the batcher thread and waking back cost 1-2 ms per call.
            alone = self._caller_runs and announced
            alone = alone and not (self._busy or self._queue or self._expected)
            if alone:
                self._busy = True
            else:
                self._queue.extend(pendings)
                self._cond.notify_all()
        if alone:
            self._execute(pendings)
        for pending in pendings:
            pending.done.wait()
        for pending in pendings:
            if pending.error is not None:
                raise pending.error
        outputs: list[Out] = [p.result for p in pendings]  # type: ignore[misc]
        return outputs, max(p.batch_size for p in pendings)

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
                self._thread.start()

    def _more_coming(self) -> bool:
        """Whether the batch being gathered should keep waiting (lock held)."""
        if len(self._queue) >= self._policy.max_size:
            return False
        return self._expected > 0 or not all(p.announced for p in self._queue)

    def _gather(self) -> list[_Pending[In, Out]]:
        with self._cond:
            while not self._queue or self._busy:
                self._cond.wait()
            deadline = time.monotonic() + self._policy.max_delay
            while self._more_coming():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            # Past the deadline, still take what is already waiting (up to max_size).
            batch = self._queue[: self._policy.max_size]
            del self._queue[: self._policy.max_size]
            self._busy = True
        return batch

    def _loop(self) -> None:
        while True:
            self._execute(self._gather())

    def _execute(self, batch: list[_Pending[In, Out]]) -> None:
        """Run one batch (``_busy`` is set) and release its callers."""
        try:
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
            with self._cond:
                self._busy = False
                self.batches += 1
                self.items += len(batch)
                self._cond.notify_all()
            for pending in batch:
                pending.batch_size = len(batch)
                pending.done.set()
