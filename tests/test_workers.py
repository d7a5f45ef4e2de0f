"""The worker threads behind the engine's file-system calls."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from trollpush._workers import Workers

from .helpers import wait_until_async


async def test_results_and_errors_come_back_to_their_callers(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    workers = Workers(threads=2)
    workers.start()
    try:
        sizes = await asyncio.gather(*(workers.run(os.path.getsize, tmp_path / "a")
                                       for _ in range(500)))
        assert sizes == [10] * 500
        with pytest.raises(FileNotFoundError):
            await workers.run(os.stat, tmp_path / "missing")
        names = await asyncio.gather(*(workers.run(lambda: threading.current_thread().name)
                                       for _ in range(50)))
        assert {n.rsplit("-", 1)[0] for n in names} == {"trollpush-io"}
    finally:
        await workers.close()


async def test_a_cancelled_caller_does_not_break_the_others() -> None:
    workers = Workers(threads=1)
    workers.start()
    gate = threading.Event()
    try:
        blocked = asyncio.ensure_future(workers.run(gate.wait, 10))
        queued = [asyncio.ensure_future(workers.run(lambda i=i: i * 2)) for i in range(20)]
        await asyncio.sleep(0)  # (let the calls reach the queue)
        blocked.cancel()
        gate.set()
        assert await asyncio.gather(*queued) == [i * 2 for i in range(20)]
        assert blocked.cancelled()
    finally:
        await workers.close()


async def test_close_finishes_queued_calls_then_refuses() -> None:
    # (threads left stuck on purpose by earlier tests of hung mounts are not ours)
    before = set(threading.enumerate())
    workers = Workers(threads=2)
    workers.start()
    calls = [asyncio.ensure_future(workers.run(sum, [i, 1])) for i in range(100)]
    await asyncio.sleep(0)
    await workers.close()
    assert await asyncio.gather(*calls) == [i + 1 for i in range(100)]
    assert not [t for t in threading.enumerate()
                if t.name.startswith("trollpush-io") and t not in before]
    with pytest.raises(RuntimeError, match="not running"):
        await workers.run(sum, [1])


def test_sizes_are_checked() -> None:
    with pytest.raises(ValueError):
        Workers(threads=0)
    with pytest.raises(ValueError):
        Workers(threads=4, max_threads=2)


async def test_a_stuck_call_holds_up_only_its_thread() -> None:
    """A call stuck in the kernel (a hung mount) must not hold the calls queued behind it;
    grow() puts a thread in its place; close() does not wait for it for ever."""
    workers = Workers(threads=2, max_threads=3)
    workers.start()
    gate = threading.Event()
    try:
        stuck = asyncio.ensure_future(workers.run(gate.wait, 30))
        assert await asyncio.wait_for(asyncio.gather(*(workers.run(sum, [i, 1])
                                                       for i in range(200))), 10) == [
            i + 1 for i in range(200)]
        assert workers.grow() and not workers.grow()  # at max_threads
        stuck2 = asyncio.ensure_future(workers.run(gate.wait, 30))
        assert await asyncio.wait_for(workers.run(sum, [1, 1]), 10) == 2
        for call in (stuck, stuck2):
            call.cancel()
        start = asyncio.get_running_loop().time()
        await workers.close(wait=0.5)
        assert asyncio.get_running_loop().time() - start < 5
    finally:
        gate.set()


async def test_a_result_that_comes_too_late_is_released() -> None:
    workers = Workers(threads=1)
    workers.start()
    gate = threading.Event()
    released: list[int] = []
    try:
        started = threading.Event()

        def late() -> int:
            started.set()
            gate.wait(10)
            return 7
        call = asyncio.ensure_future(workers.run(late, discard=released.append))
        await wait_until_async(started.is_set, 10, "the call running")
        call.cancel()
        gate.set()
        assert await workers.run(int, "3") == 3  # after the late result came back
        assert released == [7]
    finally:
        await workers.close()
