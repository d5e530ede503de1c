"""Cancellation: an interrupt wakes blocked transfers and pools stop waiting for workers."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from occystrap import cancel
from occystrap.registry.blobs import ReopeningBody


@pytest.fixture
def run() -> cancel.Cancellation:
    return cancel.Cancellation()


class _Stream:
    """Stands in for httpcore's network stream: only the socket is asked for."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


def test_cancel_wakes_a_thread_blocked_reading_a_registered_response(run):
    ours, theirs = socket.socketpair()
    response = httpx.Response(200, extensions={"network_stream": _Stream(ours)})
    received: list[bytes] = []
    run.watch(response)
    reader = threading.Thread(target=lambda: received.append(ours.recv(10)))
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()  # blocked: the peer sends nothing
    started = time.monotonic()
    run.cancel()
    reader.join(2)
    run.unwatch(response)
    assert not reader.is_alive()
    assert time.monotonic() - started < 1
    assert received == [b""]
    with pytest.raises(cancel.Cancelled):
        run.check()
    ours.close()
    theirs.close()


def test_a_finished_response_is_no_longer_aborted(run):
    ours, theirs = socket.socketpair()
    response = httpx.Response(200, extensions={"network_stream": _Stream(ours)})
    run.watch(response)
    run.unwatch(response)
    run.cancel()
    theirs.sendall(b"still open")
    assert ours.recv(10) == b"still open"
    ours.close()
    theirs.close()


def test_sleep_ends_early_when_cancelled(run):
    threading.Timer(0.1, run.cancel).start()
    started = time.monotonic()
    with pytest.raises(cancel.Cancelled):
        run.sleep(30)
    assert time.monotonic() - started < 1
    cancel.Cancellation().sleep(0.01)  # another run, not cancelled: just sleeps


def test_an_interrupted_pool_stops_waiting_and_starts_nothing_more(run):
    release = threading.Event()
    started: list[int] = []

    def stuck(n: int) -> None:
        started.append(n)
        release.wait(30)  # deaf to cancellation: the pool must not wait for it

    begun = time.monotonic()
    with pytest.raises(KeyboardInterrupt), cancel.cancellable_pool(run, 2, "test") as pool:
        futures = [pool.submit(stuck, n) for n in range(6)]
        time.sleep(0.1)
        raise KeyboardInterrupt
    assert time.monotonic() - begun < cancel.GRACE_SECONDS + 1
    assert sorted(started) == [0, 1]
    assert all(future.cancelled() for future in futures[2:])
    release.set()


def test_an_interrupted_pool_wakes_workers_sleeping_between_retries(run):
    with pytest.raises(KeyboardInterrupt), cancel.cancellable_pool(run, 2, "test") as pool:
        futures = [pool.submit(run.sleep, 30) for _ in range(2)]
        time.sleep(0.1)
        raise KeyboardInterrupt
    for future in futures:
        assert isinstance(future.exception(timeout=0), cancel.Cancelled)


def test_a_pool_left_by_an_ordinary_error_waits_for_running_work(run):
    finished: list[int] = []
    with pytest.raises(ValueError), cancel.cancellable_pool(run, 1, "test") as pool:
        pool.submit(lambda: (time.sleep(0.2), finished.append(1)))
        raise ValueError("one layer failed")
    assert finished == [1]
    assert not run.is_set()


def test_uploads_stop_between_chunks(tmp_path, run):
    path = tmp_path / "blob"
    path.write_bytes(bytes(3 * 1024 * 1024))
    body = iter(ReopeningBody(lambda: open(path, "rb"), cancellation=run))  # noqa: SIM115 - the body opens it
    next(body)
    run.cancel()
    with pytest.raises(cancel.Cancelled):
        next(body)


def test_a_library_callers_interrupt_cancels_its_run_only(run):
    other = cancel.Cancellation()
    with pytest.raises(KeyboardInterrupt), cancel.cancellable_pool(run, 1, "test") as pool:
        sleeping = pool.submit(run.sleep, 30)  # ends at once when the pool cancels the run
        raise KeyboardInterrupt
    assert isinstance(sleeping.exception(timeout=0), cancel.Cancelled)
    assert run.is_set()
    assert not other.is_set()
    other.check()  # the next run (or one beside it) starts afresh


def test_cancelling_one_run_leaves_another_sleeping_and_streaming(run):
    """Two runs in one process (a library caller's, a Dask worker's): one cancelled, the
    other's retry wait and watched socket carry on."""
    other = cancel.Cancellation()
    ours, theirs = socket.socketpair()
    response = httpx.Response(200, extensions={"network_stream": _Stream(ours)})
    other.watch(response)
    slept: list[str] = []
    waiting = threading.Thread(target=lambda: (other.sleep(0.5), slept.append("woke")))
    waiting.start()
    run.cancel()
    with pytest.raises(cancel.Cancelled):
        run.check()
    waiting.join(2)
    assert not waiting.is_alive()
    assert slept == ["woke"]  # slept its time out, not cut short by the other run
    other.check()
    theirs.sendall(b"still open")
    assert ours.recv(10) == b"still open"
    other.unwatch(response)
    ours.close()
    theirs.close()


def test_an_interrupted_pool_waits_for_its_own_workers_not_other_threads(run):
    """Another run's thread (or a library caller's) is none of this pool's business."""
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(30,), name="someone-else")
    other.start()
    try:
        begun = time.monotonic()
        with pytest.raises(KeyboardInterrupt), cancel.cancellable_pool(run, 1, "test") as pool:
            done = pool.submit(lambda: None)
            done.result(timeout=5)
            raise KeyboardInterrupt
        waited = time.monotonic() - begun
        assert waited < cancel.GRACE_SECONDS / 2, waited  # not the grace spent on `other`
        assert other.is_alive()
    finally:
        release.set()
        other.join()
