"""Dynamic batching: concurrent submissions within the delay share one call of the model
function, each caller gets its own output, a failing batch fails only its own callers, and
the size bound holds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.stack import wait_until
from workers.batching import BatchPolicy, DynamicBatcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.sizes.append(len(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [i * 10 for i in items]


def test_concurrent_submissions_share_batches_and_get_their_own_outputs() -> None:
    fn = Recorder()
    batcher = DynamicBatcher(fn, BatchPolicy(max_size=8, max_delay=0.2))
    barrier = threading.Barrier(8)

    def call(i: int) -> int:
        barrier.wait()
        return batcher.submit(i)

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(call, range(8)))
    assert outputs == [i * 10 for i in range(8)]
    assert sum(fn.sizes) == 8 and len(fn.sizes) < 8  # some inputs shared a forward pass
    assert batcher.items == 8 and batcher.batches == len(fn.sizes)


def test_batches_never_exceed_the_size_bound() -> None:
    fn = Recorder()
    batcher = DynamicBatcher(fn, BatchPolicy(max_size=3, max_delay=0.2))
    assert batcher.map(list(range(10))) == [i * 10 for i in range(10)]
    assert max(fn.sizes) <= 3 and sum(fn.sizes) == 10


def test_a_failing_batch_fails_its_callers_only() -> None:
    fn = Recorder(fail_on=2)
    batcher = DynamicBatcher(fn, BatchPolicy(max_size=4, max_delay=0.0))
    with pytest.raises(ValueError, match="bad item 2"):
        batcher.map([1, 2])
    assert batcher.submit(5) == 50  # the batcher thread survived the failure


def test_a_lone_submission_waits_at_most_the_delay() -> None:
    batcher = DynamicBatcher(Recorder(), BatchPolicy(max_size=16, max_delay=0.05))
    start = time.monotonic()
    assert batcher.submit(1) == 10
    assert time.monotonic() - start < 5  # bounded by the delay, not by max_size arrivals


def test_an_announced_lone_input_pays_no_window() -> None:
    # Given a batcher with a long window, when the only task in flight announced its input,
    # then the batch runs as soon as that input is submitted, not after the window.
    batcher = DynamicBatcher(Recorder(), BatchPolicy(max_size=16, max_delay=30.0))
    start = time.monotonic()
    with batcher.slot() as slot:
        assert slot.run([1]) == ([10], 1)
    assert time.monotonic() - start < 10


def test_a_batch_waits_for_announced_inputs_still_being_prepared() -> None:
    # Given two tasks that announced their inputs, when one submits while the other is still
    # decoding, then the batch waits for the second (within the window) and both share it.
    fn = Recorder()
    batcher = DynamicBatcher(fn, BatchPolicy(max_size=16, max_delay=30.0))
    announced = threading.Barrier(2)
    first_submitted = threading.Event()

    def task(i: int) -> tuple[list[int], int]:
        with batcher.slot() as slot:
            announced.wait()
            if i == 1:  # still "decoding" when the first input is queued
                assert first_submitted.wait(10)
                time.sleep(0.05)
            else:
                threading.Timer(0.01, first_submitted.set).start()
            return slot.run([i])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(task, range(2)))
    assert results == [([0], 2), ([10], 2)]
    assert fn.sizes == [2]


def test_a_slot_withdrawn_without_input_releases_the_batch() -> None:
    # Given a task that announced an input and then failed before submitting it, the batch
    # waiting for it closes at once instead of running out the window.
    batcher = DynamicBatcher(Recorder(), BatchPolicy(max_size=16, max_delay=30.0))
    gone = threading.Event()

    def failing() -> None:
        with pytest.raises(OSError), batcher.slot():
            gone.wait(10)
            raise OSError("could not fetch the input")

    thread = threading.Thread(target=failing)
    thread.start()
    start = time.monotonic()
    with batcher.slot() as slot:
        threading.Timer(0.05, gone.set).start()
        assert slot.run([3]) == ([30], 1)
    thread.join(10)
    assert time.monotonic() - start < 10


def test_a_lone_announced_input_runs_in_its_callers_thread() -> None:
    threads: list[threading.Thread] = []

    def fn(items: list[int]) -> list[int]:
        threads.append(threading.current_thread())
        return [i + 1 for i in items]

    batcher = DynamicBatcher(fn, BatchPolicy(max_size=8, max_delay=1.0), caller_runs=True)
    with batcher.slot() as slot:
        assert slot.run([1]) == ([2], 1)
    assert threads == [threading.current_thread()] and batcher.batches == 1
    handing_off = DynamicBatcher(fn, BatchPolicy(max_size=8, max_delay=1.0))
    with handing_off.slot() as slot:
        assert slot.run([1]) == ([2], 1)
    assert threads[1] is not threading.current_thread()  # the default: the batcher thread


def test_inputs_arriving_during_an_inline_batch_wait_and_share_the_next_one() -> None:
    """One batch at a time: what arrives while a caller runs its lone input in its own
    thread queues, and the batcher thread runs it as one batch once that call returns."""
    release, running = threading.Event(), threading.Event()
    active, most, sizes = [0], [0], []
    lock = threading.Lock()

    def fn(items: list[int]) -> list[int]:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            sizes.append(len(items))
        running.set()
        if items == [0]:
            release.wait(5)
        with lock:
            active[0] -= 1
        return [i * 10 for i in items]

    batcher = DynamicBatcher(fn, BatchPolicy(max_size=8, max_delay=0.05), caller_runs=True)

    def call(i: int) -> tuple[list[int], int]:
        with batcher.slot() as slot:
            return slot.run([i])

    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(call, 0)
        assert running.wait(5)
        rest = [pool.submit(call, i) for i in range(1, 5)]
        wait_until(lambda: len(batcher._queue) == 4, 5, what="four queued behind it")
        release.set()
        assert first.result(5) == ([0], 1)
        outputs = [f.result(5) for f in rest]
    assert [o[0] for o in outputs] == [[10], [20], [30], [40]]
    assert most[0] == 1 and sizes[0] == 1 and sum(sizes) == 5 and len(sizes) == 2
