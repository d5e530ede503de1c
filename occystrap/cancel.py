"""Stopping a run promptly on Ctrl-C, with worker threads in the middle of transfers.

Python delivers SIGINT to the main thread only, as a KeyboardInterrupt; worker threads carry
on, and both `ThreadPoolExecutor.__exit__` and interpreter exit wait for them (a slow layer
used to hold a Ctrl-C for 96 s). So an interrupt also:

- sets `CANCELLED`, which transfer loops check between chunks (`check`) and sleeps wait on
  (`sleep`), so no new work starts and backoffs end at once;
- shuts down the socket of every body being streamed (`watch`), waking a thread blocked
  in `recv` on a trickling server at once;
- lets `cancellable_pool` (or `shutdown_pool`) stop waiting for its own workers (never other
  threads of the process) after a short grace, so the main thread unwinds (removing
  temporary files and partial outputs) within a second or two;
- and `exit_now` ends the process without waiting for any thread still stuck.

A second Ctrl-C exits at once. SIGTERM (a `kill`, a CI timeout, `docker stop`) is treated the
same way, exiting 143.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

# Installing the interrupt handler is all `occystrap --version` does here: sockets, pools
# and httpx (only named in types) load when a run uses them.
if TYPE_CHECKING:
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import httpx

CANCELLED = threading.Event()
# How long an interrupted pool, and the process at exit, wait for workers to notice.
GRACE_SECONDS = 1.0

_abort_lock = threading.Lock()
_abort_actions: dict[int, Callable[[], None]] = {}
# The threads of each live `worker_pool`, by the pool's id.
_pool_workers: dict[int, set[threading.Thread]] = {}


class Cancelled(Exception):  # noqa: N818 - names what happened, like KeyboardInterrupt
    """Raised in a worker thread whose run was interrupted; the main thread reports it."""


def check() -> None:
    """Raise `Cancelled` if the run was interrupted: call between chunks and before retries."""
    if CANCELLED.is_set():
        raise Cancelled("interrupted")


def sleep(seconds: float) -> None:
    """`time.sleep` that ends early, raising `Cancelled`, when the run is interrupted."""
    if CANCELLED.wait(seconds):
        raise Cancelled("interrupted")


def cancel() -> None:
    """Interrupt the run: flag it and cut every registered transfer."""
    CANCELLED.set()
    with _abort_lock:
        actions = list(_abort_actions.values())
    for action in actions:
        with contextlib.suppress(OSError):
            action()


def _socket_of(response: httpx.Response) -> socket.socket | None:
    import socket

    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket) else None


def watch(response: httpx.Response) -> None:
    """Until `unwatch(response)`, an interrupt shuts down the socket streaming its body.

    `socket.shutdown` (not close) is what wakes another thread blocked on the socket; the
    base method is called so that a TLS socket's state is left to the reading thread.
    """
    import socket

    sock = _socket_of(response)
    if sock is not None:
        with _abort_lock:
            _abort_actions[id(response)] = lambda: socket.socket.shutdown(sock, socket.SHUT_RDWR)
    if CANCELLED.is_set():  # interrupted while connecting: the loop above missed this one
        cancel()


def unwatch(response: httpx.Response) -> None:
    with _abort_lock:
        _abort_actions.pop(id(response), None)


def worker_pool(max_workers: int, thread_name_prefix: str) -> ThreadPoolExecutor:
    """A ThreadPoolExecutor that knows its own threads, so that an interrupted run waits for
    them (`shutdown_pool`), not for every thread of the process (another run's, a library
    caller's)."""
    from concurrent.futures import ThreadPoolExecutor

    workers: set[threading.Thread] = set()
    pool = ThreadPoolExecutor(
        max_workers=max_workers,
        thread_name_prefix=thread_name_prefix,
        initializer=lambda: workers.add(threading.current_thread()),
    )
    _pool_workers[id(pool)] = workers
    return pool


@contextlib.contextmanager
def cancellable_pool(max_workers: int, thread_name_prefix: str) -> Iterator[ThreadPoolExecutor]:
    """A `worker_pool` that, when its block is left by an interrupt (or any error), starts
    nothing more, and waits for its running workers only `GRACE_SECONDS` if interrupted."""
    pool = worker_pool(max_workers, thread_name_prefix)
    try:
        yield pool
    except BaseException as error:
        # A library caller's own Ctrl-C, without our signal handler: cancel this run's
        # transfers, then clear the flag so the caller's next run starts afresh.
        library_interrupt = isinstance(error, KeyboardInterrupt) and not CANCELLED.is_set()
        if library_interrupt:
            cancel()
        shutdown_pool(pool)
        if library_interrupt:
            CANCELLED.clear()
        raise
    pool.shutdown(wait=True)
    _pool_workers.pop(id(pool), None)


def shutdown_pool(pool: ThreadPoolExecutor) -> None:
    """Shut `pool` (a `worker_pool`) down after a failure: nothing queued starts; its running
    workers are waited for, but only `GRACE_SECONDS` when the run was interrupted."""
    workers = _pool_workers.pop(id(pool), set())
    if not CANCELLED.is_set():
        pool.shutdown(wait=True, cancel_futures=True)
        return
    pool.shutdown(wait=False, cancel_futures=True)
    _join_workers(workers, time.monotonic() + GRACE_SECONDS)


def _join_workers(threads: Iterable[threading.Thread], deadline: float) -> bool:
    """Wait until `deadline` for `threads` (the current one excepted); True if all ended."""
    waited = [thread for thread in threads if thread is not threading.current_thread()]
    for thread in waited:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in waited)


def _other_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if not thread.daemon]


# The signal that stopped the run: the exit status is 128 plus its number, as shells expect.
_stopped_by = signal.SIGINT


def stopped_status() -> int:
    """130 after Ctrl-C (or a library interrupt), 143 after SIGTERM."""
    return 128 + _stopped_by


def stopped_message() -> str:
    return "interrupted" if _stopped_by == signal.SIGINT else "terminated"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _stopped_by
    if CANCELLED.is_set():  # a second signal: no more waiting for anything
        sys.stderr.write(f"occystrap: error: {stopped_message()}\n")
        sys.stderr.flush()
        os._exit(stopped_status())
    _stopped_by = signal.Signals(signum)
    cancel()
    raise KeyboardInterrupt


def install_interrupt_handler() -> None:
    """Make Ctrl-C and SIGTERM cancel the whole run, removing partial outputs and temporary
    files (the CLI calls this; signals need the main thread)."""
    global _stopped_by
    CANCELLED.clear()
    _stopped_by = signal.SIGINT
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


def exit_now(status: int) -> None:
    """Exit with `status`, giving worker threads a short grace but never waiting on them."""
    if not _join_workers(_other_threads(), time.monotonic() + GRACE_SECONDS):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
